"""RearView pipeline glue: training-night flows -> artifact, scored night -> flow scores.

Training (:func:`train_rearview`):

1. The training nights' flows are ordered by night and start time. Per night, the last
   ``validation_fraction`` of flows (in start order, a contiguous time block, so the
   validation flows are not near-copies of training flows) are held out as *benign
   validation* flows; the rest are *training* flows.
2. Feature normalisation (``pipeline.features``) and the condition vocabulary are fitted
   on training flows. Condition of a flow = its triplet ``server_ip|server_port|protocol``
   (server = responder = ``dst``) when that triplet has ``>= min_triplet_sessions``
   training flows; otherwise its ``(port, protocol)`` when the rare triplets of that port
   and protocol pool at least that many; otherwise its protocol; a global condition covers
   protocols never seen in training.
3. Relationship novelty (:func:`cross_night_novelty`): a training-night flow is *novel*
   when its triplet has no training flow on the *other* training nights (a scored night:
   no training flow at all), which gives benign flows the novelty rate of a new night.
4. In a ``TorchDistributor`` worker (:func:`train_rearview_worker`): the conditional VAE
   and per-condition KDEs (stage 1); then ``ensemble_size`` independently seeded
   *members* (stage 2 + 3), each an anomaly-weighted GraphSAGE trained with DGI over the
   FIFO session graphs of the training flows (edge features: latent mean and novelty,
   :func:`edge_features`; vertex counts and both endpoints in the edge embedding,
   ``models.rearview_sage``) and the unsupervised classifier on the training flows'
   embeddings; the refined score is the members' mean standardised classifier score
   (:func:`ensemble_refined`). Operating threshold: the level that ``1 -
   threshold_quantile`` of the benign validation flows' refined scores exceed
   (:class:`TailModel`: a GPD fitted to the top 10 % of them, less noisy than the
   empirical quantile). Test labels are never read.

The classifiers are not serialised: the artifact stores the training embeddings each was
fitted on, and :func:`load_artifacts` refits them deterministically (fixed seeds), which
reproduces the same models with no pickle anywhere.

Decision (stage 3): ``refined_score`` is the ensemble's anomaly score of the flow's edge
embeddings. As in the authors' code, a *suspicious* flow (``p > suspicious_p``, 0.6)
triggers the refinement of its FIFO window. ``decision_rule`` then picks the verdict
(:func:`decide_flows`; every threshold comes from the benign validation flows, whose
``p``, fallback cell and refined score the artifact stores):

* ``"paper"``: anomalous when ``p > screening_alarm_p`` (0.95), or when the home window
  was triggered and ``refined_score > threshold`` (:func:`decide`). ``p`` is a CDF of
  training values, so the first clause flags ~5 % of benign flows by construction.
* ``"calibrated"`` (default): the screening clause becomes ``screening surprise > the
  level its validation values exceed with probability false_alarm_rate``, the refined
  clause is unchanged.
* ``"fused"``: screening and refined evidence become validation tail probabilities,
  combined by Fisher's method (sum of ``-ln tail``; the refined term only in triggered
  windows) and thresholded at the level of the same statistic that validation flows
  exceed with probability ``false_alarm_rate``.

Every validation tail is a :class:`TailModel` (empirical in the bulk, GPD above the 90 %
quantile). Screening surprise = ``-ln`` of the validation tail of ``p``; with
``novelty_prior`` it adds ``-ln`` of the validation share of the flow's *fallback cell*
(:func:`fallback_cells`: condition level x novel), i.e. it is the probability that a
benign flow falls back that far *and* is at least that extreme. In every rule ``score >
threshold`` exactly when ``is_anomaly``.

Scoring (:func:`score_rearview`) numbers the flows in start order, cuts the FIFO windows
into spans of consecutive windows, one ``applyInPandas`` task each, and gives every task
its span's flows plus the FIFO context its last window needs (``pipeline.rearview_windows``:
consecutive windows overlap); every flow takes its embedding from its home window, so the
result equals :func:`score_flows_local`, the single-process run.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from models.kde import fit_conditional_kde, kde_probability
from models.rearview_cvae import ConditionalVAE
from models.rearview_sage import AnomalyWeightedEdgeSAGE
from models.rearview_training import (
    embed_edges, screen_flows, session_graph, train_cvae, train_edge_dgi,
)
from pipeline import features, model_store, schema
from pipeline.rearview_bursts import NUM_BURST_FEATURES, burst_counts
from pipeline.rearview_config import DECISION_RULES, FIELDS_ADDED_LATER, RearViewConfig  # noqa: F401 (re-exported)
from pipeline.rearview_scoring import DEFAULT_FLOWS_PER_TASK, FLOW_COLUMNS, score_rearview  # noqa: F401 (re-exported)
from pipeline.rearview_windows import eviction_count, home_window, window_bounds, window_count

log = logging.getLogger(__name__)

MODEL_NAME = "rearview"
ARTIFACT_FILES = (
    "config.json", "normalisation.json", "conditions.json", "detector.json",
    "vae.safetensors", "kde.safetensors", "sage.safetensors", "classifier_training.safetensors",
    "calibration.safetensors",
)
CONDITION_LEVELS = ("triplet", "port_protocol", "protocol", "global")
NUM_FALLBACK_CELLS = 2 * len(CONDITION_LEVELS)


# ---------------------------------------------------------------- conditions (pure)
def triplet_keys(flows: pd.DataFrame) -> pd.Series:
    """``"server_ip|server_port|protocol"`` per flow (server = responder = ``dst``)."""
    return flows["dst_ip"].astype(str) + "|" + flows["dst_port"].astype("int64").astype(str) + "|" + \
        flows["protocol"].astype("int64").astype(str)


def _port_protocol_keys(flows: pd.DataFrame) -> pd.Series:
    return flows["dst_port"].astype("int64").astype(str) + "|" + flows["protocol"].astype("int64").astype(str)


def build_condition_vocabulary(train_flows: pd.DataFrame, min_sessions: int) -> dict:
    """Condition ids from the training flows (``dst_ip``, ``dst_port``, ``protocol``).

    Returns ``{"triplet": {key: id}, "port_protocol": {key: id}, "protocol": {key: id},
    "global": id, "num_conditions": C}``; ids are assigned in sorted key order, global last.
    """
    triplets = triplet_keys(train_flows)
    counts = triplets.value_counts()
    frequent = sorted(counts.index[counts >= min_sessions])
    rare = ~triplets.isin(frequent)
    pairs = _port_protocol_keys(train_flows)[rare]
    pair_counts = pairs.value_counts()
    pooled = sorted(pair_counts.index[pair_counts >= min_sessions])
    rest = rare & ~_port_protocol_keys(train_flows).isin(pooled)
    protocols = sorted(train_flows.loc[rest, "protocol"].astype("int64").astype(str).unique())
    vocab: dict = {"triplet": {}, "port_protocol": {}, "protocol": {}}
    next_id = 0
    for level, keys in (("triplet", frequent), ("port_protocol", pooled), ("protocol", protocols)):
        for key in keys:
            vocab[level][key] = next_id
            next_id += 1
    vocab["global"] = next_id
    vocab["num_conditions"] = next_id + 1
    return vocab


def assign_conditions(vocab: dict, flows: pd.DataFrame) -> np.ndarray:
    """Condition id per flow: triplet, else (port, protocol), else protocol, else global."""
    ids = triplet_keys(flows).map(vocab["triplet"])
    ids = ids.fillna(_port_protocol_keys(flows).map(vocab["port_protocol"]))
    ids = ids.fillna(flows["protocol"].astype("int64").astype(str).map(vocab["protocol"]))
    return ids.fillna(vocab["global"]).to_numpy(dtype=np.int64)


def condition_levels(vocab: dict, flows: pd.DataFrame) -> np.ndarray:
    """``[N]`` int index into ``CONDITION_LEVELS``: how far each flow falls back."""
    level = np.full(len(flows), CONDITION_LEVELS.index("global"), dtype=np.int64)
    keys = (
        ("protocol", flows["protocol"].astype("int64").astype(str)),
        ("port_protocol", _port_protocol_keys(flows)),
        ("triplet", triplet_keys(flows)),
    )
    for name, key in keys:                       # deeper levels first, shallower overwrite
        level[key.isin(list(vocab[name])).to_numpy()] = CONDITION_LEVELS.index(name)
    return level


def unseen_triplets(seen_triplets: set[str] | frozenset | list[str], flows: pd.DataFrame) -> np.ndarray:
    """``[N]`` bool: the flow's triplet is not among ``seen_triplets`` (scoring-time novelty)."""
    return ~triplet_keys(flows).isin(list(seen_triplets)).to_numpy()


