"""Detection quality of one detector on one labelled night: pure functions, no I/O.

Inputs are aligned per-flow arrays of length ``num_flows``:

* ``is_attack``: bool, the ground truth (``pipeline.evaluation.labels.label_flows(...) != "benign"``);
* ``kinds``: str, the attack kind of every flow (``"benign"`` for benign flows);
* ``scores``: float, higher = more anomalous; NaN (a flow the detector did not score)
  ranks below every scored flow;
* ``is_anomaly``: bool, the detector's own decision at its own threshold.

Threshold metrics (precision, recall, F1) use ``is_anomaly`` as given: the evaluation
never picks a threshold from labels. Ranking metrics (ROC AUC, PR AUC = average
precision) use ``scores``.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from pipeline.evaluation.labels import BENIGN

CURVE_POINTS = 200
"""Most points kept per ROC / PR curve in a JSON summary."""


def _ranked_scores(scores: np.ndarray) -> np.ndarray:
    """``scores`` as float64 with NaN replaced by a value below every finite score."""
    values = np.asarray(scores, dtype=np.float64)
    finite = values[np.isfinite(values)]
    floor = (finite.min() - 1.0) if finite.size else 0.0
    values = np.where(np.isnan(values), floor, values)
    return np.clip(values, floor, np.finfo(np.float64).max)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _optional(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def binary_metrics(is_attack: np.ndarray, scores: np.ndarray, is_anomaly: np.ndarray) -> dict:
    """Confusion counts, precision, recall, F1, ROC AUC and PR AUC (JSON-able dict).

    Precision is 0 when nothing is flagged, recall 0 when there is no attack. ROC AUC and
    PR AUC are ``None`` when the night holds only one class (they are undefined).
    """
    truth = np.asarray(is_attack, dtype=bool)
    flagged = np.asarray(is_anomaly, dtype=bool)
    if truth.shape != flagged.shape or truth.shape != np.shape(scores):
        raise ValueError(
            f"misaligned inputs: is_attack {truth.shape}, scores {np.shape(scores)}, "
            f"is_anomaly {flagged.shape}"
        )
    tp = int(np.sum(truth & flagged))
    fp = int(np.sum(~truth & flagged))
    fn = int(np.sum(truth & ~flagged))
    tn = int(np.sum(~truth & ~flagged))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall) if precision + recall else 0.0
    both_classes = 0 < truth.sum() < truth.size
    ranked = _ranked_scores(scores)
    return {
        "flows": int(truth.size),
        "attack_flows": int(truth.sum()),
        "flagged": int(flagged.sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": _ratio(fp, fp + tn),
        "roc_auc": _optional(roc_auc_score(truth, ranked)) if both_classes else None,
        "pr_auc": _optional(average_precision_score(truth, ranked)) if both_classes else None,
    }


def per_kind_detection(kinds: np.ndarray, is_anomaly: np.ndarray) -> dict[str, dict]:
    """Per attack kind: flows, flows flagged, recall; for ``"benign"``: the false alarms.

    Returns ``{kind: {"flows": n, "detected": k, "recall": k / n}}`` for every attack kind
    present, plus ``{"benign": {"flows": n, "flagged": k, "false_positive_rate": k / n}}``.
    Kinds are whatever the labels file names (no fixed list).
    """
    kinds = np.asarray(kinds, dtype=object)
    flagged = np.asarray(is_anomaly, dtype=bool)
    if kinds.shape != flagged.shape:
        raise ValueError(f"misaligned inputs: kinds {kinds.shape}, is_anomaly {flagged.shape}")
    result: dict[str, dict] = {}
    for kind in sorted(set(kinds.tolist())):
        members = kinds == kind
        n = int(members.sum())
        k = int(np.sum(flagged & members))
        if kind == BENIGN:
            result[kind] = {"flows": n, "flagged": k, "false_positive_rate": _ratio(k, n)}
        else:
            result[kind] = {"flows": n, "detected": k, "recall": _ratio(k, n)}
    return result


def _thin(*columns: np.ndarray, points: int = CURVE_POINTS) -> list[list[float]]:
    """Keep at most ``points`` evenly spaced entries (first and last always kept)."""
    n = len(columns[0])
    keep = np.unique(np.linspace(0, n - 1, min(n, points)).round().astype(int)) if n else []
    return [[round(float(c[i]), 6) for i in keep] for c in columns]


def curves(is_attack: np.ndarray, scores: np.ndarray, points: int = CURVE_POINTS) -> dict | None:
    """ROC (fpr, tpr) and PR (recall, precision) curves, thinned to ``points`` each.

    ``None`` when the night holds only one class.
    """
    truth = np.asarray(is_attack, dtype=bool)
    if not 0 < truth.sum() < truth.size:
        return None
    ranked = _ranked_scores(scores)
    fpr, tpr, _ = roc_curve(truth, ranked)
    precision, recall, _ = precision_recall_curve(truth, ranked)
    fpr, tpr = _thin(fpr, tpr, points=points)
    recall, precision = _thin(recall[::-1], precision[::-1], points=points)
    return {"roc": {"fpr": fpr, "tpr": tpr}, "pr": {"recall": recall, "precision": precision}}


def score_histograms(
    scores: np.ndarray, is_attack: np.ndarray | None = None, bins: int = 40
) -> dict:
    """Histogram of finite ``scores`` on shared bin edges, split benign/attack when known.

    Returns ``{"edges": [bins + 1], "all": [bins]}`` and, with ``is_attack``, also
    ``"benign"`` and ``"attack"`` counts. Empty input gives empty lists.
    """
    values = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return {"edges": [], "all": []}
    low, high = float(values[finite].min()), float(values[finite].max())
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    result = {
        "edges": [float(e) for e in edges],
        "all": np.histogram(values[finite], edges)[0].tolist(),
    }
    if is_attack is not None:
        truth = np.asarray(is_attack, dtype=bool)
        result["benign"] = np.histogram(values[finite & ~truth], edges)[0].tolist()
        result["attack"] = np.histogram(values[finite & truth], edges)[0].tolist()
    return result


# ------------------------------------------------------------------ incident level
INCIDENT_HOSTS_LISTED = 8
"""Most hosts of one incident listed in a JSON summary (``hosts_total`` counts them all)."""


def _as_list(value) -> list:
    """A list column's cell (Arrow gives ``ndarray``, pandas may give ``None``) as a list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(v) for v in value]


