"""Atomicity partitioning: Leiden communities ("atoms") of the weighted flow graph.

Projection to the flow graph (vertices: flows; undirected weighted edges):

* every semantic edge (``relay``, ``similarity``) with its weight;
* host co-membership: two flows that share a host whose flow degree d satisfies
  ``2 <= d <= max_projection_host_degree`` are joined with weight ``1 / (d - 1)``
  (Newman's collaboration weighting: each flow's total weight through one host is 1).
  Busier hosts (a gateway, a resolver, a popular server) add nothing: that two flows
  touched a hub says little about whether they belong together, and their clique would
  be quadratic. This keeps the projection at most ``(D - 1) x flows`` edges.
* conversation co-membership: two flows between the same two hosts (in either
  direction), when that pair has ``2 <= m <= max_projection_pair_flows`` flows, are joined
  with weight ``1 / (m - 1)``. A scan, a brute-force run or a C2 channel is one host pair
  with tens of flows, usually between hosts too busy for the rule above; a pair with
  more flows than the cap (a long-lived poller, a tunnel) adds nothing. At most
  ``(P - 1) / 2 x flows`` edges.

Parallel weights of one flow pair (e.g. a similarity edge and a shared host) are summed.

Leiden (``leidenalg`` on igraph) runs separately per weakly connected component of the
flow graph; components are hashed into ``leiden_buckets`` groups and each group runs as one
``groupBy(bucket).applyInPandas`` task that loops over its components (a task per component
would pay pandas overhead per component: most components are tiny).
With ``objective_scope="graph"`` (default) each component optimises exactly its share of
the *whole-graph* quality: modularity with total weight m equals, on a component with
total weight m_c, ``RBConfigurationVertexPartition`` with resolution ``gamma x m_c / m``
(communities never span components at an optimum), so sharding changes the execution,
not the answer. ``objective_scope="component"`` treats each component as its own graph
(``ModularityVertexPartition`` / RB configuration with ``resolution``).

Components of at most ``tiny_component_size`` flows become one atom each without Leiden;
components above ``giant_component_size`` still run Leiden in one task (logged; see
docs/graph.md for the measured cost). Atom ids are ``atom:<smallest flow_id in the atom>``
and component ids ``component:<smallest flow_id>``: content-derived, so the same input and
seed give the same ids.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

QUALITIES = ("modularity", "rb_configuration")
SCOPES = ("graph", "component")


@dataclass(frozen=True)
class PartitionConfig:
    """Leiden knobs, all explicit (defaults: METHODS.md, Atomic-Anchor 2).

    quality: ``modularity`` or ``rb_configuration`` (never CPM).
    resolution: gamma of RB configuration (1.0 = modularity).
    seed: Leiden's random seed (from conf).
    n_iterations: Leiden passes (2, leidenalg's default; negative: until no improvement,
        which cost 25 passes and 12x the time on a 84k-flow component).
    objective_scope: ``graph`` (whole-graph objective, sharding-invariant) or ``component``.
    tiny_component_size: components with at most this many flows are one atom, no Leiden.
    giant_component_size: above this a component is logged as giant (still partitioned).
    max_projection_host_degree: hosts with more flows add no co-membership edges.
    max_projection_pair_flows: host pairs with more flows add no conversation edges.
    engine: connected-components engine (``auto`` | ``graphframes`` | ``dataframes``).
    leiden_buckets: components are hashed into this many pandas tasks.
    """

    quality: str = "modularity"
    resolution: float = 1.0
    seed: int = 42
    n_iterations: int = 2
    objective_scope: str = "graph"
    tiny_component_size: int = 2
    giant_component_size: int = 200_000
    max_projection_host_degree: int = 32
    max_projection_pair_flows: int = 128
    engine: str = "auto"
    leiden_buckets: int = 8

    def __post_init__(self) -> None:
        if self.quality not in QUALITIES:
            raise ValueError(f"quality {self.quality!r} is not one of {QUALITIES}")
        if self.objective_scope not in SCOPES:
            raise ValueError(f"objective_scope {self.objective_scope!r} is not one of {SCOPES}")
        if self.resolution <= 0:
            raise ValueError(f"resolution must be > 0, got {self.resolution}")


# --------------------------------------------------------------------------- pure Leiden
def leiden_membership(
    n_vertices: int,
    sources: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    config: PartitionConfig,
    total_weight: float | None = None,
) -> np.ndarray:
    """Leiden community index per vertex ``0..n_vertices-1`` of one undirected graph.

    ``sources``/``targets``: ``[n_edges]`` vertex indices; ``weights``: ``[n_edges]`` > 0.
    ``total_weight``: the whole graph's total edge weight m when this graph is one
    component of it and ``objective_scope == "graph"`` (None: this graph is the whole).
    """
    import igraph as ig
    import leidenalg

    graph = ig.Graph(n=n_vertices, edges=list(zip(sources.tolist(), targets.tolist())), directed=False)
    graph.es["weight"] = np.asarray(weights, dtype=np.float64).tolist()
    component_weight = float(np.sum(weights))
    scale = 1.0
    if config.objective_scope == "graph" and total_weight is not None and total_weight > 0:
        scale = component_weight / total_weight
    gamma = (config.resolution if config.quality == "rb_configuration" else 1.0) * scale
    if config.quality == "modularity" and scale == 1.0:
        partition_type, extra = leidenalg.ModularityVertexPartition, {}
    else:
        partition_type, extra = leidenalg.RBConfigurationVertexPartition, {"resolution_parameter": gamma}
    partition = leidenalg.find_partition(
        graph,
        partition_type,
        weights="weight",
        n_iterations=config.n_iterations,
        seed=config.seed,
        **extra,
    )
    return np.asarray(partition.membership, dtype=np.int64)


def atoms_of_component(
    flow_ids: np.ndarray,
    edges: pd.DataFrame,
    config: PartitionConfig,
    total_weight: float | None = None,
) -> pd.DataFrame:
    """Atoms of one component: ``flow_ids`` (all its flows) and ``edges`` (a, b, weight).

    Returns the ATOMS columns for these flows. Vertices are ordered by flow id and edges
    by (a, b), so the result depends only on the content and the seed.
    """
    flow_ids = np.sort(np.asarray(flow_ids, dtype=object))
    index = {flow: i for i, flow in enumerate(flow_ids)}
    edges = edges.sort_values(["a", "b"], kind="stable")
    sources = edges["a"].map(index).to_numpy(np.int64)
    targets = edges["b"].map(index).to_numpy(np.int64)
    weights = edges["weight"].to_numpy(np.float64)
    if len(flow_ids) <= config.tiny_component_size or len(edges) == 0:
        membership = np.zeros(len(flow_ids), dtype=np.int64)
    else:
        if len(flow_ids) > config.giant_component_size:
            log.warning(
                "giant component: %d flows, %d edges, partitioned in one task",
                len(flow_ids), len(edges),
            )
        membership = leiden_membership(len(flow_ids), sources, targets, weights, config, total_weight)
    return _atom_table(flow_ids, membership, sources, targets, weights)


def _atom_table(flow_ids, membership, sources, targets, weights) -> pd.DataFrame:
    frame = pd.DataFrame({"flow_id": flow_ids, "community": membership})
    first = frame.groupby("community")["flow_id"].transform("min")
    size = frame.groupby("community")["flow_id"].transform("size").astype(np.int64)
    internal = membership[sources] == membership[targets]
    per_edge = pd.DataFrame({"community": membership[sources][internal], "weight": weights[internal]})
    internal_edges = per_edge.groupby("community")["weight"].size()
    internal_weight = per_edge.groupby("community")["weight"].sum()
    edges_in = frame["community"].map(internal_edges).fillna(0).astype(np.int64)
    weight_in = frame["community"].map(internal_weight).fillna(0.0).astype(np.float64)
    pairs = size * (size - 1) / 2.0
    density = np.where(size > 1, edges_in / np.where(pairs > 0, pairs, 1.0), 0.0)
    return pd.DataFrame(
        {
            "flow_id": flow_ids.astype(str),
            "atom_id": "atom:" + first.astype(str),
            "component_id": "component:" + str(flow_ids[0]) if len(flow_ids) else "",
            "atom_size": size,
            "atom_internal_edges": edges_in,
            "atom_density": density.astype(np.float64),
            "atom_internal_weight": weight_in,
        }
    )


# ---------------------------------------------------------------------------- Spark side
def project_flow_graph(edges_df, config: PartitionConfig):
    """Undirected weighted flow--flow edges ``[a, b, weight]`` (a < b, flow ids unprefixed)."""
    from pyspark.sql import functions as F

    strip = lambda c: F.regexp_replace(F.col(c), "^flow:", "")  # noqa: E731
    semantic = edges_df.where(F.col("relationship").isin("relay", "similarity")).select(
        F.least(strip("src"), strip("dst")).alias("a"),
        F.greatest(strip("src"), strip("dst")).alias("b"),
        F.col("weight").cast("double").alias("weight"),
    )
    incidences = edges_df.where(F.col("relationship").isin("src", "dst")).select(
        F.when(F.col("relationship") == "src", F.col("src")).otherwise(F.col("dst")).alias("host"),
        F.when(F.col("relationship") == "src", strip("dst")).otherwise(strip("src")).alias("flow"),
    ).distinct()
    degree = incidences.groupBy("host").agg(F.count("*").alias("d")).where(
        (F.col("d") >= 2) & (F.col("d") <= config.max_projection_host_degree)
    )
    shared = _clique_edges(incidences.join(degree, "host"), "host")
    ends = incidences.groupBy("flow").agg(
        F.min("host").alias("h1"), F.max("host").alias("h2"), F.count("*").alias("n_hosts")
    ).where(F.col("n_hosts") == 2)
    pairs = ends.select("flow", F.concat_ws("|", "h1", "h2").alias("pair"))
    pair_size = pairs.groupBy("pair").agg(F.count("*").alias("d")).where(
        (F.col("d") >= 2) & (F.col("d") <= config.max_projection_pair_flows)
    )
    conversation = _clique_edges(pairs.join(pair_size, "pair"), "pair")
    return (
        semantic.unionByName(shared)
        .unionByName(conversation)
        .where(F.col("a") != F.col("b"))
        .groupBy("a", "b")
        .agg(F.sum("weight").alias("weight"))
    )


def _clique_edges(members, key: str):
    """Every flow pair sharing ``key`` (columns key, flow, d), weight ``1 / (d - 1)``."""
    from pyspark.sql import functions as F

    left, right = members.alias("l"), members.alias("r")
    return left.join(
        right, (F.col(f"l.{key}") == F.col(f"r.{key}")) & (F.col("l.flow") < F.col("r.flow"))
    ).select(
        F.col("l.flow").alias("a"),
        F.col("r.flow").alias("b"),
        (F.lit(1.0) / (F.col("l.d") - 1)).alias("weight"),
    )


def partition_flows(spark, vertices_df, edges_df, config: PartitionConfig):
    """Atoms of every flow vertex: Spark DataFrame with exactly the ATOMS columns.

    ``vertices_df``/``edges_df``: the graph of ``pipeline.graph.build_graph``.
    """
    from pyspark.sql import functions as F

    from pipeline import graph_engine
    from pipeline.schema import spark_schema

    flows = vertices_df.where(F.col("type") == "flow").select(
        F.regexp_replace("id", "^flow:", "").alias("id")
    )
    projected = project_flow_graph(edges_df, config).localCheckpoint(eager=True)
    components = graph_engine.connected_components(
        spark, flows, projected.select(F.col("a").alias("src"), F.col("b").alias("dst")), config.engine
    ).localCheckpoint(eager=True)
    total_weight = float(projected.agg(F.sum("weight")).first()[0] or 0.0)
    sizes = components.groupBy("component").count().agg(F.max("count"), F.count("*")).first()
    log.info(
        "flow graph: %d components, largest %s flows, total weight %.1f",
        sizes[1], sizes[0], total_weight,
    )

    sized = components.join(
        components.groupBy("component").agg(F.count("*").alias("size")), "component"
    )
    edges_in = projected.join(sized.select(F.col("id").alias("a"), "component", "size"), "a")
    tiny = _tiny_component_atoms(sized, edges_in, config.tiny_component_size)

    large = sized.where(F.col("size") > config.tiny_component_size)
    node_rows = large.select(
        "component", F.col("id").alias("a"), F.lit(None).cast("string").alias("b"),
        F.lit(None).cast("double").alias("weight"),
    )
    edge_rows = edges_in.where(F.col("size") > config.tiny_component_size).select(
        "component", "a", "b", "weight"
    )
    out_schema = spark_schema("atoms")

    def partition_bucket(group: pd.DataFrame) -> pd.DataFrame:
        results = []
        for _, rows in group.groupby("component", sort=True):
            is_node = rows["b"].isna()
            results.append(
                atoms_of_component(
                    rows.loc[is_node, "a"].to_numpy(),
                    rows.loc[~is_node, ["a", "b", "weight"]],
                    config,
                    total_weight,
                )
            )
        if not results:
            return pd.DataFrame({f.name: [] for f in out_schema.fields})
        return pd.concat(results, ignore_index=True)

    leiden = (
        node_rows.unionByName(edge_rows)
        .withColumn("bucket", F.pmod(F.xxhash64("component"), F.lit(config.leiden_buckets)))
        .groupBy("bucket")
        .applyInPandas(partition_bucket, schema=out_schema)
    )
    return tiny.unionByName(leiden)


def _tiny_component_atoms(sized, edges_in, tiny_size: int):
    """Components of at most ``tiny_size`` flows: one atom each, computed in Spark."""
    from pyspark.sql import functions as F

    small = sized.where(F.col("size") <= tiny_size)
    inside = (
        edges_in.where(F.col("size") <= tiny_size)
        .groupBy("component")
        .agg(F.count("*").alias("edges"), F.sum("weight").alias("internal_weight"))
    )
    pairs = F.col("size") * (F.col("size") - 1) / 2.0
    return small.join(inside, "component", "left").select(
        F.col("id").alias("flow_id"),
        F.concat(F.lit("atom:"), "component").alias("atom_id"),
        F.concat(F.lit("component:"), "component").alias("component_id"),
        F.col("size").cast("long").alias("atom_size"),
        F.coalesce("edges", F.lit(0)).cast("long").alias("atom_internal_edges"),
        F.when(F.col("size") > 1, F.coalesce("edges", F.lit(0)) / pairs)
        .otherwise(F.lit(0.0))
        .cast("double")
        .alias("atom_density"),
        F.coalesce("internal_weight", F.lit(0.0)).cast("double").alias("atom_internal_weight"),
    )
