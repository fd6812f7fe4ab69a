"""The heterogeneous interaction graph: vertices, physical and semantic edges, bounds."""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from pipeline.graph import build as graph
from pipeline.graph import signatures
from pipeline.graph.build import GraphConfig
from pipeline.store.schema import SPLT_LENGTH, spark_schema

FLOW_COLUMNS = (
    "flow_id string, src_ip string, dst_ip string, first_seen_ms long, "
    "bidirectional_packets long, splt_signed_ps array<int>, dst_port int, protocol int"
)
OLD_FLOW_COLUMNS = FLOW_COLUMNS.rsplit(", dst_port", 1)[0]  # before fan-in: no service columns
RELAY_AND_SIMILARITY = GraphConfig(fanin_edges=False)
FANIN = GraphConfig(fanin_edges=True)
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


def _flow(flow_id, src, dst, t_ms, packets=2, splt=None, dst_port=443, protocol=6):
    splt = splt if splt is not None else [100, -100][:packets]
    return (flow_id, src, dst, t_ms, packets, splt, dst_port, protocol)


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
    # fan-in off: s1, s4 and s5 also reach one service within 1 s (fan-in tests below)
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
    _, edges = _build(spark, rows, stats, RELAY_AND_SIMILARITY)
    assert _semantic(edges) == {("flow:s1", "flow:s2", "similarity"): pytest.approx(1.0)}


def test_each_flow_keeps_at_most_k_semantic_edges_the_strongest(spark, stats):
    config = GraphConfig(fanin_edges=True, max_semantic_edges_per_flow=3)  # all three kinds
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
            "dst_port": 53,                   # ... and every pair is a fan-in candidate
            "protocol": 17,
        }
    )
    start = time.monotonic()
    flows = spark.createDataFrame(pdf, FLOW_COLUMNS)
    vertices, edges = graph.build_graph(flows, FANIN, stats)  # every edge kind on
    counts = edges.groupBy("relationship").count().toPandas().set_index("relationship")["count"]
    elapsed = time.monotonic() - start
    assert counts["src"] == n and counts["dst"] == n
    assert counts.sum() <= k * n + 2 * n
    assert counts.get("similarity", 0) > 0
    assert elapsed < 180, f"50k-client hub took {elapsed:.0f} s"


# ------------------------------------------------------------------------------ fan-in
def _components(flow_ids, pairs):
    parent = {f: f for f in flow_ids}

    def root(f):
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups = {}
    for f in flow_ids:
        groups.setdefault(root(f), set()).add(f)
    return sorted(groups.values(), key=len, reverse=True)


def test_a_fan_in_burst_from_many_sources_to_one_service_becomes_connected(spark, stats):
    # a spoofed SYN flood: 30 one-packet flows from 30 sources to 10.0.0.80:80/tcp, 20 ms apart
    burst = [_flow(f"d{i:02d}", f"203.0.113.{i}", "10.0.0.80", 10_000 + 20 * i, 1, [60], 80, 6)
             for i in range(30)]
    others = [
        _flow("late", "203.0.113.99", "10.0.0.80", 20_000, 1, [60], 80, 6),  # > 1 s after the burst
        _flow("port", "203.0.113.98", "10.0.0.80", 10_100, 1, [60], 22, 6),  # another port
        _flow("udp", "203.0.113.97", "10.0.0.80", 10_100, 1, [60], 80, 17),  # another protocol
        _flow("host", "203.0.113.96", "10.0.0.81", 10_100, 1, [60], 80, 6),  # another responder
        _flow("again", "203.0.113.5", "10.0.0.80", 10_110, 1, [60], 80, 6),  # d05's source again
    ]
    _, edges = _build(spark, burst + others, stats, FANIN)
    semantic = _semantic(edges)
    assert {kind for _, _, kind in semantic} == {"fanin"}
    pairs = [(a[len("flow:"):], b[len("flow:"):]) for a, b, _ in semantic]
    ids = [row[0] for row in burst + others]
    groups = _components(ids, pairs)
    assert groups[0] == {row[0] for row in burst} | {"again"}
    assert all(len(g) == 1 for g in groups[1:])
    assert ("flow:again", "flow:d05", "fanin") not in semantic  # same source: not fan-in
    per_flow = pd.Series([f for a, b in pairs for f in (a, b)]).value_counts()
    assert per_flow.max() <= GraphConfig().max_semantic_edges_per_flow
    # weight exp(-dt / 1 s), stored once with a < b
    assert semantic[("flow:d00", "flow:d01", "fanin")] == pytest.approx(math.exp(-0.02))
    assert all(a < b for a, b, _ in semantic)


