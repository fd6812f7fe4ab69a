"""RearView scoring in one process: an artifact and a span of FIFO windows -> flow scores.

:func:`load_artifacts` reads the artifact (and refits the classifiers, deterministically);
:func:`score_window_span` scores the flows whose home window lies in a span, given the FIFO
context before it; :func:`score_task` is what each Spark task of
``pipeline.detectors.rearview.scoring.score_rearview`` runs, and :func:`score_flows_local`
the single-process equivalent it is tested against.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from models.kde import kde_probability
from models.rearview_cvae import ConditionalVAE
from models.rearview_sage import AnomalyWeightedEdgeSAGE
from models.rearview_training import screen_flows
from pipeline.detectors import features
from pipeline.detectors.rearview.conditions import (
    CONDITION_LEVELS, assign_conditions, fallback_cells, order_flows, triplet_keys,
    unseen_triplets,
)
from pipeline.detectors.rearview.config import FIELDS_ADDED_LATER, RearViewConfig
from pipeline.detectors.rearview.decision import (
    Calibration, RefinementMember, decide_flows, decision_level, ensemble_refined, member_seed, triggered_windows,
)
from pipeline.detectors.rearview.session import burst_inputs, edge_features, embed_windows, stream_windows
from pipeline.detectors.rearview.windows import eviction_count, home_window, window_bounds, window_count
from pipeline.store import model_store, schema

log = logging.getLogger(__name__)


ARTIFACT_FILES = (
    "config.json", "normalisation.json", "conditions.json", "detector.json",
    "vae.safetensors", "kde.safetensors", "sage.safetensors", "classifier_training.safetensors",
    "calibration.safetensors",
)


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


def benign_calibration(artifact_dir: str | Path) -> dict:
    """The benign validation flows' screening ``p [V]``, fallback ``cell [V]`` and
    ``refined [V]`` scores stored with the artifact (what decisions, and the verdict's
    RearView evidence, are calibrated on)."""
    stored = model_store.load_tensors(Path(artifact_dir) / "calibration.safetensors")
    return {name: stored[name].numpy() for name in ("p", "cell", "refined")}


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
    stored = benign_calibration(path)
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
        # (a fallback cell is 2 * condition level + novel)
        "screening_prior": np.asarray(CONDITION_LEVELS, dtype=object)[cells // 2],
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