def incident_listing(incidents, top: int = 20) -> list[dict]:
    """The ``top`` best-ranked incidents of a night as JSON-able dicts.

    ``incidents``: a pandas frame with ``pipeline.store.schema.INCIDENTS`` columns. Each dict:
    ``incident_id``, ``rank``, ``score``, ``flagged_flows``, ``flows``, ``hosts`` (the
    first ``INCIDENT_HOSTS_LISTED``), ``hosts_total``, ``services_total``,
    ``first_seen_ms``, ``last_seen_ms``, ``top_evidence``.
    """
    rows = []
    for r in incidents.sort_values(["rank", "incident_id"], kind="stable").head(top).to_dict("records"):
        hosts = _as_list(r["hosts"])
        rows.append({
            "incident_id": str(r["incident_id"]),
            "rank": int(r["rank"]),
            "score": _optional(float(r["score"])) if r["score"] is not None else None,
            "flagged_flows": int(r["flagged_flows"]),
            "flows": int(r["flows"]),
            "hosts": hosts[:INCIDENT_HOSTS_LISTED],
            "hosts_total": len(hosts),
            "services_total": len(_as_list(r["services"])),
            "first_seen_ms": int(r["first_seen_ms"]),
            "last_seen_ms": int(r["last_seen_ms"]),
            "top_evidence": None if r["top_evidence"] is None else str(r["top_evidence"]),
        })
    return rows