def test_fan_in_needs_the_flows_to_start_within_the_window(spark, stats):
    rows = [_flow("a", "10.0.5.1", "10.0.0.53", 0, dst_port=53, protocol=17),
            _flow("b", "10.0.5.2", "10.0.0.53", 1_000, dst_port=53, protocol=17),   # dt = 1 s: in
            _flow("c", "10.0.5.3", "10.0.0.53", 2_001, dst_port=53, protocol=17)]   # 1.001 s after b
    _, edges = _build(spark, rows, stats, FANIN)
    assert _semantic(edges) == {("flow:a", "flow:b", "fanin"): pytest.approx(math.exp(-1.0))}
    _, edges = _build(spark, rows, stats, GraphConfig(fanin_edges=True, fanin_window_s=2.0))
    assert set(_semantic(edges)) == {("flow:a", "flow:b", "fanin"), ("flow:b", "flow:c", "fanin")}


def test_a_busy_benign_server_keeps_at_most_k_fan_in_edges_per_flow(spark, stats):
    n, k = 3_000, GraphConfig().max_semantic_edges_per_flow
    rng = np.random.default_rng(5)
    rows = [_flow(f"q{i:05d}", f"10.1.{i // 250}.{i % 250}", "10.0.0.53", int(t), 2, [70, -120], 53, 17)
            for i, t in enumerate(np.sort(rng.integers(0, 1_000, size=n)))]  # 3,000 clients in 1 s
    _, edges = _build(spark, rows, stats, FANIN)
    semantic = edges[edges["relationship"].isin(graph.SEMANTIC_RELATIONSHIPS)]
    per_flow = pd.concat([semantic["src"], semantic["dst"]]).value_counts()
    assert set(semantic["relationship"]) == {"fanin"}
    assert per_flow.max() <= k
    assert len(semantic) <= k * n / 2
    assert len(semantic) >= n  # the burst is grouped, not dropped


def test_fan_in_never_displaces_relay_or_similarity_edges():
    k = 2
    candidates = pd.DataFrame(
        {
            "a": ["x", "x", "x", "x", "y"],
            "b": ["s1", "s2", "f1", "f2", "f3"],
            "relationship": ["similarity", "relay", "fanin", "fanin", "fanin"],
            "weight": [0.96, 0.40, 0.999, 0.998, 0.5],
        }
    )
    kept = graph.mutual_strongest(candidates, k)
    # x keeps its two weaker relay/similarity edges before two near-simultaneous fan-ins;
    # y, with no other evidence, keeps its fan-in edge
    assert sorted(zip(kept["a"], kept["b"], kept["relationship"])) == [
        ("x", "s1", "similarity"), ("x", "s2", "relay"), ("y", "f3", "fanin"),
    ]


def test_fan_in_priority_is_the_same_in_the_spark_selection(spark, stats):
    config = GraphConfig(fanin_edges=True, max_semantic_edges_per_flow=2)
    # h = 10.0.0.7: "in" arrives, then two relays out of it; just before it, four other
    # sources hit the same service (fan-in candidates of "in", stronger than its relays)
    rows = [_flow("in", "10.0.2.1", "10.0.0.7", 1_000, dst_port=8080)]
    rows += [_flow(f"out{j}", "10.0.0.7", f"10.0.3.{j}", 1_000 + 300 * j) for j in (1, 2)]
    rows += [_flow(f"fan{j}", f"10.0.4.{j}", "10.0.0.7", 1_000 - j, dst_port=8080) for j in range(1, 5)]
    _, edges = _build(spark, rows, stats, config)
    mine = {key for key in _semantic(edges) if "flow:in" in key[:2]}
    assert mine == {("flow:in", "flow:out1", "relay"), ("flow:in", "flow:out2", "relay")}


