"""Atomicity partitioning: Leiden atoms of the weighted flow graph, per component."""
from __future__ import annotations

import igraph as ig
import leidenalg
import numpy as np
import pandas as pd
import pytest

from pipeline.graph import partition
from pipeline.graph.partition import PartitionConfig
from pipeline.store.schema import ATOMS

EDGE_COLUMNS = "src string, dst string, relationship string, weight double"


def _planted(blocks, size, seed=0, start=0):
    """Cliques of ``size`` flows (weight 1) chained by one weak edge (weight 0.05)."""
    rng = np.random.default_rng(seed)
    edges, truth = [], {}
    for block in range(blocks):
        members = [start + block * size + i for i in range(size)]
        truth.update({m: block for m in members})
        edges += [(a, b, 1.0) for i, a in enumerate(members) for b in members[i + 1:] if rng.random() < 0.8]
        if block:
            edges.append((members[0] - 1, members[0], 0.05))
    return edges, truth


def _name(i):
    return f"{i:016x}"


def _graph_tables(spark, n_flows, flow_edges, host_edges=()):
    vertices = [(f"flow:{_name(i)}", "flow") for i in range(n_flows)]
    vertices += sorted({(h, "host") for h, _ in host_edges})
    rows = [(f"flow:{_name(a)}", f"flow:{_name(b)}", "similarity", w) for a, b, w in flow_edges]
    rows += [(h, f"flow:{_name(f)}", "src", 1.0) for h, f in host_edges]
    return (
        spark.createDataFrame(vertices, "id string, type string"),
        spark.createDataFrame(rows, EDGE_COLUMNS),
    )


def _groups(labels):
    groups = {}
    for key, label in labels.items():
        groups.setdefault(label, set()).add(key)
    return sorted(map(frozenset, groups.values()), key=min)


def test_leiden_recovers_a_planted_community_structure():
    edges, truth = _planted(blocks=4, size=10)
    a, b, w = (np.array(x) for x in zip(*edges))
    membership = partition.leiden_membership(40, a, b, w, PartitionConfig())
    assert _groups(dict(enumerate(membership))) == _groups(truth)


def test_higher_rb_resolution_gives_more_smaller_atoms():
    edges, _ = _planted(blocks=4, size=10)
    a, b, w = (np.array(x) for x in zip(*edges))
    coarse = partition.leiden_membership(40, a, b, w, PartitionConfig(quality="rb_configuration", resolution=0.001))
    fine = partition.leiden_membership(40, a, b, w, PartitionConfig(quality="rb_configuration", resolution=20.0))
    assert len(set(coarse)) < 4 < len(set(fine))


def test_quality_other_than_modularity_or_rb_configuration_is_refused():
    with pytest.raises(ValueError, match="CPM|not one of"):
        PartitionConfig(quality="cpm")


def test_atom_statistics_of_one_component_by_hand():
    flows = np.array(["e", "c", "a", "b", "d", "f"])
    edges = pd.DataFrame(
        {
            "a": ["a", "a", "b", "d", "d", "e", "c"],
            "b": ["b", "c", "c", "e", "f", "f", "d"],
            "weight": [1.0, 0.5, 0.25, 1.0, 1.0, 1.0, 0.01],  # two triangles, a weak bridge
        }
    )
    atoms = partition.atoms_of_component(flows, edges, PartitionConfig()).set_index("flow_id")
    assert atoms.loc[["a", "b", "c"], "atom_id"].tolist() == ["atom:a"] * 3
    assert atoms.loc[["d", "e", "f"], "atom_id"].tolist() == ["atom:d"] * 3
    assert atoms.loc["a"].drop("atom_id").to_dict() == {
        "component_id": "component:a", "atom_size": 3, "atom_internal_edges": 3,
        "atom_density": 1.0, "atom_internal_weight": 1.75,
    }
    assert atoms.loc["f", "atom_internal_weight"] == 3.0


def test_tiny_components_are_one_atom_each_without_leiden(spark):
    vertices, edge_df = _graph_tables(spark, 5, [(0, 1, 0.5), (1, 2, 0.25)])
    atoms = partition.partition_flows(
        spark, vertices, edge_df, PartitionConfig(tiny_component_size=3)
    ).toPandas().set_index("flow_id")
    assert atoms.loc[_name(0)].to_dict() == {
        "atom_id": f"atom:{_name(0)}", "component_id": f"component:{_name(0)}", "atom_size": 3,
        "atom_internal_edges": 2, "atom_density": pytest.approx(2 / 3), "atom_internal_weight": 0.75,
    }
    assert atoms.loc[_name(4)].to_dict() == {
        "atom_id": f"atom:{_name(4)}", "component_id": f"component:{_name(4)}", "atom_size": 1,
        "atom_internal_edges": 0, "atom_density": 0.0, "atom_internal_weight": 0.0,
    }