def cross_night_novelty(triplets: pd.Series, night: np.ndarray, is_train: np.ndarray) -> np.ndarray:
    """``[N]`` bool novelty of the *training nights'* flows, as a new night would see it.

    A flow is novel when its triplet occurs in no training flow of the *other* training
    nights. A scored night is judged against every training night, and on a new night
    benign hosts meet servers they did not meet before (new devices, new applications):
    the within-night hold-out sees far fewer of those than a new night (dev archive,
    benign only: 1.1 % of validation flows have a triplet unseen in training, while
    6.5-6.8 % of each training night's flows have a triplet unseen on the other night).
    Leave-one-night-out novelty gives training and validation flows the novelty rate of a
    new night, so the refinement learns what benign novelty looks like and the novelty
    prior is calibrated for it. With a single training night there is no other night:
    its training flows count as seen and validation flows are novel when their triplet has
    no training flow.
    """
    night = np.asarray(night)
    is_train = np.asarray(is_train, dtype=bool)
    keys = triplets.reset_index(drop=True)
    nights = np.unique(night)
    novel = np.zeros(len(keys), dtype=bool)
    if len(nights) == 1:
        novel[~is_train] = ~keys[~is_train].isin(set(keys[is_train])).to_numpy()
        return novel
    for n in nights:
        mine = night == n
        reference = set(keys[is_train & ~mine])
        novel[mine] = ~keys[mine].isin(reference).to_numpy()
    return novel


def fallback_cells(vocab: dict, flows: pd.DataFrame, novel: np.ndarray) -> np.ndarray:
    """``[N]`` int in ``[0, NUM_FALLBACK_CELLS)``: ``2 * condition level + novel``.

    ``novel [N]`` bool: :func:`unseen_triplets` when scoring, :func:`cross_night_novelty`
    for the training nights' flows. A triplet seen fewer than ``min_triplet_sessions``
    times falls back like an unseen one but is a different cell.
    """
    return 2 * condition_levels(vocab, flows) + np.asarray(novel, dtype=np.int64)


def edge_features(latent_mean: np.ndarray, novel: np.ndarray) -> np.ndarray:
    """``[N, 17]`` float32 session-graph edge features: VAE latent mean ``|| novel``.

    METHODS.md gives the latent mean alone. The novelty bit (triplet unseen on other
    nights) is added because under a pooled fallback condition the latent mean of a flow
    to a new server is that of an ordinary flow of its protocol: without it, a burst of
    flows to new servers, the shape of a scan, brute force or beacon, is invisible to the
    graph layer, which can only see how many flows a host has and what they look like.
    """
    return np.hstack([np.asarray(latent_mean, dtype=np.float32),
                      np.asarray(novel, dtype=np.float32).reshape(-1, 1)])


def order_flows(flows: pd.DataFrame, by_night: bool = False) -> pd.DataFrame:
    """Flows in replay order: (``date`` when ``by_night``), ``first_seen_ms``, ``flow_id``."""
    keys = (["date"] if by_night else []) + ["first_seen_ms", "flow_id"]
    return flows.sort_values(keys, kind="mergesort").reset_index(drop=True)


