"""Atomicity partitioning: Leiden communities ("atoms") of the weighted flow graph.

Projection to the flow graph (vertices: flows; undirected weighted edges):

* every semantic edge (``relay``, ``similarity``, ``fanin``) with its weight;
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

The cliques are never shuffled: Spark carries the flow graph in compact form
(``flow_graph_parts``: semantic edges plus one membership row per flow of each eligible
host or host pair, ``d`` rows where the clique has ``d (d - 1) / 2`` edges), computes weakly
connected components on it (a star has the same components as its clique), and each
Leiden task expands its own components' cliques in numpy (``clique_pairs``). On a
generated 1M-flow night the projection has 9.0M edges, which the previous version
shuffled twice (projection, components) and sent to one task (docs/benchmarks.md).

Leiden (``leidenalg`` on igraph) runs separately per weakly connected component of the
flow graph; components are hashed into ``leiden_buckets`` groups and each group runs as one
``groupBy(bucket).applyInPandas`` task that handles all its components in one vectorised
pass (``atoms_of_components``), calling Leiden once per component larger than
``tiny_component_size``.
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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.graph.build import SEMANTIC_RELATIONSHIPS
from pipeline.graph.engine import DRIVER_MAX_EDGES

log = logging.getLogger(__name__)

GROUP_KEY_PREFIX = "~"
"""Prefix of group vertices (quiet hosts, host pairs) in the compact flow graph: ``~`` sorts
after the digits and letters of flow ids, so a component's smallest id is a flow's."""
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
    engine: connected-components engine (``auto`` | ``graphframes`` | ``dataframes`` |
        ``driver``; ``pipeline.graph.engine``).
    leiden_buckets: components are hashed into at least this many pandas tasks.
    flows_per_leiden_task: and into at least ``ceil(flows / flows_per_leiden_task)``, so a
        task's memory is bounded as the night grows. Execution only, like the next field
        (a component's atoms do not depend on which components share its task).
    driver_components_max_edges: with ``engine="auto"``, a flow graph with at most this
        many compact edges (semantic edges + group memberships) gets its components on the
        driver. Execution only: not part of the model version (same components either way).
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
    flows_per_leiden_task: int = field(default=25_000, metadata={"execution_only": True})
    driver_components_max_edges: int = field(default=DRIVER_MAX_EDGES, metadata={"execution_only": True})

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

    edges = np.column_stack([np.asarray(sources, np.int64), np.asarray(targets, np.int64)])
    graph = ig.Graph(n=n_vertices, edges=edges.tolist(), directed=False)
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


def clique_pairs(group: np.ndarray, member: np.ndarray, weight: np.ndarray):
    """Every pair of members of each group: the projection of a star to a clique.

    ``group``: ``[n]`` group codes (any sortable ints), ``member``: ``[n]`` member
    indices, ``weight``: ``[n]`` the weight each pair of that group gets (constant within
    a group). Returns ``(i, j, w)``, ``[n_pairs]`` each, with ``i`` and ``j`` members of
    one group. Vectorised: one pass per offset ``k < largest group``, so the cost is
    ``O(n x largest group)`` with no Python loop over groups.
    """
    order = np.lexsort((member, group))
    group, member, weight = group[order], member[order], weight[order]
    pieces_i, pieces_j, pieces_w = [], [], []
    for k in range(1, len(group)):
        same = group[:-k] == group[k:]
        if not same.any():
            break
        pieces_i.append(member[:-k][same])
        pieces_j.append(member[k:][same])
        pieces_w.append(weight[:-k][same])
    if not pieces_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float64)
    return np.concatenate(pieces_i), np.concatenate(pieces_j), np.concatenate(pieces_w)


def sum_parallel_edges(a: np.ndarray, b: np.ndarray, w: np.ndarray, n_vertices: int):
    """Undirected simple graph from a multigraph: ``(a, b, w)`` with ``a < b``, sorted by
    ``(a, b)``, parallel weights summed and self-loops dropped. Indices ``< n_vertices``."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    low, high = np.minimum(a, b), np.maximum(a, b)
    keep = low != high
    keys = low[keep] * np.int64(n_vertices) + high[keep]
    unique, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse, weights=np.asarray(w, np.float64)[keep], minlength=len(unique))
    return unique // n_vertices, unique % n_vertices, summed