def test_per_component_atoms_equal_a_whole_graph_leiden_run(spark):
    left, _ = _planted(blocks=3, size=8, seed=1)
    right, _ = _planted(blocks=2, size=12, seed=2, start=24)
    pair = [(48, 49, 0.7)]  # a tiny component; flows 50..54 are isolated
    edges = left + right + pair
    vertices, edge_df = _graph_tables(spark, 55, edges)
    atoms = partition.partition_flows(spark, vertices, edge_df, PartitionConfig()).toPandas()
    assert list(atoms.columns) == ATOMS.names
    got = _groups(dict(zip(atoms["flow_id"], atoms["atom_id"])))

    whole = ig.Graph(n=55, edges=[(a, b) for a, b, _ in edges])
    whole.es["weight"] = [w for _, _, w in edges]
    expected = leidenalg.find_partition(
        whole, leidenalg.ModularityVertexPartition, weights="weight", n_iterations=2, seed=42
    )
    assert got == _groups({_name(i): c for i, c in enumerate(expected.membership)})


def test_same_input_and_seed_give_the_same_atom_ids_whatever_the_row_order(spark):
    edges, _ = _planted(blocks=3, size=9, seed=3)
    vertices, edge_df = _graph_tables(spark, 27, edges)
    first = partition.partition_flows(spark, vertices, edge_df, PartitionConfig()).toPandas()
    shuffled_edges = spark.createDataFrame(edge_df.toPandas().sample(frac=1.0, random_state=9), EDGE_COLUMNS)
    second = partition.partition_flows(spark, vertices.orderBy("id", ascending=False), shuffled_edges, PartitionConfig()).toPandas()
    key = ["flow_id"]
    assert first.sort_values(key).reset_index(drop=True).equals(second.sort_values(key).reset_index(drop=True))


def test_flows_sharing_a_quiet_host_are_linked_but_a_hub_links_nothing(spark):
    config = PartitionConfig(max_projection_host_degree=3)
    host_edges = [("host:quiet", 0), ("host:quiet", 1), ("host:quiet", 2)]
    host_edges += [("host:hub", i) for i in range(3, 10)]
    vertices, edge_df = _graph_tables(spark, 10, [], host_edges)
    projected = partition.project_flow_graph(edge_df, config).toPandas()
    assert sorted(zip(projected["a"], projected["b"])) == [
        (_name(0), _name(1)), (_name(0), _name(2)), (_name(1), _name(2)),
    ]
    assert projected["weight"].tolist() == [0.5, 0.5, 0.5]


def test_flows_of_one_host_pair_are_linked_unless_the_pair_is_too_busy(spark):
    config = PartitionConfig(max_projection_host_degree=1, max_projection_pair_flows=3)
    rows = []
    for i, (client, server) in enumerate([("a", "b")] * 3 + [("a", "c")] * 4):
        src, dst = (client, server) if i % 2 else (server, client)  # either direction
        rows += [(f"host:{src}", f"flow:{_name(i)}", "src", 1.0), (f"flow:{_name(i)}", f"host:{dst}", "dst", 1.0)]
    projected = partition.project_flow_graph(spark.createDataFrame(rows, EDGE_COLUMNS), config).toPandas()
    assert sorted(zip(projected["a"], projected["b"], projected["weight"])) == [
        (_name(0), _name(1), 0.5), (_name(0), _name(2), 0.5), (_name(1), _name(2), 0.5),
    ]


def test_clique_pairs_joins_every_two_members_of_a_group_and_nothing_across_groups():
    group = np.array([7, 5, 5, 9, 5, 7])
    member = np.array([10, 11, 12, 13, 14, 15])
    weight = np.array([1.0, 0.5, 0.5, 3.0, 0.5, 1.0])
    i, j, w = partition.clique_pairs(group, member, weight)
    assert sorted(zip(i.tolist(), j.tolist(), w.tolist())) == [
        (10, 15, 1.0), (11, 12, 0.5), (11, 14, 0.5), (12, 14, 0.5),
    ]