def validation_mask(nights: np.ndarray, fraction: float) -> np.ndarray:
    """``[N]`` bool: the last ``fraction`` of each night's flows (``nights`` in replay order)."""
    mask = np.zeros(len(nights), dtype=bool)
    _, starts, counts = np.unique(nights, return_index=True, return_counts=True)
    for start, count in zip(starts, counts):
        held = int(np.ceil(fraction * count)) if count > 1 else 0
        mask[start + count - held:start + count] = True
    return mask


# ------------------------------------------------------------------ decision (pure)
def fit_classifier(kind: str, embeddings: np.ndarray, seed: int):
    """Unsupervised classifier on benign embeddings ``[N, 64]``: IsolationForest or CBLOF."""
    if kind == "iforest":
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=200, random_state=seed).fit(embeddings)
    if kind == "cblof":
        from pyod.models.cblof import CBLOF

        return CBLOF(n_clusters=8, random_state=seed).fit(embeddings)
    raise ValueError(f"unknown classifier {kind!r} (iforest | cblof)")


def refined_scores(classifier, embeddings: np.ndarray) -> np.ndarray:
    """Classifier anomaly score per embedding, higher = more anomalous, ``[N]`` float64."""
    if len(embeddings) == 0:
        return np.zeros(0)
    if hasattr(classifier, "score_samples") and not hasattr(classifier, "decision_scores_"):
        return -classifier.score_samples(embeddings).astype(np.float64)
    return classifier.decision_function(embeddings).astype(np.float64)


MEMBER_SEED_STRIDE = 7919
"""Member ``k`` of a refinement ensemble trains with ``seed + 7919 k`` (a prime stride, so
the ensembles of nearby seeds such as 0 and 1 share no member)."""


def member_seed(seed: int, member: int) -> int:
    """Training seed of ensemble member ``member`` (member 0 uses ``seed`` itself)."""
    return seed + MEMBER_SEED_STRIDE * member


@dataclass(frozen=True)
class RefinementMember:
    """One stage-2/3 member: a DGI-trained encoder, the classifier on its benign training
    embeddings, and the mean/std of that classifier's scores on those embeddings (to put
    members on one scale before averaging)."""

    encoder: AnomalyWeightedEdgeSAGE
    classifier: object
    score_mean: float
    score_std: float

    @classmethod
    def fit(cls, encoder: AnomalyWeightedEdgeSAGE, kind: str, train_embeddings: np.ndarray,
            seed: int) -> "RefinementMember":
        classifier = fit_classifier(kind, train_embeddings, seed)
        scores = refined_scores(classifier, train_embeddings)
        return cls(encoder, classifier, float(scores.mean()), float(max(scores.std(), 1e-12)))

    def standardised(self, embeddings: np.ndarray) -> np.ndarray:
        """``[N]`` classifier score in units of the training flows' score std."""
        return (refined_scores(self.classifier, embeddings) - self.score_mean) / self.score_std


def ensemble_refined(members: tuple[RefinementMember, ...], embeddings: list[np.ndarray]) -> np.ndarray:
    """Refined score ``[N]``: the mean over members of :meth:`RefinementMember.standardised`.

    ``embeddings[k]``: ``[N, 64]`` edge embeddings of the same flows by member ``k``'s
    encoder. Why an ensemble: one DGI encoder and one classifier are a single draw; at the
    dev archive's operating points whole attack kinds (60 identical flood flows) sit at
    the threshold, so a different seed flips them. Averaging ``ensemble_size`` independently
    seeded members shrinks that seed variance (~1/sqrt(K) for independent members) at K
    times the refinement cost; screening is shared.
    """
    return np.mean([m.standardised(z) for m, z in zip(members, embeddings)], axis=0)