def test_disabled_fan_in_gives_the_relay_and_similarity_graph(spark, stats):
    rows = [_flow(f"d{i:02d}", f"203.0.113.{i}", "10.0.0.80", 10_000 + 20 * i, 1, [60], 80, 6) for i in range(10)]
    rows += [
        _flow("a", "10.0.0.1", "10.0.0.9", 1_000),
        _flow("b", "10.0.0.9", "8.8.8.8", 1_500),
        _flow("s1", "10.0.0.1", "10.0.0.5", 0, 20, PATTERN),
        _flow("s2", "10.0.0.2", "10.0.0.5", 9_000, 25, PATTERN),
    ]
    vertices, edges = _build(spark, rows, stats, RELAY_AND_SIMILARITY)
    assert _semantic(edges) == {
        ("flow:a", "flow:b", "relay"): pytest.approx(math.exp(-0.5)),
        ("flow:s1", "flow:s2", "similarity"): pytest.approx(1.0),
    }
    # ... and still accepts the flow columns it read before fan-in existed
    old = spark.createDataFrame([row[:6] for row in rows], OLD_FLOW_COLUMNS)
    old_vertices, old_edges = graph.build_graph(old, RELAY_AND_SIMILARITY, stats)
    assert sorted(map(tuple, old_edges.toPandas().to_numpy())) == sorted(map(tuple, edges.to_numpy()))
    assert sorted(map(tuple, old_vertices.toPandas().to_numpy())) == sorted(map(tuple, vertices.to_numpy()))


def test_the_partition_projects_every_semantic_relationship(spark):
    from pipeline.graph.partition import PartitionConfig, flow_graph_parts

    rows = [(f"flow:{i}a", f"flow:{i}b", kind, 0.5) for i, kind in enumerate(graph.SEMANTIC_RELATIONSHIPS)]
    edges = spark.createDataFrame(rows, "src string, dst string, relationship string, weight double")
    semantic, _ = flow_graph_parts(edges, PartitionConfig())
    assert sorted(semantic.toPandas()["a"]) == [f"{i}a" for i in range(len(graph.SEMANTIC_RELATIONSHIPS))]


def test_more_candidate_tasks_for_a_bigger_night_change_no_edge(spark, stats):
    """incidences_per_task only spreads the hosts over more tasks (bounded memory)."""
    rows = [_flow(f"f{i:02d}", f"10.0.1.{i % 5}", f"10.0.2.{i % 3}", 100 * i, 20, PATTERN) for i in range(30)]
    _, default = _build(spark, rows, stats)
    _, spread = _build(spark, rows, stats, GraphConfig(host_buckets=1, incidences_per_task=4))
    assert sorted(map(tuple, spread.to_numpy())) == sorted(map(tuple, default.to_numpy()))
    assert len(_semantic(default)) > 0


# ------------------------------------------------------- fan-in scope: quiet in training
SCOPED_FANIN = GraphConfig(fanin_edges=True, fanin_scope="no_training_fanin")


def _burst(prefix, dst, port, protocol, start_ms, sources=5, gap_ms=100):
    """``sources`` one-packet flows from distinct sources to one service, ``gap_ms`` apart."""
    return [_flow(f"{prefix}{i}", f"198.51.100.{i}", dst, start_ms + gap_ms * i, 1, [60], port, protocol)
            for i in range(sources)]


