"""A2GNN scoring: a night's flows, atoms and edges + an artifact -> flow scores.

Scoring (:func:`score_a2gnn`): every flow gets an atom key (its atom, or a singleton),
its intra-atom neighbours and a bucket ``hash(atom) mod B``; ``groupBy(bucket)
.applyInPandas`` scores each bucket with the model's weights and anchors broadcast, so a
bucket holds whole atoms and one code path serves small and big nights.

"""
from __future__ import annotations
import logging
import math
from pathlib import Path
import numpy as np
import pandas as pd
# torch and PyTorch Geometric (models.a2gnn_training) are imported inside the functions
# that train or embed: the driver of a scoring run never needs them (~8 s to import).
from models.a2gnn_config import ANCHORS_FILE, WEIGHTS_FILE, A2GNNConfig, member_dir
from pipeline.detectors import features
from pipeline.store import model_store, schema
from pipeline.detectors.a2gnn.graphs import _flows_with_atoms, _intra_atom_edges
from pipeline.detectors.a2gnn.training import CONFIG_FILE, NORMALISATION_FILE, THRESHOLD_FILE


log = logging.getLogger(__name__)


FLOWS_PER_BUCKET = 10_000
"""Target flows per scoring group (bounds a Python worker's memory). Groups hold between
half and all of it: at 50,000 a worker's scoring peak rose ~300 MiB from a 0.25 GB night
(27k-flow groups) to a 1 GB one (42k); at 10,000 it is the same on every night."""


# ------------------------------------------------------------------------ scoring
def _member_thresholds(thresholds: dict) -> dict:
    """One member's final, flow and atom thresholds (older artifacts: flow = final, no atom term)."""
    return {
        "threshold": float(thresholds["threshold"]),
        "flow_threshold": float(thresholds.get("flow_threshold", thresholds["threshold"])),
        "atom_threshold": float(thresholds.get("atom_threshold", 0.0)),
    }


def _load_member(member_path: Path, thresholds: dict) -> dict:
    from safetensors.numpy import load_file

    anchors = load_file(str(member_path / ANCHORS_FILE))
    return {
        **_member_thresholds(thresholds),
        "weights": load_file(str(member_path / WEIGHTS_FILE)),
        "anchors": anchors["anchors"],
        "scale": anchors.get("scale", np.ones(anchors["anchors"].shape[0])),
    }


def load_artifact(artifact_dir: Path) -> dict:
    """Everything scoring needs, as plain data (JSON + safetensors; no code is run).

    Member 0's weights, anchors and thresholds at the top level (the single-model
    artifact), and ``members``: every member's, member 0 first.
    """
    artifact_dir = Path(artifact_dir)
    meta = model_store.load_json(artifact_dir / CONFIG_FILE)
    threshold = model_store.load_json(artifact_dir / THRESHOLD_FILE)
    size = int(meta["config"].get("ensemble_size", 1))
    listed = threshold.get("members") or [threshold]
    if len(listed) != size:
        raise ValueError(f"artifact {artifact_dir}: {len(listed)} member thresholds for ensemble_size {size}")
    members = [_load_member(artifact_dir / member_dir(k), listed[k]) for k in range(size)]
    return {"config": meta["config"], "in_dim": int(meta["in_dim"]),
            "stats": model_store.load_json(artifact_dir / NORMALISATION_FILE), **members[0], "members": members}


def benign_calibration(artifact_dir: Path) -> dict:
    """Member 0's benign training calibration statistics and thresholds, without weights:
    ``train_scores [n]`` (flow statistics), ``atom_scores [a]``, ``flow_threshold``,
    ``atom_threshold`` (what the verdict turns A2GNN's score into a tail probability with)."""
    from safetensors.numpy import load_file

    artifact_dir = Path(artifact_dir)
    threshold = model_store.load_json(artifact_dir / THRESHOLD_FILE)
    member = _member_thresholds((threshold.get("members") or [threshold])[0])
    anchors = load_file(str(artifact_dir / member_dir(0) / ANCHORS_FILE))
    return {"train_scores": anchors["train_scores"].astype(np.float64),
            "atom_scores": anchors.get("atom_scores", np.zeros(0)).astype(np.float64),
            "flow_threshold": member["flow_threshold"], "atom_threshold": member["atom_threshold"]}


_MODEL_CACHE: dict[tuple[int, int], object] = {}


def _model_from(artifact: dict, member: int = 0):
    """Build (once per worker process, artifact and member) the eval-mode model from plain weights."""
    import torch

    from models.a2gnn_training import build_model

    key = (id(artifact["members"][0]["weights"]), member)
    if key not in _MODEL_CACHE:
        if len(_MODEL_CACHE) >= 16:
            _MODEL_CACHE.clear()
        config = A2GNNConfig.from_dict(artifact["config"])
        model = build_model(artifact["in_dim"], config)
        weights = artifact["members"][member]["weights"]
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        _MODEL_CACHE[key] = model.eval()
    return _MODEL_CACHE[key]


