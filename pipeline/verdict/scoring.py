"""The verdict for one night from its flows' evidence (pure pandas; Spark stays in
:mod:`pipeline.verdict.tables`).

``night`` frames (one row per flow) carry: the flow key columns of ``flow_scores``;
the entity keys ``service`` and ``host_pair`` (:mod:`pipeline.relationships`); the history
counts of :func:`pipeline.relationships.flow_history` (``*_nights_seen``,
``history_nights``); A2GNN's ``a2gnn_score``, ``atom_id``, ``atom_size``,
``atom_density``, ``nearest_anchor``, ``anchor_distance``; RearView's ``triplet``,
``screening_probability``, ``refined_score``, ``screening_prior``. Model columns are null
where a detector did not score the flow; ``models_run`` says which detectors ran at all.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from pipeline.store import schema
from pipeline.verdict import combine, evidence
from pipeline.verdict.config import VerdictConfig
from pipeline.verdict.incidents import build_incidents


@dataclasses.dataclass(frozen=True)
class Reference:
    """Benign calibration of every piece, fitted on the validation nights.

    ``patterns``: history pattern frequencies (``None``: no validation night had history);
    ``volumes``: new-relationship volumes of the validation nights; ``a2gnn``: the A2GNN
    artifact's calibration (``train_scores``, ``atom_scores``, ``flow_threshold``,
    ``atom_threshold``), ``None`` when A2GNN is not run; ``rearview``: RearView's benign
    validation ``p`` and ``refined``, ``None`` when not run; ``threshold``: the
    ``validation`` rule's alarm level in score units; ``tail_distance``: the validation
    nights' budget tail in robust scale units (``night_null_validation_shape``);
    ``validation_flows``: flows they were set on; ``coordination_flows``: ``k`` of
    :func:`coordinated_flows` (one more than the largest number of gate-passing flows of
    one host pair or one service on any validation night, at least
    ``config.coordination_min_flows``).
    """

    patterns: evidence.PatternModel | None
    volumes: np.ndarray
    a2gnn: dict | None
    rearview: dict | None
    threshold: float = float("nan")
    tail_distance: float = float("nan")
    validation_flows: int = 0
    coordination_flows: int = 0

    def summary(self) -> dict:
        """JSON-able record of the calibration (written next to the scores)."""
        return {
            "patterns": self.patterns.to_dict() if self.patterns else None,
            "new_relationships": int(len(self.volumes)),
            "volume_quantiles": (np.quantile(self.volumes, [0.5, 0.9, 0.99, 1.0]).tolist()
                                 if len(self.volumes) else None),
            "a2gnn_reference_flows": None if self.a2gnn is None else int(len(self.a2gnn["train_scores"])),
            "rearview_reference_flows": None if self.rearview is None else int(len(self.rearview["p"])),
            "threshold_score": self.threshold, "tail_distance": self.tail_distance,
            "validation_flows": self.validation_flows, "coordination_flows": self.coordination_flows,
        }


def evidence_pieces(night: pd.DataFrame, reference: Reference, config: VerdictConfig,
                    models_run: tuple[str, ...]) -> tuple[np.ndarray, list[list[str]], list[list[str]], pd.Series]:
    """``(pieces [N, len(PIECES)], lacking [N], notes [N], history_pattern [N])``."""
    n = len(night)
    pieces = np.full((n, len(evidence.PIECES)), np.nan)
    column = {name: k for k, name in enumerate(evidence.PIECES)}
    lacking: list[list[str]] = [[] for _ in range(n)]
    notes: list[list[str]] = [[] for _ in range(n)]
    patterns = pd.Series([None] * n, index=night.index, dtype=object)

    has_history = night["history_nights"].fillna(0).to_numpy() > 0 if n else np.zeros(0, bool)
    if has_history.any():
        patterns[has_history] = evidence.history_patterns(night.loc[has_history], config.local_networks)
    if reference.patterns is not None:
        pieces[has_history, column["history"]] = reference.patterns.p_values(patterns[has_history])
        volume = evidence.relationship_volume(night, config.local_networks)
        tail = evidence.pareto_tail if config.volume_tail == "pareto" else evidence.empirical_tail
        pieces[has_history, column["volume"]] = tail(reference.volumes, volume[has_history])
    for row in np.flatnonzero(~has_history if reference.patterns is not None else np.ones(n, bool)):
        lacking[row].append("history")

    if "a2gnn" in models_run and reference.a2gnn is not None:
        cal = reference.a2gnn
        pieces[:, column["a2gnn"]] = evidence.a2gnn_tail(
            night["a2gnn_score"].to_numpy(dtype=np.float64, na_value=np.nan), cal["flow_threshold"],
            cal["atom_threshold"], cal["train_scores"], cal["atom_scores"])
    if "rearview" in models_run and reference.rearview is not None:
        cal = reference.rearview
        screening = evidence.empirical_tail(
            cal["p"], night["screening_probability"].to_numpy(dtype=np.float64, na_value=np.nan))
        if config.screening_unseen_triplets != "fallback":
            judged_under = night["screening_prior"].fillna("triplet").to_numpy()
            kept = ("triplet",) if config.screening_unseen_triplets == "no_prior" else ("triplet", "port_protocol")
            no_prior = ~np.isin(judged_under, kept)
            screening[no_prior] = np.nan
            for row in np.flatnonzero(no_prior):
                notes[row].append("screening: no prior")
        pieces[:, column["screening"]] = screening
        pieces[:, column["refined"]] = evidence.empirical_tail(
            cal["refined"], night["refined_score"].to_numpy(dtype=np.float64, na_value=np.nan))
    missing = {
        "a2gnn": (np.ones(n, bool) if "a2gnn" not in models_run or reference.a2gnn is None
                  else night["a2gnn_score"].isna().to_numpy()),
        "rearview": (np.ones(n, bool) if "rearview" not in models_run or reference.rearview is None
                     else (night["screening_probability"].isna() & night["refined_score"].isna()).to_numpy()),
    }
    for model, rows in missing.items():
        for row in np.flatnonzero(rows):
            lacking[row].append(model)
    return pieces, lacking, notes, patterns


def fit_reference(validation: list[pd.DataFrame], a2gnn: dict | None, rearview: dict | None,
                  config: VerdictConfig, models_run: tuple[str, ...]) -> Reference:
    """Calibrate every piece on the benign validation nights, then set the threshold.

    ``validation``: night frames of the training window (each with its own history as
    of its night, scored by the same model versions). Nights without history calibrate
    nothing about history; the threshold uses every validation flow.
    """
    with_history = [v.loc[v["history_nights"] > 0] for v in validation]
    with_history = [v for v in with_history if len(v)]
    patterns = None
    volumes = np.zeros(0)
    if with_history:
        patterns = evidence.PatternModel.fit(
            pd.concat([evidence.history_patterns(v, config.local_networks) for v in with_history]),
            config.pattern_pseudocount)
        volumes = np.concatenate([evidence.new_relationship_volumes(v, config.local_networks) for v in with_history])
    reference = Reference(patterns, volumes, a2gnn, rearview)
    nights = [v for v in validation if len(v)]
    evidence_of = [evidence_pieces(v, reference, config, models_run) for v in nights]
    per_night = [combine.fisher(pieces) for pieces, _, _, _ in evidence_of]
    combined = np.concatenate(per_night) if per_night else np.zeros(0)
    threshold = combine.threshold_score(combined, config.false_alarm_budget)
    largest = 0
    if config.coordination != "off":
        largest = max((int(relationship_counts(v, combine.score_of(c) > threshold, config.coordination,
                                               night_patterns).max(initial=0))
                       for v, c, (_, _, _, night_patterns) in zip(nights, per_night, evidence_of)), default=0)
    return dataclasses.replace(
        reference, threshold=threshold,
        tail_distance=combine.tail_distance([combine.z_of(c) for c in per_night], config.false_alarm_budget),
        validation_flows=int(len(combined)),
        coordination_flows=max(config.coordination_min_flows, largest + 1))


def relationship_counts(night: pd.DataFrame, passing: np.ndarray, newness: str = "all",
                        patterns: pd.Series | None = None) -> np.ndarray:
    """``[N]`` per flow: how many ``passing`` flows of the night share its host pair or its
    service, whichever is larger (0 for a flow that does not pass).

    ``newness``: ``all`` counts every relationship; ``new`` counts a host pair (a service)
    only where it was seen on no earlier night; ``new_pattern`` only where the flow's
    history pattern (``patterns [N]``, :func:`pipeline.verdict.evidence.history_patterns`,
    ``None`` for a flow without history) calls it new: a joining local device's pairs are
    not. A night without history has nothing new.
    """
    passing = np.asarray(passing, dtype=bool)
    counts = np.zeros(len(night), dtype=np.int64)
    if not passing.any():
        return counts
    new = {"host_pair": np.ones(len(night), bool), "service": np.ones(len(night), bool)}
    if newness == "new":
        has_history = night["history_nights"].fillna(0).to_numpy() > 0
        new = {key: has_history & (night[f"{key}_nights_seen"].fillna(-1).to_numpy() == 0) for key in new}
    elif newness == "new_pattern":
        text = pd.Series(patterns, dtype=object).fillna("").to_numpy(dtype=str)
        new = {"host_pair": np.char.find(text, "/new_pair/") >= 0,
               "service": np.char.startswith(text, "new_service/")}
    for key in ("host_pair", "service"):
        members = passing & new[key]
        if not members.any():
            continue
        keys = pd.Series(night[key].to_numpy()[members])
        counts[members] = np.maximum(counts[members], keys.map(keys.value_counts()).to_numpy())
    return counts


def coordinated_flows(night: pd.DataFrame, score: np.ndarray, reference: Reference,
                      config: VerdictConfig, patterns: pd.Series) -> np.ndarray:
    """``[N]`` flows of a coordinated relationship: past the loose gate (the ``validation``
    rule's threshold) with at least ``reference.coordination_flows`` such flows sharing
    their host pair or their service tonight. Coordinated attacks (a scan, a flood, a
    brute force, a beacon) repeat one relationship many times; benign novelty rarely does.
    ``config.coordination`` says which relationships count (:func:`relationship_counts`);
    ``patterns``: the flows' history patterns."""
    if reference.coordination_flows <= 0 or not np.isfinite(reference.threshold):
        return np.zeros(len(night), dtype=bool)
    counts = relationship_counts(night, score > reference.threshold, config.coordination, patterns)
    return counts >= reference.coordination_flows


def alarm_threshold(combined: np.ndarray, reference: Reference, config: VerdictConfig) -> float:
    """The night's threshold in score units under ``config.threshold_rule``, at
    ``false_alarm_budget * single_flow_budget_share`` when coordination is on."""
    if config.threshold_rule == "validation" or len(combined) < config.min_night_flows:
        return reference.threshold
    budget = config.false_alarm_budget
    if config.coordination != "off":
        budget *= config.single_flow_budget_share
    gaussian = float(combine.stats.norm.isf(budget))
    if config.threshold_rule == "night_lfdr":
        return combine.lfdr_threshold_score(combined, budget, config.lfdr_level)
    if config.threshold_rule == "night_null_upper":
        return combine.night_upper_threshold_score(combined, gaussian, budget)
    distance = gaussian if config.threshold_rule == "night_null" else reference.tail_distance
    return combine.night_threshold_score(combined, distance, budget)


def score_night(night: pd.DataFrame, reference: Reference, config: VerdictConfig, models_run: tuple[str, ...],
                date: str, model_version: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(flow_scores rows [N], incidents)`` of one night (``pipeline.store.schema`` columns)."""
    pieces, lacking, notes, patterns = evidence_pieces(night, reference, config, models_run)
    combined = combine.fisher(pieces)
    score = combine.score_of(combined)
    threshold = alarm_threshold(combined, reference, config)
    flagged = score > threshold
    if config.coordination != "off":
        coordinated = coordinated_flows(night, score, reference, config, patterns) & ~flagged
        flagged = flagged | coordinated
        for row in np.flatnonzero(coordinated):
            notes[row].append("coordinated relationship")
    strengths = pd.DataFrame(-np.log10(np.clip(np.nan_to_num(pieces, nan=1.0), combine.P_FLOOR, 1.0)),
                             columns=list(evidence.PIECES), index=night.index)
    frame = night.assign(score=score)
    incident_ids, incidents = build_incidents(frame, flagged, date, config.incident_gap_s * 1000.0, strengths)
    out = pd.DataFrame({name: night[name].to_numpy() for name in
                        ("flow_id", "src_ip", "dst_ip", "src_port", "dst_port", "protocol", "first_seen_ms",
                         "last_seen_ms", "community_id", "atom_id", "atom_size", "atom_density", "triplet",
                         "screening_probability", "refined_score", "screening_prior")})
    out["score"] = score
    out["threshold"] = threshold
    out["is_anomaly"] = flagged
    for k, name in enumerate(evidence.PIECES):
        out[f"p_{name}"] = pieces[:, k]
    out["history_pattern"] = patterns.to_numpy()
    for column in ("service_nights_seen", "service_days_since_first", "host_pair_nights_seen",
                   "host_pair_days_since_first"):
        out[column] = pd.array(night[column], dtype="Int32") if column in night else pd.NA
    out["evidence"] = combine.evidence_text(pieces, evidence.PIECES, lacking, notes)
    out["incident_id"] = incident_ids.to_numpy()
    out["model_version"] = model_version
    columns = [f.name for f in schema.FLOW_SCORES]
    for name in columns:
        if name not in out.columns:
            out[name] = None
    return out[columns + ["model_version"]], incidents
