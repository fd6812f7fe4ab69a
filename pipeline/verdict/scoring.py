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
    ``validation_flows``: flows they were set on.
    """

    patterns: evidence.PatternModel | None
    volumes: np.ndarray
    a2gnn: dict | None
    rearview: dict | None
    threshold: float = float("nan")
    tail_distance: float = float("nan")
    validation_flows: int = 0

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
            "validation_flows": self.validation_flows,
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
    per_night = [combine.fisher(evidence_pieces(v, reference, config, models_run)[0]) for v in validation if len(v)]
    combined = np.concatenate(per_night) if per_night else np.zeros(0)
    return dataclasses.replace(
        reference, threshold=combine.threshold_score(combined, config.false_alarm_budget),
        tail_distance=combine.tail_distance([combine.z_of(c) for c in per_night], config.false_alarm_budget),
        validation_flows=int(len(combined)))


def alarm_threshold(combined: np.ndarray, reference: Reference, config: VerdictConfig) -> float:
    """The night's threshold in score units under ``config.threshold_rule``."""
    if config.threshold_rule == "validation" or len(combined) < config.min_night_flows:
        return reference.threshold
    distance = (float(combine.stats.norm.isf(config.false_alarm_budget)) if config.threshold_rule == "night_null"
                else reference.tail_distance)
    return combine.night_threshold_score(combined, distance, config.false_alarm_budget)


def score_night(night: pd.DataFrame, reference: Reference, config: VerdictConfig, models_run: tuple[str, ...],
                date: str, model_version: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(flow_scores rows [N], incidents)`` of one night (``pipeline.store.schema`` columns)."""
    pieces, lacking, notes, patterns = evidence_pieces(night, reference, config, models_run)
    combined = combine.fisher(pieces)
    score = combine.score_of(combined)
    threshold = alarm_threshold(combined, reference, config)
    flagged = score > threshold
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
