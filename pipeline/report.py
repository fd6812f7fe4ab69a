"""The nightly report: one self-contained HTML file (inline CSS, plots as base64 PNG).

When the verdict was evaluated (``summary["incidents"]``), the report leads with the
night's ranked incidents (``incidents`` table) and a drawing of the top ones; with labels
each incident carries its truth (attack kinds among its flagged flows, or benign).

Always (also without labels, the normal nightly case): volumes (flows, packets, ingest
accounting and errors), score distributions per detector, the top anomalous flows of
each model with their evidence columns, the largest anomalous atoms drawn as small
host/flow graphs, and per-host summaries. With labels (``summary["attack_flows_by_kind"]``
set by ``pipeline.evaluation.night.evaluate_night``): the quality table per detector and per
attack kind, score distributions benign vs attack, ROC and PR curves.

Plot data for the baselines comes from the summary (the baselines' scores are not
stored in the warehouse); everything per flow comes from the warehouse partitions.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.evaluation.labels import BENIGN, label_flows, read_labels  # noqa: E402
from pipeline.store.warehouse import read_partition  # noqa: E402

log = logging.getLogger(__name__)

EVIDENCE_COLUMNS = {
    "a2gnn": ("atom_id", "atom_size", "atom_density", "nearest_anchor", "anchor_distance"),
    "rearview": ("triplet", "screening_probability", "refined_score"),
    "verdict": ("history_pattern", "evidence", "incident_id"),
}
"""Evidence columns of ``flow_scores`` shown per model (others: none)."""

ATTACK_COLOUR = "#d62728"
BENIGN_COLOUR = "#1f77b4"
FLAGGED_COLOUR = "#d62728"
QUIET_COLOUR = "#b0b0b0"
HOST_COLOUR = "#4c72b0"


@dataclass(frozen=True)
class ReportConfig:
    """How much the report shows: incidents listed and drawn (host pairs per drawing), top
    flows per model, atoms drawn, hosts listed; hosts and services named per incident row."""

    incidents_listed: int = 50
    incidents_drawn: int = 5
    max_pairs_per_incident_drawing: int = 40
    top_flows: int = 20
    atoms_drawn: int = 6
    max_flows_per_atom_drawing: int = 60
    top_hosts: int = 25
    names_per_incident: int = 5


# ------------------------------------------------------------------ small helpers
def _png(fig) -> str:
    """``<img>`` tag holding ``fig`` as an inline base64 PNG; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _esc(value)


def _table(header: list[str], rows: list[list], numeric: set[int] | None = None) -> str:
    """HTML table of pre-escaped cells; columns in ``numeric`` (default: all but the
    first) are right-aligned with tabular digits."""
    numeric = set(range(1, len(header))) if numeric is None else numeric
    head = "".join(
        f'<th class="{"num" if i in numeric else ""}">{_esc(h)}</th>' for i, h in enumerate(header)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if i in numeric else ""}">{c}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _time(ms) -> str:
    if ms is None or pd.isna(ms):
        return "–"
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%H:%M:%S")


def _available(summary: dict) -> dict[str, dict]:
    return {n: e for n, e in summary["detectors"].items() if e.get("available")}


# -------------------------------------------------------------------- incidents
def _verdict_version(summary: dict) -> str | None:
    """The verdict version the summary evaluated (its incidents' partition), or None."""
    info = summary.get("incidents") or {}
    entry = summary["detectors"].get("verdict") or {}
    return info.get("model_version") or (entry.get("model_version") if entry.get("available") else None)


def _shortened(names, limit: int) -> str:
    """``a, b, c (+N more)``: the first ``limit`` names of a list, escaped."""
    names = [str(n) for n in (names if names is not None else [])]
    text = ", ".join(names[:limit])
    if len(names) > limit:
        text += f" (+{len(names) - limit} more)"
    return _esc(text)


def _truth_cell(incident_id: str, truth: dict) -> str:
    """Attack kinds among an incident's flagged flows (with counts), else ``benign``."""
    kinds = truth.get(incident_id)
    if not kinds:
        return _esc(BENIGN)
    cells = [f'<b class="attack">{_esc(k)}</b> {n}' for k, n in kinds.items() if k != BENIGN]
    if kinds.get(BENIGN):
        cells.append(f"{_esc(BENIGN)} {kinds[BENIGN]}")
    return ", ".join(cells)