def atoms_of_components(
    flow_ids: np.ndarray,
    component_of: np.ndarray,
    sources: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    config: PartitionConfig,
    total_weight: float | None = None,
) -> pd.DataFrame:
    """Atoms of several whole components at once (one Spark task's share).

    ``flow_ids``: ``[n]`` every flow of the components; ``component_of``: ``[n]`` the
    component label of each flow; ``sources``/``targets``: ``[m]`` indices into
    ``flow_ids`` of the flow graph's edges (parallel edges are summed), ``weights``:
    ``[m]``. Returns the ATOMS columns for these flows.

    Within a component the vertices are ordered by flow id and the edges by ``(a, b)``,
    so the atoms depend only on the component's content and the seed, not on which other
    components share the task. Components of at most ``tiny_component_size`` flows, or
    without edges, are one atom each (no Leiden call).
    """
    flow_ids = np.asarray(flow_ids, dtype=object)
    component_of = np.asarray(component_of, dtype=object)
    n = len(flow_ids)
    order = np.lexsort((flow_ids.astype(str), component_of.astype(str)))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    flow_ids, component_of = flow_ids[order], component_of[order]
    sources, targets = np.asarray(sources, np.int64), np.asarray(targets, np.int64)
    if len(sources) and (min(sources.min(), targets.min()) < 0 or max(sources.max(), targets.max()) >= n):
        raise ValueError("an edge names a flow that is not among flow_ids")
    a, b, w = sum_parallel_edges(rank[sources], rank[targets], weights, max(n, 1))

    starts = np.flatnonzero(np.r_[True, component_of[1:] != component_of[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n]
    component_index = np.repeat(np.arange(len(starts)), ends - starts)
    edge_bounds = np.searchsorted(a, np.r_[starts, n])  # edges sorted by a: a component's edges are contiguous
    community = np.zeros(n, np.int64)
    next_community = 0
    for c, (start, end) in enumerate(zip(starts, ends)):
        size = end - start
        lo, hi = edge_bounds[c], edge_bounds[c + 1]
        if size <= config.tiny_component_size or hi == lo:
            community[start:end] = next_community
            next_community += 1
            continue
        if size > config.giant_component_size:
            log.warning("giant component: %d flows, %d edges, partitioned in one task", size, hi - lo)
        local = leiden_membership(size, a[lo:hi] - start, b[lo:hi] - start, w[lo:hi], config, total_weight)
        community[start:end] = next_community + local
        next_community += int(local.max()) + 1
    return _atom_table(flow_ids, community, starts, component_index, a, b, w)


def atoms_of_component(
    flow_ids: np.ndarray,
    edges: pd.DataFrame,
    config: PartitionConfig,
    total_weight: float | None = None,
) -> pd.DataFrame:
    """Atoms of one component: ``flow_ids`` (all its flows) and ``edges`` (a, b, weight
    with flow ids). Returns the ATOMS columns for these flows."""
    flow_ids = np.asarray(flow_ids, dtype=object)
    index = pd.Index(flow_ids)
    return atoms_of_components(
        flow_ids,
        np.zeros(len(flow_ids), dtype=object),
        index.get_indexer(edges["a"]),
        index.get_indexer(edges["b"]),
        edges["weight"].to_numpy(np.float64),
        config,
        total_weight,
    )


def _atom_table(flow_ids, community, starts, component_index, a, b, w) -> pd.DataFrame:
    """ATOMS rows; flows sorted by (component, flow id), so a community's first flow is its
    smallest flow id (communities never span components)."""
    n_communities = int(community.max()) + 1 if len(community) else 0
    _, first = np.unique(community, return_index=True)
    size = np.bincount(community, minlength=n_communities).astype(np.int64)
    internal = community[a] == community[b]
    edges_in = np.bincount(community[a][internal], minlength=n_communities).astype(np.int64)
    weight_in = np.bincount(community[a][internal], weights=w[internal], minlength=n_communities)
    pairs = size * (size - 1) / 2.0
    density = np.where(size > 1, edges_in / np.where(pairs > 0, pairs, 1.0), 0.0)
    names = flow_ids.astype(str)
    return pd.DataFrame(
        {
            "flow_id": names,
            "atom_id": "atom:" + pd.Series(names[first][community], dtype=object),
            "component_id": "component:" + pd.Series(names[starts][component_index], dtype=object),
            "atom_size": size[community],
            "atom_internal_edges": edges_in[community],
            "atom_density": density[community].astype(np.float64),
            "atom_internal_weight": weight_in[community].astype(np.float64),
        }
    )


# ---------------------------------------------------------------------------- Spark side
def flow_graph_parts(edges_df, config: PartitionConfig):
    """The flow graph in compact form, before any clique is expanded (Spark).

    Returns ``(semantic, members)``: ``semantic`` ``[a, b, weight]`` the semantic edges of
    ``SEMANTIC_RELATIONSHIPS`` (flow ids unprefixed, ``a < b``); ``members`` ``[key, flow, weight]``
    one row per flow of every eligible group (a quiet host ``~host|<id>``, a host pair
    ``~pair|<h1>|<h2>``), ``weight`` = ``1 / (d - 1)``, what each pair of the group gets.
    Keys start with ``~`` (``GROUP_KEY_PREFIX``), which sorts after every character of a
    flow id (16 hex digits), so a component of flows and keys is labelled by a flow id.
    The group cliques are implied: ``members`` has ``d`` rows where the projection has
    ``d (d - 1) / 2`` edges, so components and shuffles work on the small form.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    strip = lambda c: F.regexp_replace(F.col(c), "^flow:", "")  # noqa: E731
    semantic = edges_df.where(F.col("relationship").isin(*SEMANTIC_RELATIONSHIPS)).select(
        F.least(strip("src"), strip("dst")).alias("a"),
        F.greatest(strip("src"), strip("dst")).alias("b"),
        F.col("weight").cast("double").alias("weight"),
    ).where(F.col("a") != F.col("b"))
    incidences = edges_df.where(F.col("relationship").isin("src", "dst")).select(
        F.when(F.col("relationship") == "src", F.col("src")).otherwise(F.col("dst")).alias("host"),
        F.when(F.col("relationship") == "src", strip("dst")).otherwise(strip("src")).alias("flow"),
    )
    # one shuffle by flow gives each flow its groups: a quiet host per end, and the pair
    # when it has two distinct ends; one more, by group, counts the group's flows
    hosts = incidences.groupBy("flow").agg(F.array_sort(F.collect_set("host")).alias("hosts"))
    host_keys = F.transform("hosts", lambda h: F.concat(F.lit(GROUP_KEY_PREFIX + "host|"), h))
    pair_key = F.when(
        F.size("hosts") == 2,
        F.array(F.concat_ws("|", F.lit(GROUP_KEY_PREFIX + "pair"), F.col("hosts")[0], F.col("hosts")[1])),
    ).otherwise(F.array().cast("array<string>"))
    memberships = hosts.select(F.explode(F.concat(host_keys, pair_key)).alias("key"), "flow")
    size = F.count("*").over(Window.partitionBy("key"))
    limit = F.when(F.col("key").startswith(GROUP_KEY_PREFIX + "host|"), F.lit(config.max_projection_host_degree)) \
        .otherwise(F.lit(config.max_projection_pair_flows))
    members = memberships.withColumn("d", size).where((F.col("d") >= 2) & (F.col("d") <= limit)).select(
        "key", "flow", (F.lit(1.0) / (F.col("d") - 1)).alias("weight")
    )
    return semantic, members


def project_flow_graph(edges_df, config: PartitionConfig):
    """Undirected weighted flow--flow edges ``[a, b, weight]`` (a < b, flow ids unprefixed).

    The projection as a table (for inspection; ``partition_flows`` expands the cliques
    inside its Leiden tasks instead of shuffling them).
    """
    from pyspark.sql import functions as F

    semantic, members = flow_graph_parts(edges_df, config)

    def expand(group: pd.DataFrame) -> pd.DataFrame:
        flows = np.sort(group["flow"].to_numpy(dtype=str))  # clique_pairs gives i < j
        i, j, w = clique_pairs(np.zeros(len(flows), np.int64), np.arange(len(flows)), group["weight"].to_numpy())
        return pd.DataFrame({"a": flows[i], "b": flows[j], "weight": w})

    cliques = members.groupBy("key").applyInPandas(expand, schema="a string, b string, weight double")
    return semantic.unionByName(cliques).groupBy("a", "b").agg(F.sum("weight").alias("weight"))


def partition_flows(spark, vertices_df, edges_df, config: PartitionConfig):
    """Atoms of every flow vertex: Spark DataFrame with exactly the ATOMS columns.

    ``vertices_df``/``edges_df``: the graph of ``pipeline.graph.build.build_graph``.

    Steps: the compact flow graph (``flow_graph_parts``); weakly connected components of
    flows joined by semantic edges and group memberships (a star per group has the same
    components as its clique, with ``d`` edges instead of ``d (d - 1) / 2``); components
    hashed into ``leiden_buckets`` (or more, see ``flows_per_leiden_task``) ``applyInPandas`` tasks, each of which expands its
    components' cliques in numpy and runs ``atoms_of_components``.
    """
    from pyspark.sql import functions as F

    from pipeline.graph import engine as graph_engine
    from pipeline.store.schema import spark_schema

    flows = vertices_df.where(F.col("type") == "flow").select(
        F.regexp_replace("id", "^flow:", "").alias("flow")
    )
    semantic, members = flow_graph_parts(edges_df, config)
    semantic = semantic.localCheckpoint(eager=True)
    members = members.localCheckpoint(eager=True)
    totals = semantic.agg(F.sum("weight")).first()[0] or 0.0
    # a group of d flows adds d (d - 1) / 2 edges of weight 1 / (d - 1): d / 2 in all
    total_weight = float(totals) + members.count() / 2.0

    labels = graph_engine.connected_components(
        spark,
        flows.select(F.col("flow").alias("id")).unionByName(members.select(F.col("key").alias("id"))),
        semantic.select(F.col("a").alias("src"), F.col("b").alias("dst")).unionByName(
            members.select(F.col("flow").alias("src"), F.col("key").alias("dst"))
        ),
        config.engine,
        config.driver_components_max_edges,
    )
    # every engine labels a component by its smallest id, and group keys sort after flow
    # ids (GROUP_KEY_PREFIX; every group has >= 2 flows): so the label is a flow id
    component_of = flows.join(labels.withColumnRenamed("id", "flow"), "flow").select(
        "flow", "component"
    ).localCheckpoint(eager=True)
    sizes = component_of.groupBy("component").count().agg(F.max("count"), F.count("*"), F.sum("count")).first()
    buckets = max(config.leiden_buckets, -(-int(sizes[2] or 0) // max(1, config.flows_per_leiden_task)))
    log.info(
        "flow graph: %d components, largest %s flows, total weight %.1f; %d Leiden tasks",
        sizes[1], sizes[0], total_weight, buckets,
    )

    node_rows = component_of.select(
        "component", F.lit("flow").alias("kind"), F.col("flow").alias("a"),
        F.lit(None).cast("string").alias("b"), F.lit(None).cast("double").alias("weight"),
    )
    edge_rows = semantic.join(component_of.withColumnRenamed("flow", "a"), "a").select(
        "component", F.lit("edge").alias("kind"), "a", "b", "weight"
    )
    member_rows = members.join(component_of, "flow").select(
        "component", F.lit("member").alias("kind"), F.col("flow").alias("a"), F.col("key").alias("b"), "weight"
    )
    out_schema = spark_schema("atoms")

    def partition_bucket(rows: pd.DataFrame) -> pd.DataFrame:
        if rows.empty:
            return pd.DataFrame({f.name: [] for f in out_schema.fields})
        nodes = rows[rows["kind"] == "flow"]
        flow_index = pd.Index(nodes["a"].to_numpy(dtype=object))
        edges = rows[rows["kind"] == "edge"]
        group_rows = rows[rows["kind"] == "member"]
        i, j, w = clique_pairs(
            pd.factorize(group_rows["b"])[0], flow_index.get_indexer(group_rows["a"]),
            group_rows["weight"].to_numpy(np.float64),
        )
        return atoms_of_components(
            flow_index.to_numpy(),
            nodes["component"].to_numpy(dtype=object),
            np.r_[flow_index.get_indexer(edges["a"]), i],
            np.r_[flow_index.get_indexer(edges["b"]), j],
            np.r_[edges["weight"].to_numpy(np.float64), w],
            config,
            total_weight,
        )

    return (
        node_rows.unionByName(edge_rows)
        .unionByName(member_rows)
        .withColumn("bucket", F.pmod(F.xxhash64("component"), F.lit(buckets)))
        .groupBy("bucket")
        .applyInPandas(lambda rows: partition_bucket(rows.drop(columns="bucket")), schema=out_schema)
    )
