"""A2GNN pipeline glue: Spark tables -> atom graphs -> training / scoring.

Training (:func:`train_a2gnn`): for every training night, Spark joins the flows with
their atoms and keeps the flow--flow edges (``SEMANTIC_RELATIONSHIPS``: relay, similarity,
fan-in) whose endpoints share an atom (the isolation mask drops the others anyway). The
nights are stacked into one :class:`~models.a2gnn_training.AtomGraph` (atom keys prefixed
by the date, so atoms of different nights stay apart), features are standardised with
statistics fitted on the training window (``pipeline.features``), and the graph is saved
as safetensors and trained through ``TorchDistributor`` (``pipeline.distributed_training``).
Artifact files:

* ``weights.safetensors``   the model's state dict;
* ``anchors.safetensors``   ``anchors [A, out_dim]``, ``scale [A]`` (per-anchor distance
  unit), ``train_scores [n]`` and ``atom_scores [a]`` (calibration statistics);
* ``config.json``           :class:`A2GNNConfig` + input width and feature columns;
* ``normalisation.json``    feature statistics of the training window;
* ``threshold.json``        final threshold, the flow and atom EVT thresholds and their
  parameters;
* ``metrics.json``          training metrics.

Scoring (:func:`score_a2gnn`): every flow gets an atom key (its atom, or a singleton),
its intra-atom neighbours and a bucket ``hash(atom) mod B``; ``groupBy(bucket)
.applyInPandas`` scores each bucket with the model's weights and anchors broadcast, so a
bucket holds whole atoms and one code path serves small and big nights.
"""
from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

# torch and PyTorch Geometric (models.a2gnn_training) are imported inside the functions
# that train or embed: the driver of a scoring run never needs them (~8 s to import).
from models.a2gnn_config import ANCHORS_FILE, WEIGHTS_FILE, A2GNNConfig, member_dir
from pipeline import features, model_store, schema
from pipeline.graph import SEMANTIC_RELATIONSHIPS

log = logging.getLogger(__name__)

FLOW_VERTEX_PREFIX = "flow:"
SOLO_PREFIX = "solo:"
FLOWS_PER_BUCKET = 10_000
"""Target flows per scoring group (bounds a Python worker's memory). Groups hold between
half and all of it: at 50,000 a worker's scoring peak rose ~300 MiB from a 0.25 GB night
(27k-flow groups) to a 1 GB one (42k); at 10,000 it is the same on every night."""

CONFIG_FILE = "config.json"
NORMALISATION_FILE = "normalisation.json"
THRESHOLD_FILE = "threshold.json"
METRICS_FILE = "metrics.json"


# ------------------------------------------------------------------ Spark-side joins
def _flows_with_atoms(flows_df, atoms_df):
    """Flows (key, times, features) left-joined with their atom; ``atom_key`` never null."""
    from pyspark.sql import functions as F

    key_columns = ["flow_id", "src_ip", "dst_ip", "src_port", "dst_port", "protocol",
                   "first_seen_ms", "last_seen_ms", "community_id"]
    atoms = atoms_df.select("flow_id", "atom_id", "atom_size", "atom_density").dropDuplicates(["flow_id"])
    return (
        flows_df.select(*key_columns, *features.FEATURE_COLUMNS)
        .join(atoms, "flow_id", "left")
        .withColumn("atom_key", F.coalesce(F.col("atom_id"),
                                           F.concat(F.lit(SOLO_PREFIX), F.col("flow_id"))))
    )


def _intra_atom_edges(edges_df, atoms_df):
    """Directed pairs ``(src_flow, dst_flow)``, both directions, same atom, no self loops."""
    from pyspark.sql import functions as F

    prefix_len = len(FLOW_VERTEX_PREFIX)
    semantic = (
        edges_df.filter(F.col("relationship").isin(*SEMANTIC_RELATIONSHIPS))
        .filter(F.col("src").startswith(FLOW_VERTEX_PREFIX) & F.col("dst").startswith(FLOW_VERTEX_PREFIX))
        .select(F.expr(f"substring(src, {prefix_len + 1})").alias("a"),
                F.expr(f"substring(dst, {prefix_len + 1})").alias("b"))
    )
    both = semantic.union(semantic.select(F.col("b").alias("a"), F.col("a").alias("b")))
    atoms = atoms_df.select("flow_id", "atom_id")
    return (
        both.filter(F.col("a") != F.col("b"))
        .join(atoms.withColumnRenamed("flow_id", "a").withColumnRenamed("atom_id", "atom_a"), "a")
        .join(atoms.withColumnRenamed("flow_id", "b").withColumnRenamed("atom_id", "atom_b"), "b")
        .filter(F.col("atom_a") == F.col("atom_b"))
        .select(F.col("a").alias("src_flow"), F.col("b").alias("dst_flow"))
        .distinct()
    )


