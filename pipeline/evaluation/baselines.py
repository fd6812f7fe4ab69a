"""Three unsupervised baselines, fitted on benign training nights only (no labels).

* ``isolation_forest``: scikit-learn ``IsolationForest`` on the raw flow features
  (``pipeline.detectors.features.raw_matrix``: log1p-scaled, not standardised; trees do not care).
  Score = ``-score_samples`` (higher = more anomalous).
* ``knn_distance``: Euclidean distance to the ``k``-th nearest training flow in the
  standardised feature space (``pipeline.detectors.features`` normalisation fitted on the training
  flows). Training scores are leave-one-out (a training flow is not its own neighbour).
  The reference set is at most ``knn_max_reference`` training flows (a seeded uniform
  sample when the window has more), so scoring a night costs ``O(night x cap)``, not
  ``O(night x training window)``: a 220k-flow night against a 165k-flow window took
  64 s per kNN query before the cap (docs/benchmarks.md, DetectTask).
* ``novelty_lookup``: a flow is flagged when its ``(dst_ip, dst_port, protocol)``
  (responder address, responder port, transport protocol) never occurred on a training
  night. Score 1.0 for a novel triplet, else 0.0.

Thresholds come from the training nights too: the ``threshold_quantile`` of the training
scores (leave-one-out for kNN). Nothing here ever sees a label.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors

from pipeline.detectors.features import apply_normalisation, fit_normalisation, raw_matrix

log = logging.getLogger(__name__)

BASELINE_NAMES = ("isolation_forest", "knn_distance", "novelty_lookup")
TRIPLET_COLUMNS = ("dst_ip", "dst_port", "protocol")


@dataclass(frozen=True)
class BaselinesConfig:
    """Baseline settings; fixed before seeing any test night (never tuned on labels).

    ``threshold_quantile``: the quantile of training scores above which a flow is
    anomalous (the same default as RearView's benign-validation quantile, METHODS.md).
    ``isolation_forest_trees`` / ``isolation_forest_max_samples``: scikit-learn's
    defaults. ``knn_neighbors``: k of the k-th neighbour distance (PyOD's KNN default, 5).
    ``knn_max_reference``: most training flows the kNN index holds (the dev archive's
    windows, ~9k flows, are below it, so its numbers are exact kNN).
    """

    threshold_quantile: float = 0.99
    isolation_forest_trees: int = 100
    isolation_forest_max_samples: int = 256
    knn_neighbors: int = 5
    knn_max_reference: int = 20_000


def _triplets(flows: pd.DataFrame) -> pd.Series:
    """``"dst_ip|dst_port|protocol"`` per flow (nulls as empty fields)."""
    parts = [flows[c].astype("string").fillna("") for c in TRIPLET_COLUMNS]
    return parts[0].str.cat(parts[1:], sep="|")


@dataclass
class Baselines:
    """The fitted baselines (``names``; the others are ``None``); ``score`` applies them."""

    config: BaselinesConfig
    names: tuple[str, ...]
    isolation_forest: IsolationForest | None = None
    isolation_forest_threshold: float | None = None
    normalisation: dict | None = None
    knn_index: NearestNeighbors | None = None
    knn_k: int | None = None
    knn_threshold: float | None = None
    known_triplets: frozenset[str] | None = None

    def _knn_distance(self, standardised: np.ndarray) -> np.ndarray:
        distances, _ = self.knn_index.kneighbors(standardised, n_neighbors=self.knn_k)
        return distances[:, -1]

    def thresholds(self) -> dict[str, float]:
        """``{name: threshold}`` of the fitted baselines (novelty: 0.5 on its 0/1 score)."""
        every = {"isolation_forest": self.isolation_forest_threshold, "knn_distance": self.knn_threshold,
                 "novelty_lookup": 0.5}
        return {name: every[name] for name in self.names}

    def score(self, flows: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{name: (scores [num_flows] float64, is_anomaly [num_flows] bool)}`` per fitted baseline.

        ``flows`` has the ``flows`` table's columns (``pipeline.store.schema.FLOWS``; the
        novelty lookup alone needs only ``TRIPLET_COLUMNS``).
        """
        if len(flows) == 0:
            return {name: (np.zeros(0), np.zeros(0, dtype=bool)) for name in self.names}
        results = {}
        if "isolation_forest" in self.names:
            forest = -self.isolation_forest.score_samples(raw_matrix(flows))
            results["isolation_forest"] = (forest, forest > self.isolation_forest_threshold)
        if "knn_distance" in self.names:
            knn = self._knn_distance(apply_normalisation(flows, self.normalisation)).astype(np.float64)
            results["knn_distance"] = (knn, knn > self.knn_threshold)
        if "novelty_lookup" in self.names:
            novel = ~_triplets(flows).isin(self.known_triplets).to_numpy()
            results["novelty_lookup"] = (novel.astype(np.float64), novel)
        return results


def _fit_forest(train_flows: pd.DataFrame, seed: int, config: BaselinesConfig) -> dict:
    raw = raw_matrix(train_flows)
    forest = IsolationForest(
        n_estimators=config.isolation_forest_trees,
        max_samples=min(config.isolation_forest_max_samples, len(train_flows)),
        random_state=seed,
    ).fit(raw)
    threshold = float(np.quantile(-forest.score_samples(raw), config.threshold_quantile))
    return {"isolation_forest": forest, "isolation_forest_threshold": threshold}


def _fit_knn(train_flows: pd.DataFrame, seed: int, config: BaselinesConfig) -> dict:
    normalisation = fit_normalisation(train_flows)
    standardised = apply_normalisation(train_flows, normalisation)
    if len(standardised) > config.knn_max_reference:
        sample = np.random.default_rng(seed).choice(len(standardised), config.knn_max_reference, replace=False)
        standardised = standardised[np.sort(sample)]
    index = NearestNeighbors().fit(standardised)
    reference = len(standardised)
    k = min(config.knn_neighbors, reference - 1)
    # leave-one-out on the reference flows: ask for k + 1 neighbours, drop each flow's own row
    distances, neighbours = index.kneighbors(standardised, n_neighbors=k + 1)
    own = neighbours == np.arange(reference)[:, None]
    # a flow with exact duplicates may not be returned as its own first neighbour:
    # drop the first column that is itself, else the last column
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(reference), drop] = False
    knn_train = distances[keep].reshape(reference, k)[:, -1]
    return {"normalisation": normalisation, "knn_index": index, "knn_k": k,
            "knn_threshold": float(np.quantile(knn_train, config.threshold_quantile))}


def fit_baselines(
    train_flows: pd.DataFrame, seed: int, config: BaselinesConfig = BaselinesConfig(),
    names: tuple[str, ...] = BASELINE_NAMES,
) -> Baselines:
    """Fit the baselines ``names`` and their thresholds on benign training flows.

    ``train_flows``: rows of the ``flows`` table from the training nights (only
    ``TRIPLET_COLUMNS`` when ``names`` is just the novelty lookup). The rows are put in
    ``flow_id`` order first (when that column is there), so the seeded forest and kNN
    sample depend on the flows, not on how the table's files happen to be laid out.
    Raises ``ValueError`` when there are fewer than two training flows or a name is unknown.
    """
    unknown = sorted(set(names) - set(BASELINE_NAMES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {BASELINE_NAMES}")
    if len(train_flows) < 2:
        raise ValueError(f"baselines need at least 2 training flows, got {len(train_flows)}")
    names = tuple(n for n in BASELINE_NAMES if n in names)
    if "flow_id" in train_flows.columns:
        train_flows = train_flows.sort_values("flow_id", kind="stable").reset_index(drop=True)
    fitted = {}
    if "isolation_forest" in names:
        fitted.update(_fit_forest(train_flows, seed, config))
    if "knn_distance" in names:
        fitted.update(_fit_knn(train_flows, seed, config))
    if "novelty_lookup" in names:
        fitted["known_triplets"] = frozenset(_triplets(train_flows).unique().tolist())
    baselines = Baselines(config=config, names=names, **fitted)
    log.info("baselines %s fitted on %d training flows: thresholds %s", ", ".join(names), len(train_flows),
             {n: round(t, 4) for n, t in baselines.thresholds().items()})
    return baselines
