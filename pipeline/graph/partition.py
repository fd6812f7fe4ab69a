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

Components of at most ``tiny_component_size`` flows become one atom each without Leiden.
A component of more than ``max_leiden_flows`` flows is cut into time slices
(``time_slices``): its flows ordered by ``(first_seen_ms, flow_id)`` and split into
``k = ceil(n / max_leiden_flows)`` consecutive runs of ``n / k`` flows (sizes differ by at most
one, none above the cap). Edges between two slices are dropped, and each slice is a Leiden
unit of its own, hashed into the tasks like a component, so the largest Leiden call and a
task's memory are bounded and a giant component's slices run in parallel. A slice keeps the
whole-graph scaling (resolution ``gamma x m_s / m``, m_s its internal weight). Time, because
every semantic edge is local in time (relay 1 s, similarity 10 s, fan-in 1 s): a cut loses
those only at its boundaries, plus the co-membership edges of groups whose flows straddle
it. Atom ids are
``atom:<smallest flow_id in the atom>`` and component ids ``component:<smallest flow_id>``
(of the whole component, sliced or not): content-derived, so the same input and seed give
the same ids. Measured cost and effect: docs/graph.md.
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
MAX_LEIDEN_FLOWS = 0
"""Default cap on the flows of one Leiden call: 0, never cut (docs/graph.md, 'Time slices').
A cap changes the atoms of every component it cuts (adjusted Rand index 0.04 against the
uncut atoms on a generated 1M-flow night) and no labelled night has a component near
100,000 flows, so its effect on detection is unmeasured; until it is, bounding the
partition is the operator's explicit choice (``[partition] max_leiden_flows``)."""
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
    max_leiden_flows: a component with more flows is cut into time slices of at most this
        many flows, each partitioned by Leiden on its own (``time_slices``; 0: never cut).
        Needs the flows' ``first_seen_ms`` (``partition_flows(..., flows_df)``).
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
    # added after versions existed: their nights had no component above it, so their atoms
    # are the ones this default gives (jobs.config.config_as_dict leaves it out at this value)
    max_leiden_flows: int = field(default=MAX_LEIDEN_FLOWS, metadata={"added_later": MAX_LEIDEN_FLOWS})
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
        if self.max_leiden_flows < 0:
            raise ValueError(f"max_leiden_flows must be >= 0 (0: never cut), got {self.max_leiden_flows}")


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