def score_frame(pdf: pd.DataFrame, artifact: dict, model_version: str) -> pd.DataFrame:
    """Score whole atoms in ``pdf`` (one row per flow, with ``atom_key`` and
    ``neighbours`` = intra-atom neighbour flow ids) -> FLOW_SCORES rows.
    """
    import torch

    from models.a2gnn_training import AtomGraph, detector_scores, embed, ensemble_scores

    torch.set_num_threads(1)
    columns = [f.name for f in schema.FLOW_SCORES]
    if pdf.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    pdf = pdf.sort_values(["atom_key", "flow_id"], kind="stable").reset_index(drop=True)
    config = A2GNNConfig.from_dict(artifact["config"])
    atom, _ = pd.factorize(pdf["atom_key"], sort=True)
    position = pd.Series(np.arange(len(pdf)), index=pdf["flow_id"].to_numpy())
    lengths = pdf["neighbours"].map(lambda n: 0 if n is None else len(n)).to_numpy()
    src = np.repeat(np.arange(len(pdf)), lengths)
    flat = [f for n in pdf["neighbours"] if n is not None for f in n]
    dst = position.reindex(flat).to_numpy()
    known = ~np.isnan(dst) if dst.size else np.zeros(0, dtype=bool)
    edges = np.stack([src[known], dst[known].astype(np.int64)]) if known.any() else np.zeros((2, 0), np.int64)
    graph = AtomGraph(features.apply_normalisation(pdf, artifact["stats"]), atom, edges)
    members = artifact["members"]
    scored = [detector_scores(embed(_model_from(artifact, k), graph, config), atom, member, config)
              for k, member in enumerate(members)]
    distance, index = scored[0]["distance"], scored[0]["index"]  # evidence: member 0's anchor
    if len(members) == 1:
        score, threshold = scored[0]["score"], artifact["threshold"]
    else:
        score = ensemble_scores([s["score"] for s in scored], [m["threshold"] for m in members])
        threshold = 1.0
    out = pdf[["flow_id", "src_ip", "dst_ip", "src_port", "dst_port", "protocol",
               "first_seen_ms", "last_seen_ms", "community_id", "atom_key", "atom_size",
               "atom_density"]].copy()
    out["model_version"] = model_version
    out["score"] = score
    out["threshold"] = threshold
    out["is_anomaly"] = score > threshold
    out["atom_id"] = pdf["atom_id"]  # null for a flow the atoms table does not know
    out = out.drop(columns=["atom_key"])
    sizes = np.bincount(atom)
    out["atom_size"] = out["atom_size"].fillna(pd.Series(sizes[atom])).astype("int64")
    out["atom_density"] = out["atom_density"].astype("float64").fillna(0.0)
    out["nearest_anchor"] = index
    out["anchor_distance"] = distance
    for column in columns:  # RearView's and the verdict's evidence: null on A2GNN rows
        if column not in out.columns:
            out[column] = None
    return out[columns]


def score_a2gnn(spark, flows_df, atoms_df, edges_df, artifact_dir: Path, model_version: str):
    """Score every flow of a night: a Spark DataFrame with the FLOW_SCORES columns.

    ``score`` is the detector score of :func:`models.a2gnn_training.detector_scores`
    (with ``structure="none"`` the, optionally radius-scaled, distance to the nearest
    training anchor; with ``"atom_shift"`` the larger of the flow and atom statistics
    over their EVT thresholds), ``is_anomaly`` is ``score > threshold``;
    ``anchor_distance`` is always the raw distance to ``nearest_anchor``.
    """
    from pyspark.sql import functions as F

    artifact = load_artifact(Path(artifact_dir))
    if artifact["in_dim"] != len(features.FEATURE_COLUMNS):
        raise ValueError(f"artifact {artifact_dir} expects {artifact['in_dim']} features, "
                         f"this code has {len(features.FEATURE_COLUMNS)}")
    broadcast = spark.sparkContext.broadcast(artifact)
    neighbours = _intra_atom_edges(edges_df, atoms_df).groupBy("src_flow").agg(
        F.sort_array(F.collect_list("dst_flow")).alias("neighbours")
    ).withColumnRenamed("src_flow", "flow_id")
    rows = _flows_with_atoms(flows_df, atoms_df).join(neighbours, "flow_id", "left")
    buckets = max(1, math.ceil(flows_df.count() / FLOWS_PER_BUCKET))
    rows = rows.withColumn("bucket", F.pmod(F.xxhash64("atom_key"), F.lit(buckets)))

    def score_bucket(pdf: pd.DataFrame) -> pd.DataFrame:
        return score_frame(pdf, broadcast.value, model_version)

    return rows.groupBy("bucket").applyInPandas(score_bucket, schema=schema.spark_schema("flow_scores"))
