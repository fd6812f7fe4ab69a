"""Detection quality of one detector on one labelled night: pure functions, no I/O.

Inputs are aligned per-flow arrays of length ``num_flows``:

* ``is_attack``: bool, the ground truth (``pipeline.labels.label_flows(...) != "benign"``);
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

from pipeline.labels import BENIGN

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
