"""The heterogeneous interaction graph: vertices, physical and semantic edges, bounds."""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from pipeline import graph, signatures
from pipeline.graph import GraphConfig
from pipeline.schema import SPLT_LENGTH, spark_schema

FLOW_COLUMNS = (
    "flow_id string, src_ip string, dst_ip string, first_seen_ms long, "
    "bidirectional_packets long, splt_signed_ps array<int>"
)
RNG = np.random.default_rng(7)
PATTERN = (RNG.integers(40, 1500, size=SPLT_LENGTH) * RNG.choice([-1, 1], size=SPLT_LENGTH)).tolist()


def _random_pattern(seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(40, 1500, size=SPLT_LENGTH) * rng.choice([-1, 1], size=SPLT_LENGTH)).tolist()


@pytest.fixture(scope="module")
def stats():
    train = pd.DataFrame(
        {"splt_signed_ps": [_random_pattern(s) for s in range(100)], "bidirectional_packets": [20] * 100}
    )
    return signatures.fit_signature_normalisation(train)


def _flow(flow_id, src, dst, t_ms, packets=2, splt=None):
    return (flow_id, src, dst, t_ms, packets, splt if splt is not None else [100, -100][:packets])


def _build(spark, rows, stats, config=GraphConfig()):
    flows = spark.createDataFrame(rows, FLOW_COLUMNS)
    vertices, edges = graph.build_graph(flows, config, stats)
    return vertices.toPandas(), edges.toPandas()


def _semantic(edges):
    semantic = edges[edges["relationship"].isin(graph.SEMANTIC_RELATIONSHIPS)]
    return {(r.src, r.dst, r.relationship): r.weight for r in semantic.itertuples()}


def test_tables_have_graphframes_schema_with_host_and_flow_vertices(spark, stats):
    flows = spark.createDataFrame([_flow("f1", "10.0.0.1", "10.0.0.2", 0)], FLOW_COLUMNS)
    vertices, edges = graph.build_graph(flows, GraphConfig(), stats)
    for frame, table in ((vertices, "graph_vertices"), (edges, "graph_edges")):
        declared = [(f.name, f.dataType) for f in spark_schema(table)]
        assert [(f.name, f.dataType) for f in frame.schema] == declared
    assert sorted(map(tuple, vertices.toPandas().to_numpy())) == [
        ("flow:f1", "flow"), ("host:10.0.0.1", "host"), ("host:10.0.0.2", "host"),
    ]
    assert sorted(map(tuple, edges.toPandas().to_numpy())) == [
        ("flow:f1", "host:10.0.0.2", "dst", 1.0), ("host:10.0.0.1", "flow:f1", "src", 1.0),
    ]


def test_relay_joins_a_flow_into_a_host_to_a_flow_out_of_it_within_one_second(spark, stats):
    rows = [
        _flow("a", "10.0.0.1", "10.0.0.9", 1_000),   # into H=10.0.0.9
        _flow("b", "10.0.0.9", "8.8.8.8", 1_500),     # out of H 0.5 s later: relay
        _flow("c", "10.0.0.9", "8.8.4.4", 2_200),     # out of H 1.2 s later: too late
        _flow("d", "10.0.0.9", "1.1.1.1", 900),       # out of H before a: not a relay
    ]
    _, edges = _build(spark, rows, stats)
    assert _semantic(edges) == {("flow:a", "flow:b", "relay"): pytest.approx(math.exp(-0.5))}


def test_similarity_needs_same_host_time_packets_and_correlated_signatures(spark, stats):
    other = _random_pattern(999)
    rows = [
        _flow("s1", "10.0.0.1", "10.0.0.5", 0, 20, PATTERN),
        _flow("s2", "10.0.0.2", "10.0.0.5", 9_000, 25, PATTERN),     # similar to s1
        _flow("s3", "10.0.0.3", "10.0.0.5", 30_000, 20, PATTERN),    # > 10 s from the others
        _flow("s4", "10.0.0.4", "10.0.0.5", 1_000, 40, PATTERN),     # packet gap > 10
        _flow("s5", "10.0.0.6", "10.0.0.5", 2_000, 8, PATTERN[:8]),  # not more than 8 packets
        _flow("s6", "10.0.0.7", "10.0.0.5", 3_000, 20, other),       # uncorrelated signature
        _flow("s7", "10.0.0.8", "10.0.0.66", 500, 20, PATTERN),      # another host only
    ]
    _, edges = _build(spark, rows, stats)
    assert _semantic(edges) == {("flow:s1", "flow:s2", "similarity"): pytest.approx(1.0)}


def test_each_flow_keeps_at_most_k_semantic_edges_the_strongest(spark, stats):
    config = GraphConfig(max_semantic_edges_per_flow=3)
    # six similar flows at one host within a few seconds: a 6-clique of candidates
    rows = [_flow(f"f{i}", f"10.0.1.{i}", "10.0.0.5", i * 100, 20, PATTERN) for i in range(6)]
    # one flow into a relay host followed by five flows out of it, closer = stronger
    rows += [_flow("in", "10.0.2.1", "10.0.0.7", 50_000)]
    rows += [_flow(f"out{j}", "10.0.0.7", f"10.0.3.{j}", 50_000 + 100 * j) for j in range(1, 6)]
    _, edges = _build(spark, rows, stats, config)
    semantic = edges[edges["relationship"].isin(graph.SEMANTIC_RELATIONSHIPS)]
    per_flow = pd.concat([semantic["src"], semantic["dst"]]).value_counts()
    assert per_flow.max() <= 3
    relays = sorted(semantic.loc[semantic["relationship"] == "relay", "dst"])
    assert relays == ["flow:out1", "flow:out2", "flow:out3"]


def test_candidate_search_at_a_100k_flow_host_is_linear_not_quadratic():
    n, cap = 100_000, 64
    keys = np.zeros(n, dtype=np.int64)                 # one resolver
    times = np.sort(np.random.default_rng(0).integers(0, 1_000, size=n))  # all in 1 s
    left, right = graph._window_pairs(keys, times, 10_000.0, cap)
    assert len(left) <= n * cap
    assert np.all(right - left <= cap)


@pytest.mark.slow
def test_one_server_with_50000_clients_keeps_edges_within_the_bound(spark, stats):
    n, k = 50_000, GraphConfig().max_semantic_edges_per_flow
    rng = np.random.default_rng(11)
    pdf = pd.DataFrame(
        {
            "flow_id": [f"{i:016x}" for i in range(n)],
            "src_ip": [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(n)],
            "dst_ip": "10.0.0.53",
            "first_seen_ms": np.sort(rng.integers(0, 5_000, size=n)),  # all within 5 s
            "bidirectional_packets": 20,
            "splt_signed_ps": [PATTERN] * n,  # worst case: every pair is similar
        }
    )
    start = time.monotonic()
    flows = spark.createDataFrame(pdf, FLOW_COLUMNS)
    vertices, edges = graph.build_graph(flows, GraphConfig(), stats)
    counts = edges.groupBy("relationship").count().toPandas().set_index("relationship")["count"]
    elapsed = time.monotonic() - start
    assert counts["src"] == n and counts["dst"] == n
    assert counts.sum() <= k * n + 2 * n
    assert counts.get("similarity", 0) > 0
    assert elapsed < 180, f"50k-client hub took {elapsed:.0f} s"
