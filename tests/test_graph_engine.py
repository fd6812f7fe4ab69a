"""Graph engines: the DataFrame engine agrees with igraph; GraphFrames only where its JAR loads."""
from __future__ import annotations

import logging

import igraph as ig
import numpy as np
import pytest

from pipeline.graph import engine as graph_engine


def _igraph_components(n, edges):
    """{vertex name: smallest name in its component} from igraph."""
    g = ig.Graph(n=n, edges=edges, directed=False)
    names = [f"v{i:05d}" for i in range(n)]
    answer = {}
    for members in g.connected_components(mode="weak"):
        smallest = min(names[m] for m in members)
        answer.update({names[m]: smallest for m in members})
    return answer


def _frames(spark, n, edges):
    vertices = spark.createDataFrame([(f"v{i:05d}",) for i in range(n)], "id string")
    edge_rows = [(f"v{a:05d}", f"v{b:05d}") for a, b in edges]
    edge_df = spark.createDataFrame(edge_rows, "src string, dst string")
    return vertices, edge_df


def _shapes():
    rng = np.random.default_rng(5)
    random_n = 300
    random_edges = [tuple(map(int, rng.integers(0, random_n, 2))) for _ in range(220)]
    chain_n = 400
    order = rng.permutation(chain_n)  # a long path whose labels are not sorted along it
    chain_edges = [(int(order[i]), int(order[i + 1])) for i in range(chain_n - 1)]
    star_edges = [(0, i) for i in range(1, 300)] + [(i, 0) for i in range(1, 5)]
    tiny_n = 500
    tiny_edges = [(i, i + 1) for i in range(0, 400, 2)]  # 200 pairs and 100 isolated vertices
    return {
        "random": (random_n, random_edges),
        "long_chain": (chain_n, chain_edges),
        "star": (300, star_edges),
        "many_tiny_components": (tiny_n, tiny_edges),
    }


def _disjoint_union(shapes):
    n_total, edges_total = 0, []
    for n, edges in shapes:
        edges_total += [(a + n_total, b + n_total) for a, b in edges]
        n_total += n
    return n_total, edges_total


@pytest.mark.parametrize("engine", ["dataframes", "driver"])
def test_components_match_igraph_on_random_chain_star_and_tiny_graphs(spark, engine):
    # one disjoint union of the four shapes: one engine run checks them all
    n, edges = _disjoint_union(_shapes().values())
    vertices, edge_df = _frames(spark, n, edges)
    result = graph_engine.connected_components(spark, vertices, edge_df, engine=engine)
    got = dict(result.toPandas().itertuples(index=False, name=None))
    assert got == _igraph_components(n, edges)
    assert len(set(got.values())) == len(ig.Graph(n=n, edges=edges).connected_components())


def test_dataframe_degrees_match_igraph(spark):
    n, edges = _shapes()["random"]
    vertices, edge_df = _frames(spark, n, edges)
    got = dict(graph_engine.degrees(spark, vertices, edge_df, engine="dataframes").toPandas().itertuples(index=False, name=None))
    g = ig.Graph(n=n, edges=edges, directed=False)
    expected = {f"v{i:05d}": d for i, d in enumerate(g.degree()) if d > 0}
    assert got == expected


def test_auto_names_the_engine_that_ran(spark, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.graph.engine")
    chosen = graph_engine.resolve_engine(spark, "auto")
    expected = "graphframes" if graph_engine.graphframes_available(spark) else "dataframes"
    assert chosen == expected
    assert f"graph engine: {expected} (requested auto" in caplog.text


def test_auto_collects_small_graphs_to_the_driver_and_keeps_large_ones_distributed(spark, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.graph.engine")
    assert graph_engine.resolve_engine(spark, "auto", num_edges=10, driver_max_edges=10) == "driver"
    assert graph_engine.resolve_engine(spark, "auto", num_edges=11, driver_max_edges=10) in ("graphframes", "dataframes")
    n, edges = _shapes()["star"]
    vertices, edge_df = _frames(spark, n, edges)
    caplog.clear()
    graph_engine.connected_components(spark, vertices, edge_df, engine="auto", driver_max_edges=0)
    assert "graph engine: driver" not in caplog.text


def test_driver_labels_equal_igraph_whatever_the_vertex_order_and_input_type():
    rng = np.random.default_rng(11)
    n = 400
    edges = [tuple(map(int, e)) for e in rng.integers(0, n, size=(300, 2))]
    expected = _igraph_components(n, edges)
    order = rng.permutation(n)  # vertices listed out of id order
    ids = np.array([f"v{i:05d}" for i in order], dtype=object)
    src = [f"v{a:05d}" for a, _ in edges]
    dst = [f"v{b:05d}" for _, b in edges]
    for as_arrow in (False, True):
        import pyarrow as pa

        got = graph_engine.component_labels(
            pa.chunked_array([pa.array(ids.tolist())]) if as_arrow else ids,
            pa.array(src) if as_arrow else np.array(src, dtype=object), dst)
        assert dict(zip(ids, got)) == expected


def test_driver_engine_refuses_an_edge_to_an_unknown_vertex():
    with pytest.raises(ValueError, match="not in the vertex table"):
        graph_engine.component_labels(np.array(["a", "b"], dtype=object), np.array(["a"]), np.array(["c"]))


def test_unknown_engine_is_refused(spark):
    with pytest.raises(ValueError, match="not one of"):
        graph_engine.resolve_engine(spark, "networkx")


def test_asking_for_graphframes_without_its_jar_says_how_to_get_it(spark):
    if graph_engine.graphframes_available(spark):
        pytest.skip("GraphFrames JAR is loadable in this session")
    with pytest.raises(RuntimeError, match="spark.jars.packages"):
        graph_engine.connected_components(spark, None, None, engine="graphframes")


def test_graphframes_and_dataframe_engines_agree(spark):
    if not graph_engine.graphframes_available(spark):
        pytest.skip(
            f"GraphFrames JVM class {graph_engine.GRAPHFRAMES_CLASS} is not on Spark's classpath "
            "(no io.graphframes artifact reachable here); parity runs where the JAR loads"
        )
    n, edges = _shapes()["random"]
    vertices, edge_df = _frames(spark, n, edges)
    frames = graph_engine.connected_components(spark, vertices, edge_df, engine="graphframes").toPandas()
    dataframes = graph_engine.connected_components(spark, vertices, edge_df, engine="dataframes").toPandas()
    assert dict(frames.itertuples(index=False, name=None)) == dict(dataframes.itertuples(index=False, name=None))