def incident_edges(flows: pd.DataFrame, incident_id: str, first_seen_ms: int, last_seen_ms: int) -> pd.DataFrame:
    """The host pairs of one incident, for its drawing: ``a``, ``b`` (``a <= b``),
    ``flows`` and ``flagged`` per pair, most flagged then busiest first.

    ``flows``: verdict rows with ``src_ip``, ``dst_ip``, ``first_seen_ms``, ``incident_id``.
    The incident's pairs are those of its flagged flows (``incident_id`` equal); a pair's
    ``flows`` counts every row of that pair that is the incident's or starts within
    ``[first_seen_ms, last_seen_ms]`` (as ``flows`` of the ``incidents`` table).
    """
    a = flows[["src_ip", "dst_ip"]].astype(str).min(axis=1)
    b = flows[["src_ip", "dst_ip"]].astype(str).max(axis=1)
    own = (flows["incident_id"] == incident_id).to_numpy()
    pairs = set(zip(a[own], b[own]))
    in_pair = pd.Series([p in pairs for p in zip(a, b)], index=flows.index, dtype=bool).to_numpy()
    in_span = flows["first_seen_ms"].between(first_seen_ms, last_seen_ms).to_numpy()
    keep = own | (in_pair & in_span)
    members = pd.DataFrame({"a": a[keep], "b": b[keep], "flagged": own[keep].astype(int)})
    if members.empty:
        return pd.DataFrame({"a": [], "b": [], "flows": [], "flagged": []})
    edges = members.groupby(["a", "b"], as_index=False).agg(flows=("flagged", "size"), flagged=("flagged", "sum"))
    return edges.sort_values(["flagged", "flows", "a", "b"], ascending=[False, False, True, True],
                             kind="stable").reset_index(drop=True)


