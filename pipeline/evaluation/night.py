"""Evaluate one night: the detectors' scores and three baselines, against labels if given.

Inputs are warehouse partitions (``pipeline.store.warehouse``): ``flows`` of the scored night
and of the training nights, ``flow_scores`` of the night per model, and ``ingest_stats``
/ ``ingest_errors`` for volumes. The baselines (``pipeline.evaluation.baselines``) are fitted on the
training nights' flows, never on labels. A model whose scores partition is missing is
reported as unavailable, not as an error: the nightly report must still be written.

When ``verdict`` is among the models, its ``incidents`` partition is evaluated too
(``summary["incidents"]``): with labels, each attack (labels row) caught by an incident or
missed, and the incidents holding no attack flow; without, the incident list.

"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.detectors.features import FEATURE_COLUMNS
from pipeline.evaluation import aggregates as night_aggregates
from pipeline.evaluation import metrics
from pipeline.evaluation.baselines import BASELINE_NAMES, TRIPLET_COLUMNS, BaselinesConfig, fit_baselines
from pipeline.evaluation.labels import BENIGN, LabelRule, label_flows, matching_label_rows, read_labels
from pipeline.store.warehouse import SUCCESS_MARKER, complete_partitions, read_partition

log = logging.getLogger(__name__)


DEFAULT_MODELS = ("a2gnn", "rearview")


FLOW_COLUMNS = (
    "flow_id",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "protocol",
    "first_seen_ms",
    "last_seen_ms",
    "bidirectional_bytes",
) + tuple(c for c in FEATURE_COLUMNS if c != "bidirectional_bytes")
"""Columns of ``flows`` the evaluation loads (the baselines' features and the label keys)."""


KEY_COLUMNS = FLOW_COLUMNS[:9] + ("bidirectional_packets",)
"""What the evaluation needs of a night when no feature-based baseline runs."""


FEATURE_BASELINES = ("isolation_forest", "knn_distance")


VERDICT = "verdict"
"""The model whose flagged flows are grouped into ``incidents`` (``pipeline.verdict``)."""


@dataclass(frozen=True)
class EvaluationConfig:
    """``seed`` for the stochastic baselines; ``baselines`` their fixed settings.

    ``baselines_without_labels``: the baselines a night without labels (the nightly
    case) still gets. Only the novelty lookup by default: "flows to a service never seen
    in training" is evidence an analyst can act on, and it costs a set lookup, whereas
    the Isolation Forest and kNN scores are yardsticks for the models that mean nothing
    without labels, and the kNN query was the report's largest cost (14 s of a 1 GB
    night's 20 s, docs/benchmarks.md). ``top_incidents``: incidents listed in the summary
    (the report reads the whole ``incidents`` table itself).
    """

    seed: int = 0
    top_incidents: int = 20
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    baselines_without_labels: tuple[str, ...] = ("novelty_lookup",)
    aggregate_in_spark: bool = True


def read_flows(spark, warehouse: Path, date: str, columns=FLOW_COLUMNS) -> pd.DataFrame:
    """The night's flows (``columns``, default ``FLOW_COLUMNS``) as pandas. Raises ``FileNotFoundError``."""
    return read_partition(spark, warehouse, "flows", date=date).select(*columns).toPandas()


def latest_score_version(warehouse: Path, date: str, model: str) -> str | None:
    """The ``model_version`` of ``model``'s most recently completed scores of ``date``.

    Scores are partitioned by version (``pipeline.store.schema.PARTITION_COLUMNS``); a night
    reprocessed with another version has several. ``None`` when there are none.
    """
    leaves = complete_partitions(warehouse, "flow_scores", date=date, model=model)
    if not leaves:
        return None
    if len(leaves) > 1:
        log.warning("%d score versions of %s on %s: evaluating the newest", len(leaves), model, date)
    newest = max(leaves, key=lambda leaf: (leaf / SUCCESS_MARKER).stat().st_mtime)
    return newest.name.split("=", 1)[1]


def read_model_scores(spark, warehouse: Path, date: str, model: str, version: str):
    """``model``'s scores of ``date`` at ``version`` as a Spark DataFrame."""
    return read_partition(spark, warehouse, "flow_scores", date=date, model=model, model_version=version)


def flow_totals(flows: pd.DataFrame) -> dict:
    """``{"flows", "packets", "bytes", "hosts"}`` of a night's flows held as pandas."""
    return {
        "flows": int(len(flows)),
        "packets": int(flows["bidirectional_packets"].fillna(0).sum()),
        "bytes": int(flows["bidirectional_bytes"].fillna(0).sum()),
        "hosts": int(pd.concat([flows["src_ip"], flows["dst_ip"]]).nunique()),
    }


INGEST_ERROR_FIELDS = ("capture_file", "byte_offset", "byte_length", "reason", "fatal", "packets_after")
"""The ``ingest_errors`` columns a night's summary lists per error (``volumes.ingest_errors.rows``)."""


def ingest_error_rows(errors: pd.DataFrame) -> list[dict]:
    """Every ``ingest_errors`` row as a JSON-ready dict of ``INGEST_ERROR_FIELDS``, ordered by
    file and offset; columns a partition written before they existed lacks are ``None``."""
    ordered = errors.sort_values(["capture_file", "byte_offset"], kind="stable")
    rows = []
    for record in ordered.to_dict("records"):
        row = {}
        for name in INGEST_ERROR_FIELDS:
            value = record.get(name)
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                row[name] = None
            elif name == "fatal":
                row[name] = bool(value)
            elif name in ("byte_offset", "byte_length", "packets_after"):
                row[name] = int(value)
            else:
                row[name] = str(value)
        rows.append(row)
    return rows


def night_volumes(spark, warehouse: Path, date: str, totals: dict) -> dict:
    """``totals`` (``flow_totals``) plus ingest accounting when its tables exist."""
    volumes: dict = dict(totals)
    try:
        stats = read_partition(spark, warehouse, "ingest_stats", date=date).toPandas()
        skipped = [c for c in stats.columns if c.startswith("skipped_")]
        volumes["ingest"] = {
            "files": int(len(stats)),
            "file_bytes": int(stats["file_bytes"].fillna(0).sum()),
            "packets_read": int(stats["packets_read"].fillna(0).sum()),
            "packets_in_flows": int(stats["packets_in_flows"].fillna(0).sum()),
            "packets_skipped": int(stats["packets_skipped"].fillna(0).sum()),
            "skipped_by_reason": {c[len("skipped_"):]: int(stats[c].fillna(0).sum()) for c in skipped},
            "bytes_skipped": int(stats["bytes_skipped"].fillna(0).sum()),
            "files_by_status": {str(k): int(v) for k, v in stats["status"].value_counts().items()},
        }
    except FileNotFoundError:
        volumes["ingest"] = None
    try:
        errors = read_partition(spark, warehouse, "ingest_errors", date=date).toPandas()
        volumes["ingest_errors"] = {
            "errors": int(len(errors)),
            "fatal": int(errors["fatal"].fillna(False).sum()),
            "by_reason": {str(k): int(v) for k, v in errors["reason"].value_counts().items()},
            "rows": ingest_error_rows(errors),
        }
    except FileNotFoundError:
        volumes["ingest_errors"] = None
    return volumes


def read_incidents(spark, warehouse: Path, date: str, version: str) -> pd.DataFrame:
    """The ``incidents`` of ``date`` found by verdict ``version``, as pandas (a few hundred
    rows at most). Raises ``FileNotFoundError`` when that partition is missing."""
    return read_partition(spark, warehouse, "incidents", date=date, model_version=version).toPandas()


def incidents_summary(spark, warehouse: Path, date: str, version: str, flows: pd.DataFrame | None = None,
                      rules: list[LabelRule] | None = None, top: int = 20) -> dict:
    """``summary["incidents"]``: the night's incidents at verdict ``version``, judged
    against labels when ``rules`` and ``flows`` (``flow_id`` and ``label_row``,
    ``matching_label_rows``) are given (``pipeline.evaluation.metrics.incident_detection``), else
    listed (``pipeline.evaluation.metrics.incident_overview``). Adds ``model_version`` and
    ``available``; ``{"model_version", "available": False, "reason"}`` when the
    incidents partition is missing.
    """
    from pyspark.sql import functions as F

    try:
        incidents = read_incidents(spark, warehouse, date, version)
    except FileNotFoundError as error:
        log.warning("no incidents of verdict %s on %s: %s", version, date, error)
        return {"model_version": version, "available": False, "reason": str(error)}
    if rules is None or flows is None:
        result = metrics.incident_overview(incidents, top)
    else:
        verdict = (read_model_scores(spark, warehouse, date, VERDICT, version)
                   .where(F.col("is_anomaly")).select("flow_id", "is_anomaly", "incident_id").toPandas())
        result = metrics.incident_detection(flows, verdict, incidents, rules, top)
    return {"model_version": version, "available": True, **result}


def _verdict_version(detectors: dict[str, dict]) -> str | None:
    """The verdict version the detectors evaluated, ``None`` when it was not scored."""
    entry = detectors.get(VERDICT) or {}
    return entry.get("model_version") if entry.get("available") else None


def _detector_entry(
    family: str,
    scores: np.ndarray,
    is_anomaly: np.ndarray,
    kinds: np.ndarray | None,
    scored_flows: int,
    threshold: float | None,
) -> dict:
    """One detector's summary: counts, metrics and per kind when labelled, plots' data."""
    is_attack = None if kinds is None else kinds != BENIGN
    entry = {
        "family": family,
        "available": True,
        "scored_flows": int(scored_flows),
        "flagged": int(np.sum(is_anomaly)),
        "threshold": None if threshold is None or not math.isfinite(threshold) else float(threshold),
        "metrics": None,
        "per_kind": None,
        "curves": None,
        "histogram": metrics.score_histograms(scores, is_attack),
    }
    if kinds is not None:
        entry["metrics"] = metrics.binary_metrics(is_attack, scores, is_anomaly)
        entry["per_kind"] = metrics.per_kind_detection(kinds, is_anomaly)
        entry["curves"] = metrics.curves(is_attack, scores)
    return entry


def _align_model_scores(flows: pd.DataFrame, scores: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int, float | None]:
    """Model scores aligned to ``flows`` rows by ``flow_id``; unscored flows: NaN, False."""
    scores = scores.drop_duplicates("flow_id", keep="first").set_index("flow_id")
    aligned = scores.reindex(flows["flow_id"])
    values = aligned["score"].to_numpy(dtype=np.float64, na_value=np.nan)
    flagged = aligned["is_anomaly"].fillna(False).to_numpy(dtype=bool)
    thresholds = scores["threshold"].dropna()
    threshold = float(thresholds.median()) if len(thresholds) else None
    return values, flagged, int(aligned["score"].notna().sum()), threshold


def _scored_version(warehouse: Path, date: str, model: str, versions: dict[str, str] | None) -> str | None:
    """The pinned (else newest) version of ``model`` with complete scores of ``date``, or None."""
    version = (versions or {}).get(model) or latest_score_version(warehouse, date, model)
    if version is None or not complete_partitions(
        warehouse, "flow_scores", date=date, model=model, model_version=version
    ):
        log.warning("no scores for model %s (version %s) on %s", model, version, date)
        return None
    return version


def _model_detectors(spark, warehouse: Path, date: str, models: list[str], versions: dict[str, str] | None,
                     entry_of) -> dict[str, dict]:
    """One detector entry per model: ``entry_of(scores_df)`` of its scored version's rows
    plus ``model_version``, or ``{"family": "model", "available": False}`` without scores."""
    detectors: dict[str, dict] = {}
    for model in models:
        version = _scored_version(warehouse, date, model, versions)
        if version is None:
            detectors[model] = {"family": "model", "available": False}
            continue
        entry = entry_of(read_model_scores(spark, warehouse, date, model, version))
        detectors[model] = {**entry, "model_version": version}
    return detectors


def _unlabelled_summary(spark, warehouse: Path, date: str, train_dates: list[str], models: list[str],
                        names: tuple[str, ...], versions: dict[str, str] | None, top: int) -> dict:
    """``evaluate_night``'s summary of a night without labels, from Spark aggregates
    (``pipeline.evaluation.aggregates``): the driver holds no night-sized table."""
    flows = read_partition(spark, warehouse, "flows", date=date)
    totals = night_aggregates.flow_totals(flows)
    log.info("evaluating %s: %d flows (Spark aggregates, no labels)", date, totals["flows"])
    unlabelled = {"available": True, "metrics": None, "per_kind": None, "curves": None}
    detectors = _model_detectors(
        spark, warehouse, date, models, versions,
        lambda scores: {"family": "model", **unlabelled, **night_aggregates.model_entry(scores)})
    train = None
    for day in train_dates:
        night = read_partition(spark, warehouse, "flows", date=day).select(*TRIPLET_COLUMNS)
        train = night if train is None else train.unionByName(night)
    if "novelty_lookup" in names and train is not None:
        detectors["novelty_lookup"] = {"family": "baseline", **unlabelled,
                                       **night_aggregates.novelty_entry(flows, train)}
    version = _verdict_version(detectors)
    return {
        "date": date,
        "train_dates": list(train_dates),
        "train_flows": 0 if train is None else int(train.count()),
        "labels_file": None,
        "models": list(models),
        "volumes": night_volumes(spark, warehouse, date, totals),
        "attack_flows_by_kind": None,
        "detectors": detectors,
        "incidents": None if version is None else incidents_summary(spark, warehouse, date, version, top=top),
    }


def evaluate_night(
    spark,
    warehouse: Path,
    date: str,
    train_dates: list[str],
    labels_path: Path | None,
    models: list[str],
    config: EvaluationConfig = EvaluationConfig(),
    versions: dict[str, str] | None = None,
) -> dict:
    """JSON-able summary of one night (see ``docs/`` and ``pipeline.report``).

    ``{"date", "train_dates", "labels_file", "models", "volumes", "attack_flows_by_kind",
    "detectors": {name: {"family": "model"|"baseline", "available", "scored_flows",
    "flagged", "threshold", "metrics", "per_kind", "curves", "histogram"}}}``;
    ``metrics``/``per_kind``/``curves`` are ``None`` without labels. ``versions`` pins
    the ``model_version`` evaluated per model; a model not in it is evaluated at its
    newest complete scores partition of the night.

    ``"incidents"``: ``None`` unless ``"verdict"`` is among ``models`` and has scores of
    the night; then ``incidents_summary`` of the evaluated verdict version (its
    ``incidents`` partition): with labels, each attack (labels row) caught or not and the
    benign incidents; without, the incident count and the best ranked.
    """
    warehouse = Path(warehouse)
    names = BASELINE_NAMES if labels_path is not None else tuple(config.baselines_without_labels)
    with_features = bool(set(names) & set(FEATURE_BASELINES))
    if labels_path is None and not with_features and config.aggregate_in_spark:
        return _unlabelled_summary(spark, warehouse, date, train_dates, models, names, versions,
                                   config.top_incidents)
    flows = read_flows(spark, warehouse, date, FLOW_COLUMNS if with_features else KEY_COLUMNS)
    log.info("evaluating %s: %d flows", date, len(flows))
    kinds, rules = None, None
    if labels_path is not None:
        rules = read_labels(labels_path)
        kinds = label_flows(flows, rules).to_numpy(dtype=object)

    def entry_of(scores_df) -> dict:
        scores = scores_df.select("flow_id", "score", "threshold", "is_anomaly").toPandas()
        values, flagged, scored, threshold = _align_model_scores(flows, scores)
        return _detector_entry("model", values, flagged, kinds, scored, threshold)

    detectors = _model_detectors(spark, warehouse, date, models, versions, entry_of)

    columns = FLOW_COLUMNS if with_features else TRIPLET_COLUMNS
    train = pd.concat([read_flows(spark, warehouse, d, columns) for d in train_dates], ignore_index=True)
    if names:
        baselines = fit_baselines(train, config.seed, config.baselines, names)
        thresholds = baselines.thresholds()
        for name, (values, flagged) in baselines.score(flows).items():
            detectors[name] = _detector_entry("baseline", values, flagged, kinds, len(flows), thresholds[name])

    attack_kinds = None
    if kinds is not None:
        attack_kinds = {str(k): int(v) for k, v in pd.Series(kinds).value_counts().sort_index().items()}
    incidents = None
    version = _verdict_version(detectors)
    if version is not None:
        labelled = None
        if rules is not None:
            labelled = pd.DataFrame({"flow_id": flows["flow_id"], "label_row": matching_label_rows(flows, rules)})
        incidents = incidents_summary(spark, warehouse, date, version, labelled, rules, config.top_incidents)
    return {
        "date": date,
        "train_dates": list(train_dates),
        "train_flows": int(len(train)),
        "labels_file": None if labels_path is None else str(labels_path),
        "models": list(models),
        "volumes": night_volumes(spark, warehouse, date, flow_totals(flows)),
        "attack_flows_by_kind": attack_kinds,
        "detectors": detectors,
        "incidents": incidents,
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _utc(ms) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.timezone.utc).strftime("%H:%M:%S")


def results_markdown(summary: dict) -> str:
    """The evaluation table(s) of ``summary`` as GitHub markdown (incidents last, when the
    verdict was evaluated: ``incidents_markdown``)."""
    lines = [f"Night {summary['date']}, trained on {', '.join(summary['train_dates'])}.", ""]
    labelled = summary.get("attack_flows_by_kind") is not None
    if labelled:
        lines += [
            "| detector | family | flagged | precision | recall | F1 | ROC AUC | PR AUC | benign FPR |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        lines += ["| detector | family | scored flows | flagged |", "|---|---|---:|---:|"]
    for name, entry in summary["detectors"].items():
        if not entry.get("available"):
            lines.append(f"| {name} | {entry['family']} | not available |" + " |" * (6 if labelled else 1))
            continue
        m = entry["metrics"]
        if labelled:
            lines.append(
                f"| {name} | {entry['family']} | {entry['flagged']} | {_fmt(m['precision'])} | "
                f"{_fmt(m['recall'])} | {_fmt(m['f1'])} | {_fmt(m['roc_auc'])} | {_fmt(m['pr_auc'])} | "
                f"{_fmt(m.get('false_positive_rate'))} |"
            )
        else:
            lines.append(f"| {name} | {entry['family']} | {entry['scored_flows']} | {entry['flagged']} |")
    if labelled:
        attack = [k for k in summary["attack_flows_by_kind"] if k != BENIGN]
        available = [n for n, e in summary["detectors"].items() if e.get("available")]
        lines += ["", "Recall per attack kind (flows detected / attack flows):", ""]
        lines.append("| kind | flows | " + " | ".join(available) + " |")
        lines.append("|---|---:|" + "---:|" * len(available))
        for kind in attack:
            cells = []
            for name in available:
                pk = (summary["detectors"][name].get("per_kind") or {}).get(kind, {"recall": 0.0, "detected": 0})
                cells.append(f"{pk['recall']:.2f} ({pk['detected']})")
            lines.append(f"| {kind} | {summary['attack_flows_by_kind'][kind]} | " + " | ".join(cells) + " |")
        benign = []
        for name in available:
            pk = (summary["detectors"][name].get("per_kind") or {}).get(
                BENIGN, {"flagged": 0, "false_positive_rate": 0.0})
            benign.append(f"{pk['false_positive_rate']:.3f} ({pk['flagged']})")
        lines.append(f"| benign (false alarms) | {summary['attack_flows_by_kind'].get(BENIGN, 0)} | " + " | ".join(benign) + " |")
    text = "\n".join(lines) + "\n"
    if summary.get("incidents") is not None:
        text += "\n" + incidents_markdown(summary["incidents"])
    return text


def incidents_markdown(incidents: dict) -> str:
    """``summary["incidents"]`` as markdown: each attack caught or missed and the benign
    incidents (with labels), else the count and the best-ranked incidents."""
    version = incidents.get("model_version")
    if not incidents.get("available"):
        return f"Incidents (verdict `{version}`): not available ({incidents.get('reason', 'no partition')}).\n"
    lines = [f"Incidents (verdict `{version}`): {incidents['incidents']} flagged, "
             f"{incidents['flagged_flows']} flagged flows in them.", ""]
    if incidents.get("labelled"):
        lines += [
            f"Attacks caught: {incidents['attacks_caught']} of {incidents['attacks_total']}; benign incidents: "
            f"{incidents['benign_incidents']} of {incidents['incidents']}.", "",
            "| labels.csv line | kind | attacker | victim | attack flows | caught | flows flagged | incidents |",
            "|---:|---|---|---|---:|---|---:|---|",
        ]
        for a in incidents["attacks"]:
            ids = ", ".join(a["incident_ids"]) or "–"
            lines.append(f"| {a['row'] + 2} | {a['kind']} | {a['attacker']} | {a['victim']} | {a['attack_flows']} | "
                         f"{'yes' if a['caught'] else '**missed**'} | {a['flagged_flows']} | {ids} |")
        return "\n".join(lines) + "\n"
    if not incidents["top"]:
        return "\n".join(lines[:1] + ["", "No incident flagged."]) + "\n"
    lines += ["| rank | incident | score | flagged / flows | hosts | first seen (UTC) | last seen (UTC) | evidence |",
              "|---:|---|---:|---:|---:|---|---|---|"]
    for i in incidents["top"]:
        lines.append(f"| {i['rank']} | {i['incident_id']} | {_fmt(i['score'])} | {i['flagged_flows']} / {i['flows']} | "
                     f"{i['hosts_total']} | {_utc(i['first_seen_ms'])} | {_utc(i['last_seen_ms'])} | "
                     f"{i['top_evidence'] or '–'} |")
    return "\n".join(lines) + "\n"