def test_parallel_edges_are_summed_and_self_loops_dropped():
    a, b, w = partition.sum_parallel_edges(
        np.array([2, 0, 1, 3, 3]), np.array([0, 2, 1, 1, 1]), np.array([0.5, 0.25, 9.0, 1.0, 2.0]), 4
    )
    assert list(zip(a.tolist(), b.tolist(), w.tolist())) == [(0, 2, 0.75), (1, 3, 3.0)]


def test_partition_of_the_compact_graph_equals_leiden_on_its_projection(spark):
    """partition_flows never materialises the host and host-pair cliques; its atoms must
    still be Leiden's on the projected flow graph (project_flow_graph)."""
    rng = np.random.default_rng(4)
    n_flows = 120
    host_edges = [(f"host:h{rng.integers(0, 30)}", f) for f in range(n_flows)]
    host_edges += [(f"host:s{rng.integers(0, 12)}", f) for f in range(n_flows)]
    semantic = [(int(a), int(b), 0.8) for a, b in rng.integers(0, n_flows, size=(40, 2)) if a != b]
    vertices, edge_df = _graph_tables(spark, n_flows, semantic, host_edges)
    config = PartitionConfig(max_projection_host_degree=8)
    atoms = partition.partition_flows(spark, vertices, edge_df, config).toPandas()
    projected = partition.project_flow_graph(edge_df, config).toPandas().sort_values(["a", "b"])
    index = {_name(i): i for i in range(n_flows)}
    whole = ig.Graph(n=n_flows, edges=[(index[a], index[b]) for a, b in zip(projected["a"], projected["b"])])
    whole.es["weight"] = projected["weight"].tolist()
    expected = leidenalg.find_partition(
        whole, leidenalg.ModularityVertexPartition, weights="weight", n_iterations=2, seed=42
    )
    got = _groups(dict(zip(atoms["flow_id"], atoms["atom_id"])))
    assert got == _groups({_name(i): c for i, c in enumerate(expected.membership)})
    assert len(got) < n_flows  # the quiet hosts did link flows


def test_more_leiden_tasks_for_a_bigger_night_change_no_atom(spark):
    """flows_per_leiden_task only spreads the components over more tasks (bounded memory)."""
    left, _ = _planted(blocks=3, size=8, seed=1)
    right, _ = _planted(blocks=2, size=12, seed=2, start=24)
    vertices, edge_df = _graph_tables(spark, 55, left + right + [(48, 49, 0.7)])
    default = partition.partition_flows(spark, vertices, edge_df, PartitionConfig()).toPandas()
    spread = partition.partition_flows(
        spark, vertices, edge_df, PartitionConfig(leiden_buckets=1, flows_per_leiden_task=3)).toPandas()
    key = ["flow_id"]
    assert default.sort_values(key).reset_index(drop=True).equals(spread.sort_values(key).reset_index(drop=True))


# ------------------------------------------------------------------ time slices (max_leiden_flows)
def test_time_slices_cut_a_component_into_consecutive_runs_of_at_most_the_cap():
    times = np.array([50, 10, 10, 40, np.nan, 20, 30, 60, 70, 80], dtype=np.float64)
    ids = np.array(["j", "b", "a", "i", "c", "e", "f", "g", "h", "d"], dtype=object)
    slices = partition.time_slices(times, ids, 4)
    # order by (time, id), unknown time last: a b e f i j g h d c; k = ceil(10 / 4) = 3
    assert dict(zip(ids, slices.tolist())) == {
        "a": 0, "b": 0, "e": 0, "f": 0, "i": 1, "j": 1, "g": 1, "h": 2, "d": 2, "c": 2,
    }
    assert partition.time_slices(times, ids, 10).tolist() == [-1] * 10
    assert partition.time_slices(times, ids, 0).tolist() == [-1] * 10


def test_the_slices_of_a_cut_component_never_exceed_the_cap_and_differ_by_at_most_one_flow():
    rng = np.random.default_rng(5)
    for n, cap in [(101, 100), (1000, 7), (999, 333), (5, 2)]:
        sizes = np.bincount(partition.time_slices(rng.integers(0, 50, n).astype(float), np.arange(n), cap))
        assert sizes.max() <= cap and sizes.max() - sizes.min() <= 1 and sizes.sum() == n


def test_a_slice_without_internal_edges_is_one_atom_per_flow():
    flows = np.array(["a", "b", "c", "d"], dtype=object)
    edges = pd.DataFrame({"a": ["a", "b"], "b": ["c", "d"], "weight": [1.0, 1.0]})  # both cross the cut
    atoms = partition.atoms_of_component(
        flows, edges, PartitionConfig(max_leiden_flows=2), first_seen_ms=np.array([1, 2, 3, 4]),
    ).set_index("flow_id")
    assert atoms["atom_id"].to_dict() == {f: f"atom:{f}" for f in "abcd"}
    assert set(atoms["component_id"]) == {"component:a"}
    with pytest.raises(ValueError, match="first_seen_ms"):
        partition.atoms_of_component(flows, edges, PartitionConfig(max_leiden_flows=2))