def decide(probability: np.ndarray, refined: np.ndarray, threshold: float, config: RearViewConfig,
           window_triggered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(score [N], is_anomaly [N])`` from screening ``p`` and ``refined_score``.

    ``window_triggered [N]``: the flow's home window holds at least one suspicious flow
    (``p > suspicious_p``); only then is the window refined and the classifier's verdict
    used (the authors' queue trigger), otherwise the flow keeps its screening verdict.
    """
    gated = np.where(window_triggered, refined, np.minimum(refined, threshold))
    score = np.maximum(gated, threshold * probability / config.screening_alarm_p)
    is_anomaly = (probability > config.screening_alarm_p) | (window_triggered & (refined > threshold))
    return score, is_anomaly


@dataclass(frozen=True)
class Calibration:
    """The benign validation flows' evidence, from which every decision threshold follows.

    ``p``, ``cell``, ``refined``: ``[V]`` screening probability, fallback cell and refined
    score of each validation flow; ``refined_threshold``: the level of ``refined`` whose
    validation tail is ``1 - threshold_quantile`` (the paper's operating point, read off
    a :class:`TailModel` rather than the empirical quantile).
    """

    p: np.ndarray
    cell: np.ndarray
    refined: np.ndarray
    refined_threshold: float

    @functools.cached_property
    def p_tail(self) -> "TailModel":
        return TailModel.fit(self.p)

    @functools.cached_property
    def refined_tail(self) -> "TailModel":
        return TailModel.fit(self.refined)

    @functools.cached_property
    def prior(self) -> np.ndarray:
        return cell_prior(self.cell)


def empirical_tail(reference: np.ndarray, values: np.ndarray, presorted: bool = False) -> np.ndarray:
    """``(1 + #{reference >= v}) / (len(reference) + 1)`` per value: a conservative p-value.

    ``reference``: ``[V]`` benign values (higher = more anomalous), ascending already when
    ``presorted``; returns ``[N]`` in ``(0, 1]``, non-increasing in the value.
    """
    ordered = reference if presorted else np.sort(np.asarray(reference, dtype=np.float64))
    at_least = len(ordered) - np.searchsorted(ordered, np.asarray(values, dtype=np.float64), side="left")
    return (1.0 + at_least) / (len(ordered) + 1.0)


TAIL_START_QUANTILE = 0.9
"""Peaks over threshold start at this validation quantile (~174 exceedances of 1,741)."""
MIN_TAIL_PROBABILITY = 1e-15
"""Floor of every tail probability (a surprise of at most ~34.5 nats), for a bounded GPD."""


@dataclass(frozen=True)
class TailModel:
    """Validation tail probability of a statistic: empirical in the bulk, GPD in the tail.

    Below ``u`` (the :data:`TAIL_START_QUANTILE` of the ``[V]`` benign validation values) the
    tail is :func:`empirical_tail`; above it, peaks over threshold: a generalised Pareto
    distribution fitted to the exceedances (``scipy.stats.genpareto``, location 0, the same
    tool METHODS.md uses for A2GNN's threshold), ``tail(v) = tail(u) * GPD.sf(v - u)``.

    Why: with ~1,700 validation flows an empirical 99-99.5 % quantile rests on 9-17 values,
    so a new training seed moves it by more than the gap between an attack and the
    threshold (dev archive: flood refined score 0.635 vs threshold 0.639 at seed 42), and
    an empirical tail floors at ``1 / (V + 1)``: every value above the validation maximum
    gets the same evidence. The GPD uses ~170 exceedances and keeps ordering beyond the
    maximum. Too few exceedances (< 20) or a failed fit keep the empirical tail.
    """

    sorted_reference: np.ndarray
    u: float
    tail_at_u: float
    shape: float
    scale: float

    @classmethod
    def fit(cls, reference: np.ndarray) -> "TailModel":
        from scipy.stats import genpareto

        ordered = np.sort(np.asarray(reference, dtype=np.float64))
        if len(ordered) == 0:
            return cls(ordered, np.inf, 1.0, 0.0, 0.0)
        u = float(np.quantile(ordered, TAIL_START_QUANTILE))
        excess = ordered[ordered > u] - u
        tail_at_u = float(empirical_tail(ordered, np.array([u]), presorted=True)[0])
        if len(excess) < 20 or np.ptp(excess) <= 0:
            return cls(ordered, np.inf, tail_at_u, 0.0, 0.0)
        try:
            shape, _, scale = genpareto.fit(excess, floc=0.0)
        except (RuntimeError, ValueError, FloatingPointError):
            return cls(ordered, np.inf, tail_at_u, 0.0, 0.0)
        if not (np.isfinite(shape) and np.isfinite(scale) and scale > 0):
            return cls(ordered, np.inf, tail_at_u, 0.0, 0.0)
        return cls(ordered, u, tail_at_u, float(shape), float(scale))

    def survival(self, values: np.ndarray) -> np.ndarray:
        """``[N]`` tail probability in ``[MIN_TAIL_PROBABILITY, 1]``, non-increasing in the value."""
        from scipy.stats import genpareto

        values = np.asarray(values, dtype=np.float64)
        tail = empirical_tail(self.sorted_reference, values, presorted=True) if len(self.sorted_reference) \
            else np.ones(len(values))
        above = values > self.u
        if above.any():
            tail[above] = self.tail_at_u * genpareto.sf(values[above] - self.u, self.shape, scale=self.scale)
        return np.clip(tail, MIN_TAIL_PROBABILITY, 1.0)

    def level(self, rate: float) -> float:
        """The value whose tail probability is ``rate`` (GPD inverse above ``u``); the
        validation maximum for ``rate <= 0``."""
        from scipy.stats import genpareto

        if len(self.sorted_reference) and rate <= 0:
            return float(self.sorted_reference[-1])
        if np.isfinite(self.u) and rate < self.tail_at_u:
            return float(self.u + genpareto.isf(rate / self.tail_at_u, self.shape, scale=self.scale))
        return _alarm_level(self.sorted_reference, rate)


def cell_prior(validation_cells: np.ndarray, num_cells: int = NUM_FALLBACK_CELLS) -> np.ndarray:
    """``[num_cells]`` Laplace-smoothed share of benign validation flows in each fallback cell."""
    counts = np.bincount(np.asarray(validation_cells, dtype=np.int64), minlength=num_cells)[:num_cells]
    return (counts + 1.0) / (counts.sum() + num_cells)


def screening_surprise(p: np.ndarray, cells: np.ndarray, calibration: Calibration, novelty_prior: bool) -> np.ndarray:
    """``-ln`` of the validation tail of ``p`` (``[N]``), plus ``-ln`` of the cell's prior when asked."""
    surprise = -np.log(calibration.p_tail.survival(p))
    if novelty_prior:
        surprise = surprise - np.log(calibration.prior[np.asarray(cells, dtype=np.int64)])
    return surprise


def _alarm_level(validation_statistic: np.ndarray, rate: float) -> float:
    """Smallest order statistic exceeded by at most ``rate`` of the validation values."""
    return float(np.quantile(validation_statistic, 1.0 - rate, method="higher"))


def decision_level(calibration: Calibration, config: RearViewConfig) -> float:
    """The alarm level of ``config.decision_rule`` from the validation flows alone.

    ``paper``: the refined threshold; ``calibrated``: the level of the screening
    surprise, ``fused``: that of the Fisher statistic, whose validation tail
    (:class:`TailModel`, GPD above its 90 % quantile) is ``false_alarm_rate``. Validation
    flows count as triggered (a FIFO window of benign traffic nearly always holds a flow
    with ``p > suspicious_p``), which can only raise the level. Costs ``O(V log V)`` plus a GPD fit: compute it once per
    artifact, not per window.
    """
    if config.decision_rule == "paper":
        return calibration.refined_threshold
    surprise = screening_surprise(calibration.p, calibration.cell, calibration, config.novelty_prior)
    if config.decision_rule == "calibrated":
        return max(TailModel.fit(surprise).level(config.false_alarm_rate), 1e-12)
    statistic = surprise - np.log(calibration.refined_tail.survival(calibration.refined))
    return TailModel.fit(statistic).level(config.false_alarm_rate)


def decide_flows(p: np.ndarray, cells: np.ndarray, refined: np.ndarray, window_triggered: np.ndarray,
                 calibration: Calibration, config: RearViewConfig,
                 level: float | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """``(score [N], threshold, is_anomaly [N])`` under ``config.decision_rule``.

    ``level``: :func:`decision_level` of ``(calibration, config)`` when already known.
    """
    refined_threshold = calibration.refined_threshold
    if config.decision_rule == "paper":
        score, is_anomaly = decide(p, refined, refined_threshold, config, window_triggered)
        return score, refined_threshold, is_anomaly
    level = decision_level(calibration, config) if level is None else level
    surprise = screening_surprise(p, cells, calibration, config.novelty_prior)
    if config.decision_rule == "calibrated":
        refined_clause = window_triggered & (refined > refined_threshold)
        gated = np.where(window_triggered, refined, np.minimum(refined, refined_threshold))
        score = np.maximum(gated, refined_threshold * surprise / level)
        return score, refined_threshold, (surprise > level) | refined_clause
    refined_surprise = -np.log(calibration.refined_tail.survival(refined))
    statistic = surprise + np.where(window_triggered, refined_surprise, 0.0)
    return statistic, level, statistic > level


def triggered_windows(probability: np.ndarray, queue_size: int, evict: int, suspicious_p: float,
                      bounds: np.ndarray | None = None, home: np.ndarray | None = None) -> np.ndarray:
    """``[N]`` bool per flow (replay order): its home window holds a flow with ``p > suspicious_p``.

    ``bounds`` (``[W, 2]`` flow ranges into ``probability``) and ``home`` (``[N]`` index
    into ``bounds``, outside ``[0, W)`` for a flow whose home is not among them: False)
    default to the whole stream's windows (:func:`window_bounds`, :func:`home_window`).
    """
    if bounds is None:
        bounds = window_bounds(len(probability), queue_size, evict)
        home = home_window(len(probability), queue_size, evict)
    if not len(bounds):
        return np.zeros(len(probability), bool)
    window_flag = np.array([(probability[a:b] > suspicious_p).any() for a, b in bounds] + [False], dtype=bool)
    return window_flag[np.where((home >= 0) & (home < len(bounds)), home, len(bounds))]


def burst_inputs(flows: pd.DataFrame, config: RearViewConfig) -> dict:
    """:func:`stream_windows`' burst arguments for ``flows`` (replay order): empty when
    burst counts are off, so the default path builds no triplet keys for them."""
    if config.burst_window_ms <= 0:
        return {}
    return {"times_ms": flows["first_seen_ms"].to_numpy(dtype=np.int64),
            "service": triplet_keys(flows).to_numpy(), "burst_window_ms": config.burst_window_ms}


# -------------------------------------------------------------- training (worker)
def stream_windows(src, dst, edges, p, queue_size: int, evict: int, bounds: np.ndarray | None = None,
                   times_ms: np.ndarray | None = None, service: np.ndarray | None = None,
                   burst_window_ms: int = 0) -> list:
    """``[(start, stop, SessionGraph)]`` of a flow stream's FIFO windows, built once and
    embedded by every ensemble member (the graphs do not depend on the encoder).

    ``src``, ``dst``: ``[N]`` initiator and responder labels; ``edges``: ``[N, D]``
    (:func:`edge_features`); ``p``: ``[N]`` screening probability. ``bounds``: ``[W, 2]``
    flow ranges into the arrays (default: every window of the stream,
    :func:`window_bounds`; a scoring task passes its span's windows). With
    ``burst_window_ms > 0`` each window's edge features gain the ``[E, 3]`` burst counts
    of its own flows (``pipeline.rearview_bursts``; ``times_ms [N]`` start times,
    ``service [N]`` triplet labels), so every graph has ``D + 3`` edge features.
    """
    if bounds is None:
        bounds = window_bounds(len(src), queue_size, evict)

    def window_edges(start: int, stop: int) -> np.ndarray:
        if burst_window_ms <= 0:
            return edges[start:stop]
        bursts = burst_counts(times_ms[start:stop], src[start:stop], service[start:stop], burst_window_ms)
        return np.hstack([edges[start:stop], bursts])

    return [(start, stop, session_graph(src[start:stop], dst[start:stop], window_edges(start, stop), p[start:stop]))
            for start, stop in bounds]


def embed_windows(windows: list, num_flows: int, encoder, queue_size: int, evict: int,
                  device: str = "cpu", home: np.ndarray | None = None) -> np.ndarray:
    """Edge embeddings ``[num_flows, 64]`` by ``encoder``, each flow's from its home window.

    ``home``: ``[num_flows]`` index into ``windows`` of each flow's home window (default
    :func:`home_window` of the whole stream); flows whose home is not in ``windows`` keep
    zeros.
    """
    out = np.zeros((num_flows, encoder.out_dim), dtype=np.float32)
    if home is None:
        home = home_window(num_flows, queue_size, evict)
    for window, (start, stop, graph) in enumerate(windows):
        z = embed_edges(encoder, graph, device)
        mine = home[start:stop] == window
        out[start:stop][mine] = z[mine]
    return out


def train_rearview_worker(inputs_path: str, out_dir: str, params: dict) -> dict | None:
    """``TorchDistributor`` entry point: train every RearView network, write tensors.

    ``inputs_path``: ``.npz`` (no pickle) with ``features [N, F]``, ``condition [N]``,
    ``is_train [N]``, ``night [N]``, ``src_vertex [N]``, ``dst_vertex [N]``, ``cell [N]``
    (fallback cell), ``novel [N]`` (:func:`cross_night_novelty`), ``first_seen_ms [N]``,
    ``service [N]`` (triplet ids, for the burst counts), rows in replay order per
    night. Writes ``vae``/``kde``/``sage``/``classifier_training``/``calibration``
    safetensors into ``out_dir``; returns JSON-able metrics with the calibrated threshold. Only rank 0
    trains (the data of a few nights fits one device); other ranks return ``None``.
    """
    from pipeline.distributed_training import distributed_context

    context = distributed_context(params["device"])
    if not context.is_main:
        return None
    device = context.device
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(params["cpu_threads"])
    with np.load(inputs_path, allow_pickle=False) as data:
        x, cond = data["features"], data["condition"]
        is_train, night = data["is_train"], data["night"]
        src, dst = data["src_vertex"], data["dst_vertex"]
        cell, novel = data["cell"], data["novel"]
        times, service = data["first_seen_ms"], data["service"]
    out = Path(out_dir)
    seed = params["seed"]
    vae, vae_history = train_cvae(
        x[is_train], cond[is_train], params["num_conditions"], params["global_condition"],
        epochs=params["vae_epochs"], learning_rate=params["vae_learning_rate"],
        batch_size=params["vae_batch_size"], condition_dropout=params["condition_dropout"],
        seed=seed, device=device,
    )
    err, norm, mu = screen_flows(vae, x, cond, device=device)
    train_rows = np.flatnonzero(is_train)
    global_ids = np.full(len(train_rows), params["global_condition"])
    g_err, g_norm, _ = screen_flows(vae, x[train_rows], global_ids, device=device)
    kde = fit_conditional_kde(
        np.concatenate([cond[train_rows], global_ids]), np.concatenate([err[train_rows], g_err]),
        np.concatenate([norm[train_rows], g_norm]), params["num_conditions"], params["kde_bandwidth"],
    )
    p = kde_probability(kde, cond, err, norm)

    queue, evict = params["queue_size"], params["evict"]
    edges = edge_features(mu, novel)

    def windows_of(rows: np.ndarray) -> list:
        return stream_windows(src[rows], dst[rows], edges[rows], p[rows], queue, evict, times_ms=times[rows],
                              service=service[rows], burst_window_ms=params["burst_window_ms"])

    graphs = []
    for n in np.unique(night):
        graphs += [g for _, _, g in windows_of(np.flatnonzero((night == n) & is_train))]
    night_rows = [np.flatnonzero(night == n) for n in np.unique(night)]
    night_windows = [windows_of(rows) for rows in night_rows]
    validation = ~is_train
    members, sage_state, train_embeddings, validation_embeddings, dgi_history = [], {}, {}, [], []
    for k in range(params["ensemble_size"]):
        encoder, history = train_edge_dgi(
            graphs, edges.shape[1] + (NUM_BURST_FEATURES if params["burst_window_ms"] > 0 else 0),
            epochs=params["sage_epochs"], learning_rate=params["sage_learning_rate"],
            seed=member_seed(seed, k), device=device,
        )
        z = np.zeros((len(x), encoder.out_dim), dtype=np.float32)
        for rows, windows in zip(night_rows, night_windows):
            z[rows] = embed_windows(windows, len(rows), encoder, queue, evict, device)
        members.append(RefinementMember.fit(encoder.cpu(), params["classifier"], z[is_train], member_seed(seed, k)))
        sage_state.update({f"member{k}.{name}": value for name, value in encoder.state_dict().items()})
        train_embeddings[f"member{k}"] = torch.from_numpy(z[is_train])
        validation_embeddings.append(z[validation])
        dgi_history.append(history)
    dgi_history = np.mean(dgi_history, axis=0).tolist()
    refined_validation = ensemble_refined(tuple(members), validation_embeddings)
    threshold = TailModel.fit(refined_validation).level(1.0 - params["threshold_quantile"])

    model_store.save_tensors(out / "vae.safetensors", vae.state_dict())
    model_store.save_tensors(out / "sage.safetensors", sage_state)
    model_store.save_tensors(out / "kde.safetensors", {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in kde.items()})
    model_store.save_tensors(out / "classifier_training.safetensors", train_embeddings)
    p_val = p[validation]
    calibration = Calibration(p_val.astype(np.float64), cell[validation].astype(np.int64),
                              refined_validation.astype(np.float64), threshold)
    model_store.save_tensors(out / "calibration.safetensors", {
        "p": torch.from_numpy(np.ascontiguousarray(calibration.p)),
        "cell": torch.from_numpy(np.ascontiguousarray(calibration.cell)),
        "refined": torch.from_numpy(np.ascontiguousarray(calibration.refined)),
    })
    config = RearViewConfig(**{f.name: params[f.name] for f in dataclasses.fields(RearViewConfig)})
    _, _, validation_alarm = decide_flows(p_val, calibration.cell, refined_validation,
                                          np.ones(len(p_val), dtype=bool), calibration, config)
    return {
        "threshold": threshold,
        "device": device,
        "train_flows": int(is_train.sum()),
        "validation_flows": int(validation.sum()),
        "session_graphs": len(graphs),
        "vae_loss_first": vae_history[0],
        "vae_loss_last": vae_history[-1],
        "dgi_loss_first": dgi_history[0],
        "dgi_loss_last": dgi_history[-1],
        "validation_screening_alarm_rate": float((p_val > params["screening_alarm_p"]).mean()),
        "validation_suspicious_rate": float((p_val > params["suspicious_p"]).mean()),
        "validation_refined_alarm_rate": float((refined_validation > threshold).mean()),
        "validation_alarm_rate": float(validation_alarm.mean()),
        "validation_cell_counts": np.bincount(calibration.cell, minlength=NUM_FALLBACK_CELLS).tolist(),
    }


# ---------------------------------------------------------------- training (driver)
def _collect(flows_df, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    columns = list(FLOW_COLUMNS) + [c for c in extra if c in flows_df.columns]
    missing = [c for c in FLOW_COLUMNS if c not in flows_df.columns]
    if missing:
        raise ValueError(f"RearView needs flow columns {missing} (pipeline.schema.FLOWS)")
    return flows_df.select(*columns).toPandas()


def train_rearview(spark, train_flows_df, config: RearViewConfig, out_dir: Path) -> dict:
    """Train RearView on the training nights' flows and write the artifact into ``out_dir``.

    ``train_flows_df``: Spark DataFrame with ``pipeline.schema.FLOWS`` columns plus
    ``date`` (one value per training night). Training runs through
    ``pipeline.distributed_training.run_training``. Returns JSON-able metrics.
    """
    from pipeline.distributed_training import run_training

    out_dir = Path(out_dir)
    flows = _collect(train_flows_df, extra=("date",))
    if len(flows) == 0:
        raise ValueError("train_rearview: no training flows")
    if "date" not in flows.columns:
        flows["date"] = pd.to_datetime(flows["first_seen_ms"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    flows = order_flows(flows, by_night=True)
    night = pd.factorize(flows["date"].astype(str), sort=True)[0].astype(np.int64)
    is_train = ~validation_mask(night, config.validation_fraction)
    normalisation = features.fit_normalisation(flows[is_train])
    vocab = build_condition_vocabulary(flows[is_train], config.min_triplet_sessions)
    seen_triplets = sorted(triplet_keys(flows[is_train]).unique().tolist())
    triplets = triplet_keys(flows)
    novel = cross_night_novelty(triplets, night, is_train)
    vertices, _ = pd.factorize(pd.concat([flows["src_ip"], flows["dst_ip"]], ignore_index=True))
    params = {
        **dataclasses.asdict(config),
        "device": config.device,
        "num_conditions": vocab["num_conditions"],
        "global_condition": vocab["global"],
        "evict": eviction_count(config.queue_size, config.evict_fraction),
    }
    scratch = Path(tempfile.mkdtemp(prefix="rearview-train-"))
    try:
        inputs = scratch / "inputs.npz"
        np.savez(
            inputs, features=features.apply_normalisation(flows, normalisation),
            condition=assign_conditions(vocab, flows), is_train=is_train, night=night,
            src_vertex=vertices[:len(flows)].astype(np.int64), dst_vertex=vertices[len(flows):].astype(np.int64),
            cell=fallback_cells(vocab, flows, novel), novel=novel,
            first_seen_ms=flows["first_seen_ms"].to_numpy(dtype=np.int64),
            service=pd.factorize(triplets)[0].astype(np.int64),
        )
        log.info("RearView training: %d flows (%d train, %d validation), %d conditions",
                 len(flows), is_train.sum(), (~is_train).sum(), vocab["num_conditions"])
        result = run_training(spark, train_rearview_worker, str(inputs), str(out_dir), params,
                              num_processes=config.num_processes, use_gpu=config.use_gpu)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model_store.save_json(out_dir / "config.json", dataclasses.asdict(config))
    model_store.save_json(out_dir / "normalisation.json", normalisation)
    model_store.save_json(out_dir / "conditions.json", {**vocab, "seen_triplets": seen_triplets})
    model_store.save_json(out_dir / "detector.json", {
        "threshold": result["threshold"], "classifier": config.classifier, "seed": config.seed,
        "num_features": len(features.FEATURE_COLUMNS),
        "training_nights": sorted(flows["date"].astype(str).unique().tolist()),
    })
    return {**result, "conditions": vocab["num_conditions"],
            "triplet_conditions": len(vocab["triplet"]),
            "port_protocol_conditions": len(vocab["port_protocol"]),
            "protocol_conditions": len(vocab["protocol"])}


# ------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class RearViewArtifacts:
    """A loaded RearView model (weights on CPU, classifier refitted from stored embeddings)."""

    config: RearViewConfig
    normalisation: dict
    vocab: dict
    threshold: float
    vae: ConditionalVAE
    kde: dict
    members: tuple[RefinementMember, ...]
    calibration: Calibration
    seen_triplets: frozenset
    decision_level: float


@functools.lru_cache(maxsize=4)
def load_artifacts(artifact_dir: str) -> RearViewArtifacts:
    """Load an artifact directory (safetensors + JSON only); cached per process."""
    path = Path(artifact_dir)
    missing = [name for name in ARTIFACT_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"RearView artifact {path} lacks {missing}")
    config = RearViewConfig(**{**FIELDS_ADDED_LATER, **model_store.load_json(path / "config.json")})
    vocab = model_store.load_json(path / "conditions.json")
    detector = model_store.load_json(path / "detector.json")
    vae = ConditionalVAE(detector["num_features"], vocab["num_conditions"])
    vae.load_state_dict(model_store.load_tensors(path / "vae.safetensors"))
    vae.eval()
    kde = {k: v.numpy() for k, v in model_store.load_tensors(path / "kde.safetensors").items()}
    sage_state = model_store.load_tensors(path / "sage.safetensors")
    embeddings = model_store.load_tensors(path / "classifier_training.safetensors")
    members = []
    for k in range(config.ensemble_size):
        prefix = f"member{k}."
        state = {name[len(prefix):]: value for name, value in sage_state.items() if name.startswith(prefix)}
        encoder = AnomalyWeightedEdgeSAGE(**AnomalyWeightedEdgeSAGE.dims_of(state))
        encoder.load_state_dict(state)
        encoder.eval()
        members.append(RefinementMember.fit(encoder, detector["classifier"], embeddings[f"member{k}"].numpy(),
                                            member_seed(detector["seed"], k)))
    stored = {k: v.numpy() for k, v in model_store.load_tensors(path / "calibration.safetensors").items()}
    calibration = Calibration(stored["p"], stored["cell"], stored["refined"], float(detector["threshold"]))
    seen = frozenset(vocab.pop("seen_triplets"))
    return RearViewArtifacts(config, model_store.load_json(path / "normalisation.json"), vocab,
                             float(detector["threshold"]), vae, kde, tuple(members), calibration, seen,
                             decision_level(calibration, config))


def screen(flows: pd.DataFrame, art: RearViewArtifacts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 1 for ``flows``: ``(condition [N], p [N], latent_mean [N, 16])``."""
    condition = assign_conditions(art.vocab, flows)
    x = features.apply_normalisation(flows, art.normalisation)
    err, norm, mu = screen_flows(art.vae, x, condition)
    return condition, kde_probability(art.kde, condition, err, norm), mu


def _score_rows(flows: pd.DataFrame, p: np.ndarray, refined: np.ndarray, triggered: np.ndarray,
                art: RearViewArtifacts) -> pd.DataFrame:
    cells = fallback_cells(art.vocab, flows, unseen_triplets(art.seen_triplets, flows))
    score, threshold, is_anomaly = decide_flows(p, cells, refined, triggered, art.calibration, art.config,
                                                art.decision_level)
    n = len(flows)
    out = pd.DataFrame({
        "flow_id": flows["flow_id"].astype(str).to_numpy(),
        "src_ip": flows["src_ip"].to_numpy(), "dst_ip": flows["dst_ip"].to_numpy(),
        "src_port": flows["src_port"].astype("int32").to_numpy(),
        "dst_port": flows["dst_port"].astype("int32").to_numpy(),
        "protocol": flows["protocol"].astype("int16").to_numpy(),
        "first_seen_ms": flows["first_seen_ms"].astype("int64").to_numpy(),
        "last_seen_ms": flows["last_seen_ms"].astype("int64").to_numpy(),
        "community_id": flows["community_id"].to_numpy(),
        "score": score, "threshold": np.full(n, threshold), "is_anomaly": is_anomaly,
        "triplet": triplet_keys(flows).to_numpy(),
        "screening_probability": p, "refined_score": refined,
        # which condition screening judged the flow under: "triplet" when its own
        # server triplet had a trained condition, else the pooled fallback it fell to
        "screening_prior": np.asarray(CONDITION_LEVELS, dtype=object)[condition_levels(art.vocab, flows)],
    })
    return _conform_scores(out)


def _conform_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """All ``FLOW_SCORES`` columns in schema order (A2GNN evidence as nulls)."""
    n = len(frame)
    columns = {}
    for field in schema.FLOW_SCORES:
        if field.name in frame.columns:
            columns[field.name] = frame[field.name].to_numpy()
        elif pa.types.is_string(field.type):
            columns[field.name] = np.full(n, None, dtype=object)
        elif pa.types.is_integer(field.type):
            columns[field.name] = pd.array([pd.NA] * n, dtype="Int64")
        else:
            columns[field.name] = np.full(n, np.nan)
    return pd.DataFrame(columns)


def score_window_span(flows: pd.DataFrame, art: RearViewArtifacts, num_flows: int, first_window: int,
                      stop_window: int) -> pd.DataFrame:
    """Score rows (``FLOW_SCORES`` columns, replay order) of the flows whose home window is
    one of windows ``[first_window, stop_window)`` of a ``num_flows``-flow stream.

    ``flows``: the stream's flows ``[first_window * evict, end of window stop_window - 1)``
    in replay order, i.e. every flow those windows hold (their full FIFO context). The
    whole stream is the span ``[0, window_count)``; a Spark task gets a slice of windows,
    and since each flow's embedding comes from its home window alone, the slices together
    give exactly the whole-stream result.
    """
    config = art.config
    evict = eviction_count(config.queue_size, config.evict_fraction)
    bounds = window_bounds(num_flows, config.queue_size, evict)[first_window:stop_window]
    if not len(bounds):
        return _score_rows(flows.iloc[:0], np.zeros(0), np.zeros(0), np.zeros(0, bool), art)
    offset = int(bounds[0, 0])
    if len(flows) != int(bounds[-1, 1]) - offset:
        raise ValueError(f"windows [{first_window}, {stop_window}) hold flows [{offset}, {bounds[-1, 1]}), "
                         f"got {len(flows)} flows")
    local_bounds = bounds - offset
    home = home_window(num_flows, config.queue_size, evict)[offset:offset + len(flows)] - first_window
    mine = (home >= 0) & (home < len(bounds))
    _, p, mu = screen(flows, art)
    edges = edge_features(mu, unseen_triplets(art.seen_triplets, flows))
    windows = stream_windows(flows["src_ip"].to_numpy(), flows["dst_ip"].to_numpy(), edges, p,
                             config.queue_size, evict, bounds=local_bounds, **burst_inputs(flows, config))
    refined = ensemble_refined(art.members, [
        embed_windows(windows, len(flows), member.encoder, config.queue_size, evict, home=home)[mine]
        for member in art.members])
    triggered = triggered_windows(p, config.queue_size, evict, config.suspicious_p, local_bounds, home)[mine]
    return _score_rows(flows[mine].reset_index(drop=True), p[mine], refined, triggered, art)


def score_flows_local(flows: pd.DataFrame, artifact_dir: str | Path) -> pd.DataFrame:
    """Single-process RearView scoring of one stream of flows (the reference for Spark).

    Returns ``FLOW_SCORES`` columns, rows in replay order.
    """
    art = load_artifacts(str(artifact_dir))
    flows = order_flows(flows)
    evict = eviction_count(art.config.queue_size, art.config.evict_fraction)
    return score_window_span(flows, art, len(flows), 0, window_count(len(flows), art.config.queue_size, evict))


def score_task(artifact_dir: str, num_flows: int, windows_per_task: int, frame: pd.DataFrame) -> pd.DataFrame:
    """``applyInPandas`` body: one task's span of windows (its flows plus their FIFO
    context, column ``task`` = span number) in, its home flows' score rows out."""
    art = load_artifacts(artifact_dir)
    torch.set_num_threads(art.config.cpu_threads)
    evict = eviction_count(art.config.queue_size, art.config.evict_fraction)
    windows = window_count(num_flows, art.config.queue_size, evict)
    first = int(frame["task"].iloc[0]) * windows_per_task
    frame = frame.sort_values("flow_index", kind="mergesort").reset_index(drop=True)
    return score_window_span(frame, art, num_flows, first, min(first + windows_per_task, windows))