def test_fanin_services_are_those_where_two_initiators_arrive_within_the_window(spark):
    rows = (
        _burst("dns", "10.0.0.53", 53, 17, 0)                          # 5 clients in 0.4 s
        + [_flow("w1", "10.0.5.1", "10.0.0.80", 0, dst_port=80),       # two clients 1.5 s apart
           _flow("w2", "10.0.5.2", "10.0.0.80", 1_500, dst_port=80)]
        + [_flow(f"r{i}", "10.0.5.9", "10.0.0.22", 10 * i, dst_port=22) for i in range(4)]  # one client
        + [_flow("n1", "10.0.5.1", "10.0.0.7", 0, dst_port=None, protocol=None),  # no port/protocol
           _flow("n2", "10.0.5.2", "10.0.0.7", 300, dst_port=None, protocol=None)]
    )
    history = graph.fanin_services(spark.createDataFrame(rows, FLOW_COLUMNS), GraphConfig()).toPandas()
    found = {(r.dst_ip, r.dst_port, r.protocol): r.fanin_flows for r in history.itertuples()}
    # a flow counts when another initiator's flow started <= 1 s before it (the first does not)
    assert found == {("10.0.0.53", 53, 17): 4, ("10.0.0.7", -1, -1): 1}
    wider = graph.fanin_services(spark.createDataFrame(rows, FLOW_COLUMNS), GraphConfig(fanin_window_s=2.0))
    assert ("10.0.0.80", 80, 6) in {(r.dst_ip, r.dst_port, r.protocol) for r in wider.toPandas().itertuples()}
    declared = [f.name for f in spark_schema("graph_fanin_services")]
    assert history.columns.tolist() == declared


def test_scoped_fan_in_adds_edges_only_at_services_quiet_in_training(spark, stats):
    training = _burst("old", "10.0.0.53", 53, 17, 0) + _burst("web", "10.0.0.80", 80, 6, 0, sources=1)
    history = graph.fanin_services(spark.createDataFrame(training, FLOW_COLUMNS), SCOPED_FANIN)
    night = (
        _burst("dns", "10.0.0.53", 53, 17, 50_000)      # the resolver's usual fan-in
        + _burst("syn", "10.0.0.80", 80, 6, 50_000)     # a burst at a service quiet in training
        + _burst("new", "10.0.0.99", 443, 6, 50_000)    # ... and at a service never seen
    )
    flows = spark.createDataFrame(night, FLOW_COLUMNS)
    _, edges = graph.build_graph(flows, SCOPED_FANIN, stats, history)
    touched = {flow[len("flow:"):len("flow:") + 3] for key in _semantic(edges.toPandas()) for flow in key[:2]}
    assert touched == {"syn", "new"}
    _, unscoped = graph.build_graph(flows, FANIN, stats)
    assert {flow[5:8] for key in _semantic(unscoped.toPandas()) for flow in key[:2]} == {"dns", "syn", "new"}


def test_scoped_fan_in_without_the_training_history_is_refused(spark, stats):
    flows = spark.createDataFrame(_burst("syn", "10.0.0.80", 80, 6, 0), FLOW_COLUMNS)
    with pytest.raises(ValueError, match="training window's fanin_services"):
        graph.build_graph(flows, SCOPED_FANIN, stats)
    with pytest.raises(ValueError, match="fanin_scope must be one of"):
        graph.build_graph(flows, GraphConfig(fanin_edges=True, fanin_scope="some"), stats)
    # fan-in off: no history needed, whatever the scope says
    graph.build_graph(flows, GraphConfig(fanin_edges=False, fanin_scope="no_training_fanin"), stats)


def test_fan_in_candidates_skip_flows_marked_ineligible():
    incidences = pd.DataFrame({
        "host": ["10.0.0.80"] * 3, "role": ["in"] * 3, "peer": ["a", "b", "c"],
        "dst_port": [80] * 3, "protocol": [6] * 3, "flow_id": ["x", "y", "z"],
        "first_seen_ms": [0, 10, 20], "fanin_eligible": [True, True, False],
    })
    found = graph.fanin_candidates(incidences, FANIN)
    assert list(zip(found["a"], found["b"])) == [("x", "y")]


def test_fan_in_settings_are_moot_when_fan_in_is_off():
    off = GraphConfig(fanin_edges=False, fanin_window_s=3.0, fanin_scope="no_training_fanin")
    assert off.effective() == GraphConfig(fanin_edges=False)
    on = GraphConfig(fanin_edges=True, fanin_window_s=3.0, fanin_scope="no_training_fanin")
    assert on.effective() == on
    assert GraphConfig(max_semantic_edges_per_flow=5).effective().max_semantic_edges_per_flow == 5