def _sliced_night(spark, shuffle=False):
    """One 40-flow component: four planted 10-flow blocks in time order, chained by weak
    edges, plus a strong edge from block 1 to block 2 (across the cut at a cap of 20)."""
    edges, _ = _planted(blocks=4, size=10, seed=6)
    edges.append((15, 25, 5.0))
    vertices, edge_df = _graph_tables(spark, 40, edges)
    flows = spark.createDataFrame([(_name(i), 1_000 * (i // 10) + i) for i in range(40)],
                                  "flow_id string, first_seen_ms long")
    if shuffle:
        vertices = vertices.orderBy("id", ascending=False)
        edge_df = spark.createDataFrame(edge_df.toPandas().sample(frac=1.0, random_state=3), EDGE_COLUMNS)
    return edges, vertices, edge_df, flows


@pytest.mark.parametrize("tasks", [{"leiden_buckets": 1}, {"leiden_buckets": 1, "flows_per_leiden_task": 1}])
def test_a_component_above_the_cap_is_partitioned_per_time_slice_without_the_edges_across(spark, tasks):
    edges, vertices, edge_df, flows = _sliced_night(spark)
    config = PartitionConfig(max_leiden_flows=20, **tasks)
    atoms = partition.partition_flows(spark, vertices, edge_df, config, flows).toPandas()
    assert list(atoms.columns) == ATOMS.names
    # expected: each slice (flows 0-19, 20-39) alone, its own edges only, whole-graph scaling
    total = sum(w for _, _, w in edges)
    expected = []
    for part in (range(0, 20), range(20, 40)):
        inside = pd.DataFrame([(_name(a), _name(b), w) for a, b, w in edges if a in part and b in part],
                              columns=["a", "b", "weight"])
        expected.append(partition.atoms_of_component(
            np.array([_name(i) for i in part], dtype=object), inside, PartitionConfig(), total))
    expected = pd.concat(expected).assign(component_id=f"component:{_name(0)}")
    key = ["flow_id"]
    assert atoms.sort_values(key).reset_index(drop=True).equals(expected.sort_values(key).reset_index(drop=True))
    assert atoms.set_index("flow_id").loc[_name(15), "atom_id"] != atoms.set_index("flow_id").loc[_name(25), "atom_id"]


def test_cut_atoms_have_the_same_ids_whatever_the_row_order(spark):
    _, vertices, edge_df, flows = _sliced_night(spark)
    _, shuffled_vertices, shuffled_edges, _ = _sliced_night(spark, shuffle=True)
    config = PartitionConfig(max_leiden_flows=20)
    first = partition.partition_flows(spark, vertices, edge_df, config, flows).toPandas()
    second = partition.partition_flows(spark, shuffled_vertices, shuffled_edges, config, flows).toPandas()
    key = ["flow_id"]
    assert first.sort_values(key).reset_index(drop=True).equals(second.sort_values(key).reset_index(drop=True))


def test_below_the_cap_the_atoms_are_those_without_a_cap_and_no_times_are_read(spark):
    _, vertices, edge_df, flows = _sliced_night(spark)
    uncapped = partition.partition_flows(spark, vertices, edge_df, PartitionConfig(max_leiden_flows=0)).toPandas()
    key = ["flow_id"]
    for config in (PartitionConfig(), PartitionConfig(max_leiden_flows=40)):
        capped = partition.partition_flows(spark, vertices, edge_df, config).toPandas()  # no flows_df needed
        assert capped.sort_values(key).reset_index(drop=True).equals(uncapped.sort_values(key).reset_index(drop=True))
    with pytest.raises(ValueError, match="max_leiden_flows"):
        partition.partition_flows(spark, vertices, edge_df, PartitionConfig(max_leiden_flows=39))


def test_the_default_cap_leaves_existing_model_versions_unchanged():
    import dataclasses

    from jobs.config import config_as_dict

    assert "max_leiden_flows" not in config_as_dict(PartitionConfig())["PartitionConfig"]
    assert config_as_dict(dataclasses.replace(PartitionConfig(), max_leiden_flows=20))["PartitionConfig"][
        "max_leiden_flows"] == 20