# ----------------------------------------------------------------------- training
def _night_tables(night: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One night's flows (sorted by flow id) and intra-atom edges as pandas."""
    flows = _flows_with_atoms(night["flows"], night["atoms"]).select(
        "flow_id", "atom_key", *features.FEATURE_COLUMNS
    ).toPandas()
    flows = flows.drop_duplicates("flow_id").sort_values("flow_id", kind="stable").reset_index(drop=True)
    edges = _intra_atom_edges(night["edges"], night["atoms"]).toPandas()
    edges = edges.sort_values(["src_flow", "dst_flow"], kind="stable").reset_index(drop=True)
    return flows, edges


def build_training_graph(nights: list[tuple[str, pd.DataFrame, pd.DataFrame]], stats: dict) -> AtomGraph:
    """Stack nights ``(date, flows, edges)`` into one graph with atoms keyed by date."""
    from models.a2gnn_training import AtomGraph

    xs, atom_keys, sources, targets = [], [], [], []
    offset = 0
    for date, flows, edges in nights:
        xs.append(features.apply_normalisation(flows, stats))
        atom_keys.append(date + "|" + flows["atom_key"].astype(str))
        position = pd.Series(np.arange(len(flows)) + offset, index=flows["flow_id"].to_numpy())
        src = position.reindex(edges["src_flow"].to_numpy()).to_numpy()
        dst = position.reindex(edges["dst_flow"].to_numpy()).to_numpy()
        known = ~(np.isnan(src) | np.isnan(dst))
        sources.append(src[known].astype(np.int64))
        targets.append(dst[known].astype(np.int64))
        offset += len(flows)
    keys = pd.concat(atom_keys, ignore_index=True)
    atom, _ = pd.factorize(keys, sort=True)
    return AtomGraph(
        np.concatenate(xs) if xs else np.zeros((0, len(features.FEATURE_COLUMNS)), np.float32),
        atom,
        np.stack([np.concatenate(sources), np.concatenate(targets)]) if sources else np.zeros((2, 0)),
    )


def train_a2gnn(spark, train_nights: list[dict], config: A2GNNConfig, out_dir: Path) -> dict:
    """Train A2GNN on ``train_nights`` and write the artifact files into ``out_dir``.

    Each night is ``{"date", "flows", "atoms", "edges"}`` (Spark DataFrames of the
    ``flows``, ``atoms`` and ``graph_edges`` tables). Returns JSON-able training metrics.
    Raises ``ValueError`` when the nights hold no flow.
    """
    from models.a2gnn_training import distributed_train, save_graph
    from pipeline.distributed_training import run_training

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not train_nights:
        raise ValueError("train_a2gnn needs at least one training night")
    nights = []
    for night in sorted(train_nights, key=lambda n: n["date"]):
        flows, edges = _night_tables(night)
        log.info("A2GNN training night %s: %d flows, %d intra-atom edges (directed)",
                 night["date"], len(flows), len(edges))
        nights.append((str(night["date"]), flows, edges))
    all_flows = pd.concat([flows for _, flows, _ in nights], ignore_index=True)
    if all_flows.empty:
        raise ValueError(f"no flows on training nights {[d for d, _, _ in nights]}")
    stats = features.fit_normalisation(all_flows)
    graph = build_training_graph(nights, stats)
    with tempfile.TemporaryDirectory(prefix="a2gnn-train-") as tmp:
        graph_path = Path(tmp) / "graph.safetensors"
        save_graph(graph_path, graph)
        metrics = run_training(
            spark, distributed_train, str(graph_path), config.to_dict(), str(out_dir),
            num_processes=config.num_processes, use_gpu=config.use_gpu, local_mode=config.local_mode,
        )
    metrics = dict(metrics)
    metrics["train_dates"] = [d for d, _, _ in nights]
    metrics["train_edges"] = int(graph.edge_index.shape[1])
    model_store.save_json(out_dir / CONFIG_FILE, {
        "model": "a2gnn", "config": config.to_dict(), "in_dim": int(graph.x.shape[1]),
        "feature_columns": list(features.FEATURE_COLUMNS),
    })
    model_store.save_json(out_dir / NORMALISATION_FILE, stats)
    model_store.save_json(out_dir / THRESHOLD_FILE, {
        "method": "evt_pot", "threshold": metrics["threshold"],
        "flow_threshold": metrics["flow_threshold"], "atom_threshold": metrics["atom_threshold"],
        "calibration": config.calibration, "anchor_scale": config.anchor_scale,
        "structure": config.structure, "quantile": config.evt_quantile, "risk": config.evt_risk,
        "members": metrics.get("members", []),
    })
    model_store.save_json(out_dir / METRICS_FILE, metrics)
    return metrics


# ------------------------------------------------------------------------ scoring
def _load_member(member_path: Path, thresholds: dict) -> dict:
    from safetensors.numpy import load_file

    anchors = load_file(str(member_path / ANCHORS_FILE))
    return {
        "threshold": float(thresholds["threshold"]),
        "flow_threshold": float(thresholds.get("flow_threshold", thresholds["threshold"])),
        "atom_threshold": float(thresholds.get("atom_threshold", 0.0)),
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