def time_slices(first_seen_ms: np.ndarray, flow_ids: np.ndarray, max_flows: int) -> np.ndarray:
    """Time slice of each flow of one component: ``[n]`` int64, -1 when it is not cut.

    ``first_seen_ms``: ``[n]`` start times (NaN: unknown, ordered after every known time);
    ``flow_ids``: ``[n]``. A component of ``n > max_flows > 0`` flows, ordered by
    ``(first_seen_ms, flow_id)``, is cut into ``k = ceil(n / max_flows)`` consecutive slices:
    the flow of rank r gets slice ``floor(r k / n)``, so slice sizes differ by at most one and
    none exceeds ``max_flows``. Deterministic: depends only on the times and ids.
    """
    n = len(flow_ids)
    if max_flows <= 0 or n <= max_flows:
        return np.full(n, -1, np.int64)
    times = np.asarray(first_seen_ms, dtype=np.float64)
    times = np.where(np.isnan(times), np.inf, times)
    order = np.lexsort((np.asarray(flow_ids).astype(str), times))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    slices = -(-n // max_flows)
    return rank * slices // n


def atoms_of_components(
    flow_ids: np.ndarray,
    component_of: np.ndarray,
    sources: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    config: PartitionConfig,
    total_weight: float | None = None,
    slice_of: np.ndarray | None = None,
) -> pd.DataFrame:
    """Atoms of several components at once (one Spark task's share).

    ``flow_ids``: ``[n]`` every flow of the components; ``component_of``: ``[n]`` the
    component label of each flow; ``sources``/``targets``: ``[m]`` indices into
    ``flow_ids`` of the flow graph's edges (parallel edges are summed), ``weights``:
    ``[m]``; ``slice_of``: ``[n]`` the time slice of each flow in its component
    (``time_slices``; -1 or None: the component is here whole). A component cut into
    slices may bring only some of them, so its label must be its smallest flow id (the
    engines' label), which names it. Returns the ATOMS columns for these flows.

    Leiden runs once per unit, a whole component or one slice of it. Within a unit the
    vertices are ordered by flow id and the edges by ``(a, b)``, so the atoms depend only on
    the unit's content and the seed, not on which other units share the task. Edges
    between two slices of a component are dropped. A whole component of at most
    ``tiny_component_size`` flows, or without edges, is one atom (no Leiden call); a slice
    without internal edges is one atom per flow (its flows are linked only through other
    slices).
    """
    flow_ids = np.asarray(flow_ids, dtype=object)
    component_of = np.asarray(component_of, dtype=object)
    n = len(flow_ids)
    slice_of = np.full(n, -1, np.int64) if slice_of is None else np.asarray(slice_of, np.int64)
    order = np.lexsort((flow_ids.astype(str), slice_of, component_of.astype(str)))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    flow_ids, component_of, slice_of = flow_ids[order], component_of[order], slice_of[order]
    sources, targets = np.asarray(sources, np.int64), np.asarray(targets, np.int64)
    if len(sources) and (min(sources.min(), targets.min()) < 0 or max(sources.max(), targets.max()) >= n):
        raise ValueError("an edge names a flow that is not among flow_ids")
    a, b, w = sum_parallel_edges(rank[sources], rank[targets], weights, max(n, 1))

    new_component = np.ones(n, bool)
    new_component[1:] = component_of[1:] != component_of[:-1]
    new_unit = new_component.copy()
    new_unit[1:] |= slice_of[1:] != slice_of[:-1]
    component_index = np.cumsum(new_component) - 1
    unit_index = np.cumsum(new_unit) - 1
    if np.any(component_index[a] != component_index[b]):
        raise ValueError("an edge joins flows of two different components")
    inside = unit_index[a] == unit_index[b]  # edges across time slices are dropped
    a, b, w = a[inside], b[inside], w[inside]

    starts = np.flatnonzero(new_unit)
    ends = np.r_[starts[1:], n]
    edge_bounds = np.searchsorted(a, np.r_[starts, n])  # edges sorted by a: a unit's edges are contiguous
    community = np.zeros(n, np.int64)
    next_community = 0
    for u, (start, end) in enumerate(zip(starts, ends)):
        size = end - start
        lo, hi = edge_bounds[u], edge_bounds[u + 1]
        whole = slice_of[start] < 0
        if not whole and hi == lo:
            community[start:end] = next_community + np.arange(size)
            next_community += size
            continue
        if whole and (size <= config.tiny_component_size or hi == lo):
            community[start:end] = next_community
            next_community += 1
            continue
        if whole and size > config.giant_component_size:
            log.warning("giant component: %d flows, %d edges, partitioned in one task", size, hi - lo)
        local = leiden_membership(size, a[lo:hi] - start, b[lo:hi] - start, w[lo:hi], config, total_weight)
        community[start:end] = next_community + local
        next_community += int(local.max()) + 1
    names = flow_ids.astype(str)
    # a whole component starts at its smallest flow id; a task may hold only some slices of a
    # cut component, whose label is then its name (the engines' label: its smallest flow id)
    component_names = np.where(slice_of < 0, names[np.flatnonzero(new_component)][component_index],
                               component_of.astype(str))
    return _atom_table(names, community, component_names, a, b, w)


def atoms_of_component(
    flow_ids: np.ndarray,
    edges: pd.DataFrame,
    config: PartitionConfig,
    total_weight: float | None = None,
    first_seen_ms: np.ndarray | None = None,
) -> pd.DataFrame:
    """Atoms of one component: ``flow_ids`` (all its flows) and ``edges`` (a, b, weight
    with flow ids); ``first_seen_ms`` ``[n]`` the flows' start times, needed when the
    component has more than ``config.max_leiden_flows`` flows (``time_slices``). Returns
    the ATOMS columns for these flows."""
    flow_ids = np.asarray(flow_ids, dtype=object)
    index = pd.Index(flow_ids)
    slices = None
    if config.max_leiden_flows and len(flow_ids) > config.max_leiden_flows:
        if first_seen_ms is None:
            raise ValueError(f"a component of {len(flow_ids)} flows is above max_leiden_flows = "
                             f"{config.max_leiden_flows}: pass first_seen_ms to cut it into time slices")
        slices = time_slices(first_seen_ms, flow_ids, config.max_leiden_flows)
    return atoms_of_components(
        flow_ids,
        np.full(len(flow_ids), min(flow_ids.astype(str), default=""), dtype=object),
        index.get_indexer(edges["a"]),
        index.get_indexer(edges["b"]),
        edges["weight"].to_numpy(np.float64),
        config,
        total_weight,
        slices,
    )


def _atom_table(names, community, component_names, a, b, w) -> pd.DataFrame:
    """ATOMS rows; flows sorted by (component, slice, flow id), so a community's first flow
    is its smallest flow id (communities never span units)."""
    n_communities = int(community.max()) + 1 if len(community) else 0
    _, first = np.unique(community, return_index=True)
    size = np.bincount(community, minlength=n_communities).astype(np.int64)
    internal = community[a] == community[b]
    edges_in = np.bincount(community[a][internal], minlength=n_communities).astype(np.int64)
    weight_in = np.bincount(community[a][internal], weights=w[internal], minlength=n_communities)
    pairs = size * (size - 1) / 2.0
    density = np.where(size > 1, edges_in / np.where(pairs > 0, pairs, 1.0), 0.0)
    return pd.DataFrame(
        {
            "flow_id": names,
            "atom_id": "atom:" + pd.Series(names[first][community], dtype=object),
            "component_id": "component:" + pd.Series(component_names, dtype=object),
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


def partition_flows(spark, vertices_df, edges_df, config: PartitionConfig, flows_df=None):
    """Atoms of every flow vertex: Spark DataFrame with exactly the ATOMS columns.

    ``vertices_df``/``edges_df``: the graph of ``pipeline.graph.build.build_graph``;
    ``flows_df``: the night's flows (``flow_id``, ``first_seen_ms``), read only when a
    component has more than ``config.max_leiden_flows`` flows (an error then if absent).

    Steps: the compact flow graph (``flow_graph_parts``); weakly connected components of
    flows joined by semantic edges and group memberships (a star per group has the same
    components as its clique, with ``d`` edges instead of ``d (d - 1) / 2``); components
    above ``max_leiden_flows`` cut into time slices (``time_slices``, one pandas task per
    such component); components and slices hashed into ``leiden_buckets`` (or more, see
    ``flows_per_leiden_task``) ``applyInPandas`` tasks, each of which expands its units'
    cliques in numpy and runs ``atoms_of_components``.
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
    component_sizes = component_of.groupBy("component").count().localCheckpoint(eager=True)
    sizes = component_sizes.agg(F.max("count"), F.count("*"), F.sum("count")).first()
    buckets = max(config.leiden_buckets, -(-int(sizes[2] or 0) // max(1, config.flows_per_leiden_task)))
    log.info(
        "flow graph: %d components, largest %s flows, total weight %.1f; %d Leiden tasks",
        sizes[1], sizes[0], total_weight, buckets,
    )
    component_of = _with_time_slices(component_of, component_sizes, int(sizes[0] or 0), flows_df, config)

    node_rows = component_of.select(
        "component", "slice", F.lit("flow").alias("kind"), F.col("flow").alias("a"),
        F.lit(None).cast("string").alias("b"), F.lit(None).cast("double").alias("weight"),
    )
    edge_rows = semantic.join(component_of.withColumnRenamed("flow", "a"), "a").select(
        "component", "slice", F.lit("edge").alias("kind"), "a", "b", "weight"
    )
    member_rows = members.join(component_of, "flow").select(
        "component", "slice", F.lit("member").alias("kind"), F.col("flow").alias("a"), F.col("key").alias("b"),
        "weight",
    )
    out_schema = spark_schema("atoms")

    def partition_bucket(rows: pd.DataFrame) -> pd.DataFrame:
        if rows.empty:
            return pd.DataFrame({f.name: [] for f in out_schema.fields})
        nodes = rows[rows["kind"] == "flow"]
        flow_index = pd.Index(nodes["a"].to_numpy(dtype=object))
        slice_of = nodes["slice"].to_numpy(np.int64)
        edges = rows[rows["kind"] == "edge"]
        edge_a, edge_b = flow_index.get_indexer(edges["a"]), flow_index.get_indexer(edges["b"])
        # a sliced component's other slices may be in other tasks: edges to them are cut
        kept = (edge_b >= 0) | (slice_of[edge_a] < 0)
        group_rows = rows[rows["kind"] == "member"]
        # a group's clique is expanded within each slice (a group never spans components)
        group_slice = group_rows["slice"].to_numpy(np.int64)
        group = pd.factorize(group_rows["b"])[0] * (int(group_slice.max(initial=-1)) + 2) + group_slice + 1
        i, j, w = clique_pairs(
            group, flow_index.get_indexer(group_rows["a"]), group_rows["weight"].to_numpy(np.float64),
        )
        return atoms_of_components(
            flow_index.to_numpy(),
            nodes["component"].to_numpy(dtype=object),
            np.r_[edge_a[kept], i],
            np.r_[edge_b[kept], j],
            np.r_[edges["weight"].to_numpy(np.float64)[kept], w],
            config,
            total_weight,
            slice_of,
        )

    return (
        node_rows.unionByName(edge_rows)
        .unionByName(member_rows)
        .withColumn("bucket", F.pmod(F.xxhash64("component", "slice"), F.lit(buckets)))
        .groupBy("bucket")
        .applyInPandas(lambda rows: partition_bucket(rows.drop(columns="bucket")), schema=out_schema)
    )


def _with_time_slices(component_of, component_sizes, largest: int, flows_df, config: PartitionConfig):
    """``component_of`` ``[flow, component]`` plus ``slice`` (``time_slices``; -1 for a
    component of at most ``max_leiden_flows`` flows, so nothing is read when none is bigger)."""
    from pyspark.sql import functions as F

    cap = config.max_leiden_flows
    if not cap or largest <= cap:
        return component_of.withColumn("slice", F.lit(-1).cast("long"))
    if flows_df is None:
        raise ValueError(f"a flow-graph component has {largest} flows, above max_leiden_flows = {cap}: "
                         "pass the night's flows (flow_id, first_seen_ms) to partition_flows to cut it "
                         "into time slices, or set [partition] max_leiden_flows = 0")
    big = component_sizes.where(F.col("count") > cap).select("component", "count")
    for row in big.orderBy(F.desc("count")).limit(20).collect():
        log.info("component %s: %d flows cut into %d time slices of <= %d flows",
                 row["component"], row["count"], -(-row["count"] // cap), cap)
    times = flows_df.select(F.col("flow_id").alias("flow"), F.col("first_seen_ms").cast("double"))

    def slice_component(rows: pd.DataFrame) -> pd.DataFrame:
        flow_ids = rows["flow"].to_numpy(dtype=object)
        return pd.DataFrame({"flow": flow_ids,
                             "slice": time_slices(rows["first_seen_ms"].to_numpy(np.float64), flow_ids, cap)})

    sliced = (
        component_of.join(F.broadcast(big.select("component")), "component")
        .join(times, "flow", "left")
        .groupBy("component")
        .applyInPandas(slice_component, schema="flow string, slice long")
    )
    return component_of.join(sliced, "flow", "left").fillna(-1, ["slice"]).localCheckpoint(eager=True)