def incident_layout(graph: nx.Graph, seed: int = 7) -> dict[str, tuple[float, float]]:
    """Host positions for an incident's drawing: each connected component laid out on its
    own (two hosts side by side, more by a seeded spring layout) within a unit box, the
    components (largest first) on a grid of such boxes, so none is squeezed to a point."""
    components = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: (-len(c), c))
    columns = max(1, math.ceil(math.sqrt(len(components))))
    position: dict[str, tuple[float, float]] = {}
    for k, nodes in enumerate(components):
        cx, cy = 4.0 * (k % columns), -3.0 * (k // columns)
        if len(nodes) == 1:
            local = {nodes[0]: (0.0, 0.0)}
        elif len(nodes) == 2:
            local = {nodes[0]: (-1.0, 0.0), nodes[1]: (1.0, 0.0)}
        else:
            local = nx.spring_layout(graph.subgraph(nodes), seed=seed, weight=None)
        for node, (x, y) in local.items():
            position[node] = (cx + float(x), cy + float(y))
    return position


def _incident_drawing(ax, edges: pd.DataFrame, max_pairs: int, title: str) -> None:
    """Hosts (blue circles) joined by one edge per host pair; width ~ log flows, red where
    the pair has flagged flows, grey where its flows were not flagged."""
    edges = edges.head(max_pairs)
    graph = nx.Graph()
    for r in edges.itertuples(index=False):
        graph.add_node(r.a)
        graph.add_node(r.b)
        if r.a != r.b:
            graph.add_edge(r.a, r.b, flows=int(r.flows), flagged=int(r.flagged))
    layout = incident_layout(graph)
    busiest = max([d["flows"] for _, _, d in graph.edges(data=True)], default=1)
    edge_list = list(graph.edges(data=True))
    nx.draw_networkx_edges(
        graph, layout, ax=ax, edgelist=[(u, v) for u, v, _ in edge_list],
        width=[0.8 + 4.0 * math.log1p(d["flows"]) / math.log1p(busiest) for _, _, d in edge_list],
        edge_color=[FLAGGED_COLOUR if d["flagged"] else QUIET_COLOUR for _, _, d in edge_list],
    )
    nx.draw_networkx_nodes(graph, layout, ax=ax, node_size=140, node_color=HOST_COLOUR)
    degrees = {n: sum(d["flows"] for _, _, d in graph.edges(n, data=True)) for n in graph.nodes}
    for node in labelled_hosts({n: tuple(p) for n, p in layout.items()}, degrees):
        x, y = layout[node]
        ax.annotate(str(node).replace("$", r"\$"), (x, y), xytext=(0, 8), textcoords="offset points",
                    ha="center", fontsize=7.5,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    ax.set_title(title, fontsize=9)
    ax.margins(0.15)
    ax.axis("off")


def _incident_flows(spark, warehouse: Path, date: str, version: str, incident_ids: list[str]) -> pd.DataFrame:
    """Verdict rows of the host pairs of ``incident_ids`` (flagged or not), as pandas."""
    from pyspark.sql import functions as F

    scores = read_partition(spark, warehouse, "flow_scores", date=date, model="verdict", model_version=version)
    pair = F.concat_ws("|", F.least("src_ip", "dst_ip"), F.greatest("src_ip", "dst_ip"))
    scores = scores.select("src_ip", "dst_ip", "first_seen_ms", "incident_id", pair.alias("pair"))
    pairs = scores.where(F.col("incident_id").isin(incident_ids)).select("pair").distinct()
    return scores.join(F.broadcast(pairs), "pair").drop("pair").toPandas()


def _incident_drawings(spark, warehouse: Path, date: str, version: str, chosen: pd.DataFrame,
                       config: ReportConfig) -> str:
    """One drawing per incident in ``chosen`` (``incidents`` rows), three per row."""
    try:
        flows = _incident_flows(spark, warehouse, date, version, chosen["incident_id"].astype(str).tolist())
    except FileNotFoundError as error:
        return f'<p class="note">Incidents not drawn: {_esc(error)}</p>'
    columns = 3
    rows = math.ceil(len(chosen) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13, 4.2 * rows), squeeze=False)
    for ax, incident in zip(axes.flat, chosen.itertuples(index=False)):
        edges = incident_edges(flows, incident.incident_id, incident.first_seen_ms, incident.last_seen_ms)
        title = (f"#{incident.rank} {incident.incident_id}: {incident.flagged_flows} of "
                 f"{incident.flows} flows flagged")
        if len(edges) > config.max_pairs_per_incident_drawing:
            title += f"\n({config.max_pairs_per_incident_drawing} of {len(edges)} host pairs drawn)"
        _incident_drawing(ax, edges, config.max_pairs_per_incident_drawing, title)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.tight_layout()
    legend = ('<p class="note">Each incident\'s hosts (blue circles), an edge per host pair: width grows '
              "with the pair's flows in the incident's time span, red when some of them were flagged, "
              "grey when none was.</p>")
    return f"<h3>Top {len(chosen)} incidents drawn</h3>" + legend + _png(fig)


def _incidents_section(spark, warehouse: Path, date: str, summary: dict, config: ReportConfig) -> str:
    """The night's incidents ranked (``incidents`` table of the evaluated verdict version),
    with truth when labelled, then the top ``config.incidents_drawn`` drawn."""
    heading = "<h2>Incidents <small>(verdict, ranked)</small></h2>"
    version = _verdict_version(summary)
    if version is None:
        return heading + '<p class="note">No verdict scores for this night: no incidents.</p>'
    try:
        incidents = read_partition(spark, warehouse, "incidents", date=date, model_version=version).toPandas()
    except FileNotFoundError as error:
        return heading + f'<p class="note">No incidents table for verdict {_esc(version)}: {_esc(error)}</p>'
    info = summary.get("incidents") or {}
    if incidents.empty:
        return heading + f'<p class="note"><b>no incident flagged</b> on this night by verdict {_esc(version)}.</p>'
    incidents = incidents.sort_values(["rank", "incident_id"], kind="stable").reset_index(drop=True)
    labelled = bool(info.get("labelled"))
    truth = info.get("truth") or {}
    shown = incidents.head(config.incidents_listed)
    rows = []
    for r in shown.itertuples(index=False):
        row = [_num(int(r.rank)), _esc(r.incident_id), _num(float(r.score), 2),
               f"{_num(int(r.flagged_flows))} / {_num(int(r.flows))}",
               _shortened(r.hosts, config.names_per_incident), _shortened(r.services, config.names_per_incident),
               _time(r.first_seen_ms), _time(r.last_seen_ms), _esc(r.top_evidence)]
        if labelled:
            row.append(_truth_cell(str(r.incident_id), truth))
        rows.append(row)
    header = ["rank", "incident", "score", "flagged / flows", "hosts", "services (ip|port|proto)",
              "first seen (UTC)", "last seen (UTC)", "top evidence"] + (["truth"] if labelled else [])
    counts = f"{len(incidents):,} incident{'s' if len(incidents) != 1 else ''} flagged by verdict {_esc(version)}"
    if len(incidents) > len(shown):
        counts += f", the top {len(shown)} listed"
    if labelled:
        counts += (f"; attacks caught: {info.get('attacks_caught')} of {info.get('attacks_total')}, "
                   f"benign incidents: {info.get('benign_incidents')}")
    note = (f'<p class="note">{counts}. Score: -log10 of the combined benign tail probability of '
            "the incident's strongest flagged flow; evidence: the pieces that drove it, strongest first.</p>")
    table = _table(header, rows, numeric={0, 2, 3})
    drawings = _incident_drawings(spark, warehouse, date, version, shown.head(config.incidents_drawn), config)
    return heading + note + table + drawings


# --------------------------------------------------------------------- sections
def _volumes_section(summary: dict) -> str:
    v = summary["volumes"]
    cards = [("flows", v["flows"]), ("packets", v["packets"]), ("bytes", v["bytes"]), ("hosts", v["hosts"])]
    ingest, errors = v.get("ingest"), v.get("ingest_errors")
    if ingest:
        cards += [("capture files", ingest["files"]), ("packets skipped", ingest["packets_skipped"])]
    cards.append(("ingest errors", errors["errors"] if errors else "n/a"))
    html_cards = "".join(
        f'<div class="card"><div class="value">{_num(value)}</div><div class="label">{_esc(label)}</div></div>'
        for label, value in cards
    )
    parts = [f'<div class="cards">{html_cards}</div>']
    details = []
    if ingest:
        rows = [[_esc(f"status {k}"), _num(n)] for k, n in sorted(ingest["files_by_status"].items())]
        rows += [[_esc("packets read"), _num(ingest["packets_read"])],
                 [_esc("packets in flows"), _num(ingest["packets_in_flows"])]]
        if ingest.get("bytes_skipped"):
            rows.append([_esc("capture bytes skipped (damaged)"), _num(ingest["bytes_skipped"])])
        rows += [[_esc(f"skipped: {k}"), _num(n)] for k, n in ingest["skipped_by_reason"].items() if n]
        details.append("<div><h3>Ingest</h3>" + _table(["", "count"], rows) + "</div>")
    else:
        details.append('<p class="note">No ingest_stats partition for this night.</p>')
    parts.append(f'<div class="row">{"".join(details)}</div>')
    if errors and errors["errors"]:
        parts.append(ingest_errors_table(errors))
    return "<h2>Volumes</h2>" + "".join(parts)


def ingest_errors_table(errors: dict) -> str:
    """Every ingest error of the night (``summary["volumes"]["ingest_errors"]``): file,
    byte offset, bytes skipped or left unread, reason, packets read after it, fatal.
    File names and reasons come from the archive and are escaped like any text; a summary
    written before the rows were kept gets the count per reason instead."""
    rows = errors.get("rows")
    if rows is None:
        counts = [[_esc(k), _num(n)] for k, n in sorted(errors["by_reason"].items())]
        counts.append([_esc("fatal (rest of file unreadable)"), _num(errors["fatal"])])
        return "<div><h3>Ingest errors</h3>" + _table(["reason", "count"], counts) + "</div>"
    cells = [[_esc(r["capture_file"]), _num(r["byte_offset"]), _num(r.get("byte_length")), _esc(r["reason"]),
              _num(r.get("packets_after")), _esc("fatal" if r["fatal"] else "")] for r in rows]
    note = ('<p class="note">Offsets and lengths are bytes of the decompressed capture; '
            'a fatal error ended the file (the rest was unreadable), the others were skipped '
            'and reading went on: packets after = packets of the file read after it.</p>')
    table = _table(["file", "byte offset", "bytes", "reason", "packets after", ""], cells,
                   numeric={1, 2, 4})
    return f"<div><h3>Ingest errors ({_num(len(rows))})</h3>{note}{table}</div>"


def _quality_section(summary: dict) -> str:
    available = _available(summary)
    rows = []
    best_f1 = max((e["metrics"]["f1"] for e in available.values()), default=0.0)
    for name, entry in summary["detectors"].items():
        if not entry.get("available"):
            rows.append([_esc(name), _esc(entry["family"]), "–", "no scores for this night", "", "", "", "", ""])
            continue
        m = entry["metrics"]
        f1 = _num(m["f1"])
        if best_f1 > 0 and m["f1"] == best_f1:      # the best F1 of the night in bold
            f1 = f"<b>{f1}</b>"
        rows.append([
            _esc(name), _esc(entry["family"]), _num(entry["flagged"]), _num(m["precision"]),
            _num(m["recall"]), f1, _num(m["roc_auc"]), _num(m["pr_auc"]), _num(m["false_positive_rate"], 4),
        ])
    quality = _table(
        ["detector", "family", "flagged", "precision", "recall", "F1", "ROC AUC", "PR AUC", "FPR"],
        rows, numeric=set(range(2, 9)),
    )
    kinds = [k for k in summary["attack_flows_by_kind"] if k != BENIGN]
    kind_rows = []
    for kind in kinds:
        cells = [_esc(kind), _num(summary["attack_flows_by_kind"][kind])]
        for entry in available.values():
            pk = (entry.get("per_kind") or {}).get(kind, {"recall": 0.0, "detected": 0})
            cells.append(f"{pk['recall']:.2f} <small>({pk['detected']})</small>")
        kind_rows.append(cells)
    benign_cells = [_esc("benign: false alarms"), _num(summary["attack_flows_by_kind"].get(BENIGN, 0))]
    for entry in available.values():
        pk = (entry.get("per_kind") or {}).get(BENIGN, {"flagged": 0, "false_positive_rate": 0.0})
        benign_cells.append(f"{pk['false_positive_rate']:.3f} <small>({pk['flagged']})</small>")
    kind_rows.append(benign_cells)
    per_kind = _table(["attack kind", "flows"] + list(available), kind_rows)
    note = (
        '<p class="note">Threshold metrics use each detector\'s own threshold, fitted on the '
        "training nights; ROC/PR AUC rank all flows by score (unscored flows rank last). "
        f"Labels: <code>{_esc(summary['labels_file'])}</code>.</p>"
    )
    return (
        "<h2>Detection quality</h2>" + note + quality
        + "<h3>Recall per attack kind <small>(flows detected)</small></h3>" + per_kind
        + _curves_figure(available)
    )


def _detectors_section(summary: dict) -> str:
    """Flagged flows per detector (the nightly view, when there are no labels)."""
    rows = []
    for name, entry in summary["detectors"].items():
        if not entry.get("available"):
            rows.append([_esc(name), _esc(entry["family"]), "–", "no scores", "", "", ""])
            continue
        share = entry["flagged"] / entry["scored_flows"] if entry["scored_flows"] else 0.0
        rows.append([_esc(name), _esc(entry["family"]), _esc(entry.get("model_version", "–")),
                     _num(entry["scored_flows"]), _num(entry["flagged"]), f"{100 * share:.2f} %",
                     _num(entry["threshold"], 4)])
    note = ('<p class="note">Baselines (fitted on the training nights, no labels) are shown for '
            "comparison. Each detector flags flows above its own threshold, fitted on the training "
            "nights.</p>")
    return "<h2>Detectors</h2>" + note + _table(
        ["detector", "family", "version", "scored flows", "flagged", "flagged share", "threshold"],
        rows, numeric={3, 4, 5, 6})


def _curves_figure(available: dict[str, dict]) -> str:
    if not any(entry.get("curves") for entry in available.values()):
        return ('<h3>ROC and precision-recall curves</h3><p class="note">Not drawn: the labels '
                "mark no attack flow (or no benign flow) on this night, so they are undefined.</p>")
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, entry in available.items():
        c = entry.get("curves")
        if not c:
            continue
        style = "-" if entry["family"] == "model" else "--"
        auc = entry["metrics"]["roc_auc"]
        ap = entry["metrics"]["pr_auc"]
        roc.plot(c["roc"]["fpr"], c["roc"]["tpr"], style, label=f"{name} (AUC {auc:.3f})")
        pr.plot(c["pr"]["recall"], c["pr"]["precision"], style, drawstyle="steps-pre",
                label=f"{name} (AP {ap:.3f})")
    roc.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is roc else "lower left")
    return "<h3>ROC and precision-recall curves</h3>" + _png(fig)