def incident_overview(incidents, top: int = 20) -> dict:
    """What a night without labels says about its incidents: how many, and the best ranked.

    ``{"labelled": False, "incidents": n, "flagged_flows": k, "top": incident_listing(...),
    "attacks": None, "attacks_total": None, "attacks_caught": None, "benign_incidents":
    None, "truth": None}`` (the keys of ``incident_detection``, label-dependent ones null).
    """
    return {
        "labelled": False,
        "incidents": int(len(incidents)),
        "flagged_flows": int(incidents["flagged_flows"].fillna(0).sum()) if len(incidents) else 0,
        "top": incident_listing(incidents, top),
        "attacks": None,
        "attacks_total": None,
        "attacks_caught": None,
        "benign_incidents": None,
        "truth": None,
    }


def incident_detection(flows, verdict, incidents, rules, top: int = 20) -> dict:
    """Incident-level quality of the verdict on one labelled night (what an analyst sees).

    * ``flows [N]``: the night's flows with ``flow_id`` and ``label_row`` (int: the index
      in ``rules`` of the labels row that matches the flow, -1 for a benign flow;
      ``pipeline.evaluation.labels.matching_label_rows``);
    * ``verdict``: the verdict's rows with ``flow_id``, ``is_anomaly``, ``incident_id``
      (all of the night's rows, or only the flagged ones: unlisted flows count as not
      flagged);
    * ``incidents``: the night's ``incidents`` table (``pipeline.store.schema.INCIDENTS``);
    * ``rules``: the labels rows (``pipeline.evaluation.labels.LabelRule``) in file order.

    An attack (a labels row) is *caught* when at least one of its flows is flagged and
    in an incident (``incident_id`` not null). An incident is *benign* when none of its
    flagged flows is an attack flow. Labels rows that match no flow of the night (other
    nights' attacks) are not listed. Returns::

        {"labelled": True, "incidents": n, "flagged_flows": k, "top": incident_listing(...)
         each with "truth": {kind: flagged flows}, "attacks": [{"row", "kind", "attacker",
         "victim", "start_ms", "end_ms", "attack_flows", "caught", "flagged_flows",
         "incident_ids"}], "attacks_total", "attacks_caught", "benign_incidents",
         "truth": {incident_id: {kind: flagged flows}} for incidents holding attack flows}
    """
    import pandas as pd

    verdict = verdict.drop_duplicates("flow_id", keep="first").set_index("flow_id")
    aligned = verdict.reindex(flows["flow_id"])
    flagged = aligned["is_anomaly"].eq(True).to_numpy(dtype=bool)
    has_incident = flagged & aligned["incident_id"].notna().to_numpy()
    incident = np.array([str(i) if keep else None for i, keep in zip(aligned["incident_id"], has_incident)],
                        dtype=object)
    row = flows["label_row"].to_numpy(dtype=np.int64)
    kinds = np.array([BENIGN if r < 0 else rules[r].attack for r in row], dtype=object)

    in_incident = pd.DataFrame({"incident_id": incident[has_incident], "kind": kinds[has_incident]})
    known = set(incidents["incident_id"].astype(str))
    truth_all = {
        str(i): {str(k): int(n) for k, n in group["kind"].value_counts().sort_index().items()}
        for i, group in in_incident.groupby("incident_id") if str(i) in known
    }
    truth = {i: t for i, t in truth_all.items() if set(t) - {BENIGN}}

    attacks = []
    for r in sorted(set(row[row >= 0].tolist())):
        members = row == r
        ids = sorted(set(incident[members & has_incident].tolist()))
        rule = rules[r]
        attacks.append({
            "row": int(r),
            "kind": rule.attack,
            "attacker": str(rule.attacker),
            "victim": rule.victim if rule.victim is not None else "*",
            "start_ms": int(rule.start_ms),
            "end_ms": int(rule.end_ms),
            "attack_flows": int(members.sum()),
            "caught": bool(ids),
            "flagged_flows": int(np.sum(flagged & members)),
            "incident_ids": ids,
        })
    summary = incident_overview(incidents, top)
    for entry in summary["top"]:
        entry["truth"] = truth_all.get(entry["incident_id"], {})
    return {
        **summary,
        "labelled": True,
        "attacks": attacks,
        "attacks_total": len(attacks),
        "attacks_caught": sum(a["caught"] for a in attacks),
        "benign_incidents": int(len(known - set(truth))),
        "truth": truth,
    }
