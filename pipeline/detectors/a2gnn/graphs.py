"""A2GNN's inputs from Spark tables: flows joined with their atoms, intra-atom edges, and the
training nights stacked into one :class:`~models.a2gnn_training.AtomGraph`.

Only flow--flow edges of ``SEMANTIC_RELATIONSHIPS`` (relay, similarity, fan-in) whose
endpoints share an atom are kept (the isolation mask drops the others anyway); atom keys
are prefixed by the date, so atoms of different nights stay apart.
"""
from __future__ import annotations
import logging
import numpy as np
import pandas as pd
# torch and PyTorch Geometric (models.a2gnn_training) are imported inside the functions
# that train or embed: the driver of a scoring run never needs them (~8 s to import).
from pipeline.detectors import features
from pipeline.graph.build import SEMANTIC_RELATIONSHIPS


log = logging.getLogger(__name__)


FLOW_VERTEX_PREFIX = "flow:"


SOLO_PREFIX = "solo:"


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