def _distributions_section(summary: dict) -> str:
    available = [(n, e) for n, e in _available(summary).items() if (e.get("histogram") or {}).get("edges")]
    if not available:
        return "<h2>Score distributions</h2><p class='note'>No scores for this night.</p>"
    labelled = summary.get("attack_flows_by_kind") is not None
    columns = 3
    rows = math.ceil(len(available) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13, 3.2 * rows), squeeze=False)
    for ax, (name, entry) in zip(axes.flat, available):
        h = entry["histogram"]
        edges = h["edges"]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        if labelled:
            ax.bar(edges[:-1], h["benign"], widths, align="edge", color=BENIGN_COLOUR, alpha=0.6, label="benign")
            ax.bar(edges[:-1], h["attack"], widths, align="edge", color=ATTACK_COLOUR, alpha=0.6, label="attack")
        else:
            ax.bar(edges[:-1], h["all"], widths, align="edge", color=BENIGN_COLOUR, alpha=0.8)
        if entry.get("threshold") is not None:
            ax.axvline(entry["threshold"], color="black", linestyle="--", linewidth=1)
            ax.text(entry["threshold"], 0.98, " threshold", transform=ax.get_xaxis_transform(),
                    fontsize=7, va="top")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)
        ax.set_title(f"{name} ({entry['family']}): {entry['flagged']:,} flagged", fontsize=10)
        ax.set_xlabel("score", fontsize=8)
        ax.set_ylabel("flows (log)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(available):]:
        ax.axis("off")
    fig.tight_layout()
    if labelled:
        axes.flat[0].legend(fontsize=8, loc="best", framealpha=0.9)
    what = "benign vs attack flows" if labelled else "all flows of the night"
    return f"<h2>Score distributions <small>({what})</small></h2>" + _png(fig)


def _read_scores(spark, warehouse: Path, date: str, model: str, summary: dict):
    """The scores of ``model`` at the version the summary evaluated, ``None`` if absent."""
    entry = summary["detectors"].get(model, {})
    if not entry.get("available") or not entry.get("model_version"):
        return None
    try:
        return read_partition(spark, warehouse, "flow_scores", date=date, model=model,
                              model_version=entry["model_version"])
    except FileNotFoundError:
        return None


def _truth_column(flows: pd.DataFrame, summary: dict) -> list[str] | None:
    """The labelled attack kind of each row of ``flows`` when the summary was labelled."""
    if summary.get("attack_flows_by_kind") is None or not summary.get("labels_file"):
        return None
    try:
        return label_flows(flows, read_labels(summary["labels_file"])).tolist()
    except (OSError, ValueError) as error:
        log.warning("labels %s unreadable for the report: %s", summary["labels_file"], error)
        return None


def _top_flows_section(spark, warehouse: Path, date: str, summary: dict, config: ReportConfig) -> str:
    from pyspark.sql import functions as F

    parts = ["<h2>Top anomalous flows</h2>"]
    models = [n for n, e in summary["detectors"].items() if e["family"] == "model"]
    if not models:
        parts.append('<p class="note">No detector models were evaluated.</p>')
    for model in models:
        scores = _read_scores(spark, warehouse, date, model, summary)
        if scores is None:
            parts.append(f'<h3>{_esc(model)}</h3><p class="note">No scores for this night.</p>')
            continue
        top = scores.where(F.col("score").isNotNull()).orderBy(F.col("score").desc()).limit(config.top_flows).toPandas()
        evidence = EVIDENCE_COLUMNS.get(model, ())
        truth = _truth_column(top, summary)
        rows = []
        for i, r in enumerate(top.itertuples(index=False)):
            mark = '<span class="flag">anomaly</span>' if r.is_anomaly else ""
            row = [_esc(r.flow_id), _esc(f"{r.src_ip}:{r.src_port}"), _esc(f"{r.dst_ip}:{r.dst_port}"),
                   _num(r.protocol), _time(r.first_seen_ms), _num(r.score, 4), mark]
            if truth is not None:
                kind = truth[i]
                row.append(_esc(kind) if kind == BENIGN else f'<b class="attack">{_esc(kind)}</b>')
            rows.append(row + [_num(getattr(r, c), 3) for c in evidence])
        header = ["flow_id", "source", "destination", "proto", "start (UTC)", "score", ""]
        header += ["label"] if truth is not None else []
        first_evidence = len(header)
        header += list(evidence)
        numeric = {3, 4, 5} | {first_evidence + i for i, c in enumerate(evidence) if top[c].dtype.kind in "fiu"}
        version = summary["detectors"][model].get("model_version")
        parts.append(f"<h3>{_esc(model)} <small>version {_esc(version)}, top {config.top_flows} by score</small></h3>"
                     + _table(header, rows, numeric=numeric))
    return "".join(parts)


def _anomalous_atoms(spark, warehouse: Path, date: str, summary: dict, config: ReportConfig):
    """(atoms with their flows as pandas, which model flagged them) or (None, reason)."""
    from pyspark.sql import functions as F

    try:
        atoms = read_partition(spark, warehouse, "atoms", date=date)
        flows = read_partition(spark, warehouse, "flows", date=date)
    except FileNotFoundError as error:
        return None, f"No atoms for this night ({error})."
    models = [n for n, e in summary["detectors"].items() if e["family"] == "model" and e.get("available")]
    model = "a2gnn" if "a2gnn" in models else (models[0] if models else None)
    flagged = None
    if model is not None:
        scores = _read_scores(spark, warehouse, date, model, summary)
        flagged = scores.select("flow_id", F.col("is_anomaly").alias("flagged"))
    members = atoms.select("flow_id", "atom_id", "atom_size", "atom_density")
    if flagged is not None:
        members = members.join(flagged, "flow_id", "left")
    else:
        members = members.withColumn("flagged", F.lit(False))
    members = members.withColumn("flagged", F.coalesce(F.col("flagged"), F.lit(False)))
    ranking = (
        members.groupBy("atom_id")
        .agg(F.sum(F.col("flagged").cast("int")).alias("anomalous"), F.max("atom_size").alias("size"))
        .where(F.col("anomalous") > 0 if flagged is not None else F.lit(True))
        .orderBy(F.col("anomalous").desc(), F.col("size").desc(), F.col("atom_id"))
        .limit(config.atoms_drawn)
    )
    chosen = ranking.toPandas()
    if chosen.empty:
        return None, f"No atom holds a flow flagged by {model}."
    detail = (  # the chosen atoms by id: joining `ranking` would aggregate the night again
        members.where(F.col("atom_id").isin(chosen["atom_id"].tolist()))
        .join(flows.select("flow_id", "src_ip", "dst_ip", "dst_port", "protocol", "first_seen_ms",
                           "last_seen_ms"), "flow_id")
        .toPandas()
    )
    return (chosen, detail, model), None


def atom_layout(atom: pd.DataFrame, seed: int = 7) -> dict[str, tuple[float, float]]:
    """Positions of ``host:<ip>`` and ``flow:<flow_id>`` nodes for one atom's drawing.

    Hosts are placed by a seeded spring layout of the host graph (an edge per host pair
    that shares flows); each flow sits between its two hosts, flows of the same pair
    fanned out perpendicular to the pair so parallel flows stay visible.
    """
    pairs = atom.assign(a=atom[["src_ip", "dst_ip"]].min(axis=1), b=atom[["src_ip", "dst_ip"]].max(axis=1))
    hosts = nx.Graph()
    hosts.add_nodes_from(pd.concat([atom["src_ip"], atom["dst_ip"]]).unique())
    for (a, b), group in pairs.groupby(["a", "b"]):
        if a != b:
            hosts.add_edge(a, b, weight=float(len(group)))
    if hosts.number_of_nodes() == 2:
        first, second = sorted(hosts.nodes)
        host_pos = {first: (-1.0, 0.0), second: (1.0, 0.0)}
    else:
        host_pos = nx.spring_layout(hosts, seed=seed, weight=None)
    position = {f"host:{h}": (float(x), float(y)) for h, (x, y) in host_pos.items()}
    for (a, b), group in pairs.groupby(["a", "b"]):
        (xa, ya), (xb, yb) = host_pos[a], host_pos[b]
        dx, dy = xb - xa, yb - ya
        length = math.hypot(dx, dy) or 1.0
        nx_, ny_ = -dy / length, dx / length          # unit normal of the pair
        n = len(group)
        spacing = min(0.12, 0.9 / max(n, 1)) * (length if a != b else 1.0)
        mx, my = (xa + xb) / 2, (ya + yb) / 2
        if a == b:                                     # flows from a host to itself
            mx, my, nx_, ny_ = xa + 0.15, ya + 0.15, 1.0, 0.0
        for j, flow_id in enumerate(sorted(group["flow_id"])):
            offset = (j - (n - 1) / 2) * spacing
            position[f"flow:{flow_id}"] = (mx + nx_ * offset, my + ny_ * offset)
    return position


def labelled_hosts(
    positions: dict[str, tuple[float, float]], degrees: dict[str, int], max_labels: int = 8,
    min_gap: tuple[float, float] = (0.22, 0.07),
) -> list[str]:
    """Hosts to label in a drawing: busiest first (``degrees``: flows per host node), at
    most ``max_labels``, skipping a host whose label box would overlap one already chosen.

    ``positions``: node -> (x, y) in data units; ``min_gap``: the smallest (dx, dy) between
    two labels as fractions of the drawing's x and y extent (a label is wider than tall:
    ~16 characters of a 7.5 pt font in a third of the page). Two labels collide when they
    are closer than the gap in both directions.
    """
    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    chosen: list[str] = []
    for node in sorted(degrees, key=lambda n: (-degrees[n], n)):
        if len(chosen) == max_labels:
            break
        x, y = positions[node]
        if all(abs(x - positions[c][0]) >= min_gap[0] * span_x or abs(y - positions[c][1]) >= min_gap[1] * span_y
               for c in chosen):
            chosen.append(node)
    return chosen


def _atom_drawing(ax, atom: pd.DataFrame, max_flows: int, title: str) -> None:
    """Hosts (blue circles) and flows (squares, red when flagged), host--flow--host."""
    atom = atom.sort_values(["flagged", "flow_id"], ascending=[False, True]).head(max_flows)
    graph = nx.Graph()
    for r in atom.itertuples(index=False):
        f = f"flow:{r.flow_id}"
        graph.add_node(f, kind="flow", flagged=bool(r.flagged))
        for host in (r.src_ip, r.dst_ip):
            graph.add_node(f"host:{host}", kind="host")
            graph.add_edge(f"host:{host}", f)
    layout = atom_layout(atom)
    hosts = [n for n, d in graph.nodes(data=True) if d["kind"] == "host"]
    flows_flagged = [n for n, d in graph.nodes(data=True) if d["kind"] == "flow" and d["flagged"]]
    flows_quiet = [n for n, d in graph.nodes(data=True) if d["kind"] == "flow" and not d["flagged"]]
    nx.draw_networkx_edges(graph, layout, ax=ax, edge_color="#aaaaaa", width=0.6)
    nx.draw_networkx_nodes(graph, layout, nodelist=flows_quiet, node_shape="s", node_size=20,
                           node_color=QUIET_COLOUR, ax=ax)
    nx.draw_networkx_nodes(graph, layout, nodelist=flows_flagged, node_shape="s", node_size=24,
                           node_color=FLAGGED_COLOUR, ax=ax)
    nx.draw_networkx_nodes(graph, layout, nodelist=hosts, node_size=140, node_color=HOST_COLOUR, ax=ax)
    # label the busiest hosts whose labels do not collide, so drawings stay legible
    for node in labelled_hosts(layout, {h: graph.degree(h) for h in hosts}):
        x, y = layout[node]
        ax.annotate(node[len("host:"):], (x, y), xytext=(0, 8), textcoords="offset points", ha="center",
                    fontsize=7.5, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    ax.set_title(title, fontsize=9)
    ax.margins(0.15)
    ax.axis("off")


def _atoms_section(spark, warehouse: Path, date: str, summary: dict, config: ReportConfig) -> str:
    found, reason = _anomalous_atoms(spark, warehouse, date, summary, config)
    if found is None:
        return f"<h2>Largest anomalous atoms</h2><p class='note'>{_esc(reason)}</p>"
    chosen, detail, model = found
    columns = 3
    rows = math.ceil(len(chosen) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13, 4.2 * rows), squeeze=False)
    table_rows = []
    for ax, atom in zip(axes.flat, chosen.itertuples(index=False)):
        members = detail[detail["atom_id"] == atom.atom_id]
        shown = min(len(members), config.max_flows_per_atom_drawing)
        title = f"{atom.atom_id}: {atom.anomalous} of {atom.size} flows flagged"
        if shown < len(members):
            title += f"\n(first {shown} drawn)"
        _atom_drawing(ax, members, config.max_flows_per_atom_drawing, title)
        hosts = pd.concat([members["src_ip"], members["dst_ip"]]).value_counts()
        services = (members["dst_port"].astype(str) + "/" + members["protocol"].astype(str)).value_counts()
        row = [
            _esc(atom.atom_id), _num(int(atom.size)), _num(int(atom.anomalous)),
            _num(float(members["atom_density"].max()), 3),
            _esc(", ".join(hosts.index[:4])), _esc(", ".join(services.index[:4])),
        ]
        truth = _truth_column(members, summary)
        if truth is not None:
            counts = pd.Series(truth).value_counts()
            row.append(_esc(", ".join(f"{k} {n}" for k, n in counts.items())))
        table_rows.append(row)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.tight_layout()
    if model is None:
        legend = ('<p class="note">No model scores for this night: the largest atoms are drawn. '
                  "Blue circles: hosts; grey squares: flows; each flow joins its two hosts.</p>")
    else:
        legend = ('<p class="note">Atoms holding the most flows flagged by '
                  f"{_esc(model)}. Blue circles: hosts; squares: flows (red: flagged, grey: not "
                  "flagged); each flow joins its two hosts.</p>")
    header = ["atom", "flows", "flagged", "density", "main hosts", "main services (port/proto)"]
    if _truth_column(detail.head(0), summary) is not None:
        header.append("labels (flows)")
    table = _table(header, table_rows, numeric={1, 2, 3})
    return "<h2>Largest anomalous atoms</h2>" + legend + _png(fig) + table


def _hosts_section(spark, warehouse: Path, date: str, summary: dict, config: ReportConfig) -> str:
    from pyspark.sql import functions as F

    flows = read_partition(spark, warehouse, "flows", date=date)
    per_flow = flows.select("flow_id", "src_ip", "dst_ip", "bidirectional_bytes")
    models = []
    for model, entry in summary["detectors"].items():
        if entry["family"] != "model" or not entry.get("available"):
            continue
        scores = _read_scores(spark, warehouse, date, model, summary)
        if scores is None:
            continue
        per_flow = per_flow.join(
            scores.select("flow_id", F.col("is_anomaly").cast("int").alias(f"flag_{model}"),
                          F.col("score").alias(f"score_{model}")),
            "flow_id", "left",
        )
        models.append(model)
    sides = [
        per_flow.select(F.col(side).alias("host"), "*", F.lit(int(side == "src_ip")).alias("as_src"))
        for side in ("src_ip", "dst_ip")
    ]
    hosts = sides[0].unionByName(sides[1])
    aggregates = [
        F.count("*").alias("flows"),
        F.sum("as_src").alias("initiated"),
        F.sum("bidirectional_bytes").alias("bytes"),
        F.countDistinct(F.when(F.col("as_src") == 1, F.col("dst_ip")).otherwise(F.col("src_ip"))).alias("peers"),
    ]
    for model in models:
        aggregates += [F.sum(F.coalesce(F.col(f"flag_{model}"), F.lit(0))).alias(f"flagged_{model}"),
                       F.max(f"score_{model}").alias(f"max_{model}")]
    table = hosts.groupBy("host").agg(*aggregates)
    if models:
        total = sum((F.col(f"flagged_{m}") for m in models), F.lit(0))
        table = table.withColumn("flagged_any", total).orderBy(F.col("flagged_any").desc(), F.col("flows").desc())
    else:
        table = table.orderBy(F.col("flows").desc())
    top = table.limit(config.top_hosts).toPandas()
    header = ["host", "flows", "initiated", "peers", "bytes"]
    for m in models:
        header += [f"{m} flagged", f"{m} max score"]
    rows = []
    for r in top.to_dict("records"):
        row = [_esc(r["host"]), _num(int(r["flows"])), _num(int(r["initiated"])), _num(int(r["peers"])),
               _num(int(r["bytes"] or 0))]
        for m in models:
            row += [_num(int(r[f"flagged_{m}"] or 0)), _num(r[f"max_{m}"], 3)]
        rows.append(row)
    order = "most flagged flows first" if models else "busiest first"
    return f"<h2>Hosts <small>({order}, top {config.top_hosts})</small></h2>" + _table(header, rows)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;
color:#222;padding:0 16px;line-height:1.4}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:34px;border-bottom:1px solid #ddd;
padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}small{color:#666;font-weight:normal}
.sub{color:#555;margin-top:0}.note{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 12px}
th,td{padding:3px 9px;border-bottom:1px solid #e6e6e6;text-align:left;white-space:nowrap}
th{background:#f3f5f8;position:sticky;top:0}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:hover td{background:#fafbfd}img{max-width:100%}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0}
.card{background:#f3f5f8;border-radius:6px;padding:10px 16px;min-width:120px}
.card .value{font-size:20px;font-weight:600}.card .label{font-size:12px;color:#555}
.row{display:flex;gap:40px;flex-wrap:wrap}.flag{color:#fff;background:#d62728;border-radius:3px;
padding:0 5px;font-size:11px}code{background:#f3f5f8;padding:0 3px}b.attack{color:#d62728}
.scroll{overflow-x:auto}
"""


def render_report(spark, warehouse: Path, date: str, summary: dict, config: ReportConfig = ReportConfig()) -> str:
    """The report's HTML text (no I/O besides reading the warehouse)."""
    warehouse = Path(warehouse)
    labelled = summary.get("attack_flows_by_kind") is not None
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (
        f"Trained on {_esc(', '.join(summary['train_dates']))} "
        f"({_num(summary.get('train_flows'))} flows) · "
        + ("evaluated against labels" if labelled else "no labels (nightly run)")
        + f" · generated {generated}"
    )
    sections = [f"<h1>Traffic anomalies, night {_esc(date)}</h1><p class='sub'>{subtitle}</p>"]
    if "verdict" in summary["detectors"] or summary.get("incidents") is not None:
        sections.append(_incidents_section(spark, warehouse, date, summary, config))
    sections.append(_volumes_section(summary))
    sections.append(_quality_section(summary) if labelled else _detectors_section(summary))
    sections += [
        _distributions_section(summary),
        _top_flows_section(spark, warehouse, date, summary, config),
        _atoms_section(spark, warehouse, date, summary, config),
        _hosts_section(spark, warehouse, date, summary, config),
    ]
    body = "".join(f'<section class="scroll">{s}</section>' for s in sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Anomaly report {_esc(date)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )


def _replace_atomically(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_report(spark, warehouse: Path, date: str, summary: dict, out_dir: Path,
                 config: ReportConfig = ReportConfig()) -> Path:
    """Write ``out_dir/summary.json`` then ``out_dir/report.html`` (each atomically).

    The HTML is written last, so its presence means both files are complete. Returns the
    HTML path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = render_report(spark, warehouse, date, summary, config)
    _replace_atomically(out_dir / "summary.json", json.dumps(summary, indent=1))
    path = _replace_atomically(out_dir / "report.html", text)
    log.info("report for %s written to %s", date, path)
    return path
