"""Graph algorithms the pipeline needs, behind two interchangeable engines.

* ``graphframes``: ``GraphFrame(vertices, edges).connectedComponents()`` and ``.degrees``.
  Needs the GraphFrames JVM package on Spark's classpath (``spark.jars.packages`` or
  ``spark.jars``); the Python package alone is not enough.
* ``dataframes``: the same answers with Spark DataFrame operations only. Weakly connected
  components by the alternating large-star / small-star algorithm (Kiveris et al.,
  "Connected Components in MapReduce and Beyond", SoCC 2014), which converges in
  O(log n) rounds (in practice a handful, also on long chains); every round's edge set is
  checkpointed to cut the lineage.
* ``driver``: the edges are collected to the driver and components found there by
  ``scipy.sparse.csgraph.connected_components`` (linear time). For a graph of a few
  million edges this takes about a second, where every distributed round above is a
  few Spark jobs (the dataframe engine took 13 s for 7 rounds on a 1 GB night's
  362k-edge compact flow graph on 2 cores, docs/benchmarks.md); the driver needs ~200 bytes
  per edge.
* ``auto``: ``driver`` when the graph has at most ``driver_max_edges`` edges, else
  ``graphframes`` when its JVM class loads, else ``dataframes``; logs which.

All return components labelled by the smallest vertex ``id`` of the component (a
content-derived, deterministic label), so their outputs compare row for row.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

ENGINES = ("auto", "graphframes", "dataframes", "driver")
DRIVER_MAX_EDGES = 2_000_000
GRAPHFRAMES_CLASS = "org.graphframes.GraphFrame"
MAX_ROUNDS = 100


def graphframes_available(spark) -> bool:
    """True when both the ``graphframes`` Python package and its JVM class load."""
    try:
        import graphframes  # noqa: F401
    except ImportError:
        return False
    try:
        loader = spark._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        spark._jvm.java.lang.Class.forName(GRAPHFRAMES_CLASS, True, loader)
        return True
    except Exception:  # py4j raises Py4JJavaError wrapping ClassNotFoundException
        return False


def resolve_engine(spark, engine: str = "auto", num_edges: int | None = None,
                   driver_max_edges: int = DRIVER_MAX_EDGES) -> str:
    """The engine that will run: ``graphframes``, ``dataframes`` or ``driver``.

    ``auto`` picks ``driver`` when ``num_edges`` is given and at most
    ``driver_max_edges``. Raises ``ValueError`` for an unknown name and ``RuntimeError``
    when ``graphframes`` is asked for explicitly but its JAR is not loadable.
    """
    if engine not in ENGINES:
        raise ValueError(f"graph engine {engine!r} is not one of {ENGINES}")
    if engine == "driver" or (engine == "auto" and num_edges is not None and num_edges <= driver_max_edges):
        log.info("graph engine: driver (requested %s, %s edges, driver limit %d)", engine, num_edges,
                 driver_max_edges)
        return "driver"
    available = graphframes_available(spark)
    if engine == "graphframes" and not available:
        raise RuntimeError(
            f"graph engine 'graphframes' requested but {GRAPHFRAMES_CLASS} is not loadable: "
            "add the GraphFrames package to spark.jars.packages / spark.jars, or use "
            "engine='dataframes'"
        )
    chosen = "graphframes" if engine == "graphframes" or (engine == "auto" and available) else "dataframes"
    log.info("graph engine: %s (requested %s, GraphFrames JAR loadable: %s)", chosen, engine, available)
    return chosen


def connected_components(spark, vertices_df, edges_df, engine: str = "auto",
                         driver_max_edges: int = DRIVER_MAX_EDGES):
    """Weakly connected components: DataFrame ``[id, component]`` for every vertex.

    ``vertices_df`` needs ``id``; ``edges_df`` needs ``src``, ``dst`` (direction is
    ignored). ``component`` is the smallest ``id`` in the vertex's component.
    """
    num_edges = edges_df.count() if engine == "auto" else None
    chosen = resolve_engine(spark, engine, num_edges, driver_max_edges)
    if chosen == "driver":
        return _driver_components(spark, vertices_df, edges_df)
    if chosen == "graphframes":
        labels = _graphframes_components(vertices_df, edges_df)
    else:
        labels = _dataframe_components(spark, vertices_df, edges_df)
    return _label_by_smallest_id(labels)


def degrees(spark, vertices_df, edges_df, engine: str = "auto"):
    """DataFrame ``[id, degree]``: edge endpoints per vertex (vertices without edges omitted,
    as in GraphFrames' ``degrees``)."""
    chosen = resolve_engine(spark, engine)
    if chosen == "graphframes":
        from graphframes import GraphFrame

        return GraphFrame(vertices_df, edges_df).degrees
    from pyspark.sql import functions as F

    ends = edges_df.select(F.col("src").alias("id")).unionByName(edges_df.select(F.col("dst").alias("id")))
    return ends.groupBy("id").agg(F.count("*").cast("int").alias("degree"))


def _label_by_smallest_id(labels):
    """``[id, label]`` (any per-component label) -> ``[id, component]`` (smallest id)."""
    from pyspark.sql import functions as F

    smallest = labels.groupBy("label").agg(F.min("id").alias("component"))
    return labels.join(smallest, "label").select("id", "component")


def _graphframes_components(vertices_df, edges_df):
    from graphframes import GraphFrame
    from pyspark.sql import functions as F

    result = GraphFrame(vertices_df.select("id"), edges_df.select("src", "dst")).connectedComponents()
    return result.select("id", F.col("component").alias("label"))


def component_labels(ids, src, dst) -> np.ndarray:
    """``[n]`` the smallest id of each vertex's weakly connected component (pure).

    ``ids``: ``[n]`` distinct vertex ids; ``src``/``dst``: ``[m]`` edge endpoints, ids
    that must be among ``ids`` (``ValueError`` otherwise). Any array-likes of strings
    (numpy, lists, Arrow). "Smallest" is byte-wise UTF-8 order, as Spark's ``min``.
    The id lookups and the sort run in Arrow's C++ kernels: on the 1 GB bench night's
    compact flow graph (275k vertices, 362k edges) this took 1.2 s with pandas' object
    index and a string groupby, and takes a fraction of that now.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    def strings(values):
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        return values.cast(pa.string()) if isinstance(values, pa.Array) else pa.array(values, pa.string())

    ids = strings(ids)
    u, v = pc.index_in(strings(src), value_set=ids), pc.index_in(strings(dst), value_set=ids)
    if u.null_count or v.null_count:
        raise ValueError("an edge names a vertex that is not in the vertex table")
    n = len(ids)
    u, v = u.to_numpy(zero_copy_only=False), v.to_numpy(zero_copy_only=False)
    adjacency = coo_matrix((np.ones(len(u), np.int8), (u, v)), shape=(n, n))
    _, label = scipy_components(adjacency, directed=False)
    order = pc.sort_indices(ids).to_numpy()  # vertices by id
    # a component's smallest id is its first vertex in id order
    _, first = np.unique(label[order], return_index=True)
    smallest_of_label = order[first]  # np.unique sorts labels: row c is component c
    return ids.to_numpy(zero_copy_only=False)[smallest_of_label[label]].astype(object)


def _driver_components(spark, vertices_df, edges_df):
    """``[id, component]`` computed on the driver (see ``driver`` in the module docstring)."""
    import pandas as pd

    ids = vertices_df.select("id").distinct().toArrow().column("id")
    edges = edges_df.select("src", "dst").toArrow()
    component = component_labels(ids, edges.column("src"), edges.column("dst"))
    frame = pd.DataFrame({"id": ids.to_numpy(zero_copy_only=False), "component": component})
    return spark.createDataFrame(frame, schema="id string, component string")


def _checkpoint(df):
    """Truncate lineage: a local (executor) checkpoint, materialised now."""
    return df.localCheckpoint(eager=True)


def _large_star(edges):
    """Each vertex u links every larger neighbour to the smallest of u and its neighbours."""
    from pyspark.sql import functions as F

    both = edges.unionByName(edges.select(F.col("v").alias("u"), F.col("u").alias("v")))
    smallest = both.groupBy("u").agg(F.least(F.min("v"), F.first("u")).alias("m"))
    return (
        both.join(smallest, "u")
        .where(F.col("v") > F.col("u"))
        .select(F.col("v").alias("u"), F.col("m").alias("v"))
    )  # duplicates are removed by the small-star step that always follows


def _small_star(edges):
    """Each vertex u links itself and its smaller neighbours to the smallest of them."""
    from pyspark.sql import functions as F

    oriented = edges.select(
        F.greatest("u", "v").alias("u"), F.least("u", "v").alias("v")
    ).where(F.col("u") != F.col("v"))
    smallest = oriented.groupBy("u").agg(F.min("v").alias("m"))
    linked = oriented.join(smallest, "u")
    return (
        linked.select(F.col("v").alias("u"), F.col("m").alias("v"))
        .where(F.col("u") != F.col("v"))
        .unionByName(smallest.select("u", F.col("m").alias("v")))
        .distinct()
    )


def _fingerprint(edges) -> tuple[int, int]:
    from pyspark.sql import functions as F

    row = edges.agg(
        F.count("*").alias("n"), F.sum(F.xxhash64("u", "v") % F.lit(1 << 40)).alias("h")
    ).first()
    return int(row["n"]), int(row["h"] or 0)


def _dataframe_components(spark, vertices_df, edges_df):
    """``[id, label]`` with Spark DataFrames only (large-star / small-star)."""
    from pyspark.sql import functions as F

    vertices = _checkpoint(vertices_df.select("id").distinct().withColumn("vid", F.xxhash64("id")))
    counts = vertices.agg(F.count("*").alias("n"), F.countDistinct("vid").alias("k")).first()
    if counts["n"] != counts["k"]:
        raise RuntimeError(
            f"64-bit id hash collision among {counts['n']} vertices: "
            "rename a colliding vertex id or use engine='graphframes'"
        )
    edges = _checkpoint(
        edges_df.select(F.xxhash64("src").alias("u"), F.xxhash64("dst").alias("v"))
        .where(F.col("u") != F.col("v"))
        .distinct()
    )
    previous = _fingerprint(edges)
    for round_index in range(1, MAX_ROUNDS + 1):
        edges = _checkpoint(_small_star(_large_star(edges)))
        current = _fingerprint(edges)
        log.debug("large/small-star round %d: %d edges", round_index, current[0])
        if current == previous:
            log.info("dataframe connected components converged after %d rounds", round_index)
            break
        previous = current
    else:
        raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")
    # converged: stars, every edge (leaf u -> centre v) with v the component's minimum
    centre = edges.groupBy("u").agg(F.min("v").alias("centre"))
    labelled = vertices.join(centre, vertices["vid"] == centre["u"], "left")
    return labelled.select("id", F.coalesce("centre", "vid").alias("label"))
