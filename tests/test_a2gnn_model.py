"""A2GNN model and training maths: isolation, losses, anchors, no collapse, determinism."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.a2gnn import A2GNN, atom_mean, isolation_mask
from models.a2gnn_training import (
    A2GNNConfig, AtomGraph, atom_anchors, anchor_radii, anchor_scales, atom_batches, atom_shift,
    centroid_cross_entropy, check_detector_config, combined_score, detector_scores, embed, fit_detector, info_nce,
    nearest_anchor, split_holdout, train_model,
)



@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny graphs: one thread is fastest and results compare bit for bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY = A2GNNConfig(hidden=16, heads=2, out_dim=8, epochs=4, atoms_per_batch=32, seed=7)


def chain_graph(num_atoms: int = 60, num_features: int = 12, seed: int = 0) -> AtomGraph:
    """Atoms of 1..8 flows, each a chain of edges, features clustered per atom."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, num_atoms)
    atom = np.repeat(np.arange(num_atoms), sizes)
    centres = rng.normal(size=(num_atoms, num_features))
    x = centres[atom] + 0.5 * rng.normal(size=(atom.size, num_features))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pairs = [(s + i, s + i + 1) for s, n in zip(starts, sizes) for i in range(n - 1)]
    src, dst = (np.array(p, dtype=np.int64) for p in zip(*pairs))
    return AtomGraph(x.astype(np.float32), atom, np.stack([np.r_[src, dst], np.r_[dst, src]]))


def test_isolation_mask_keeps_only_edges_inside_one_atom():
    edges = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    atoms = torch.tensor([0, 0, 1, 1])

    assert isolation_mask(edges, atoms).tolist() == [True, False, True, False]


def test_atom_mean_averages_within_each_atom_only():
    values = torch.tensor([[1.0], [3.0], [10.0]])

    assert atom_mean(values, torch.tensor([5, 5, 2])).flatten().tolist() == [2.0, 2.0, 10.0]


def test_changing_a_flow_in_one_atom_leaves_every_embedding_of_another_atom_bit_identical():
    torch.manual_seed(0)
    model = A2GNN(in_dim=6, hidden=8, heads=2, out_dim=4).eval()
    x = torch.randn(7, 6)
    atoms = torch.tensor([0, 0, 0, 1, 1, 1, 1])  # A = flows 0-2, B = flows 3-6
    # intra-atom edges plus edges crossing from A to B, which the mask must drop
    edges = torch.tensor([[0, 1, 3, 4, 5, 0, 2, 1], [1, 2, 4, 5, 6, 3, 6, 5]])
    with torch.no_grad():
        before, _ = model(x, edges, atoms)
        changed = x.clone()
        changed[1] = torch.randn(6) * 100.0
        after, _ = model(changed, edges, atoms)

    assert torch.equal(before[3:], after[3:])
    assert not torch.allclose(before[:3], after[:3])


def test_atom_batches_respect_the_atom_and_flow_caps_and_cover_every_atom_once():
    sizes = np.array([3, 50, 2, 2, 9, 1, 1])

    batches = atom_batches(sizes, atoms_per_batch=3, max_batch_flows=10, rng=None)

    assert sorted(np.concatenate(batches).tolist()) == list(range(sizes.size))
    for batch in batches:
        assert len(batch) <= 3
        assert sizes[batch].sum() <= 10 or len(batch) == 1


def test_info_nce_prefers_aligned_views_over_shuffled_ones():
    torch.manual_seed(0)
    p = torch.randn(32, 8)

    aligned = info_nce(p, p + 0.01 * torch.randn(32, 8), temperature=0.5)
    shuffled = info_nce(p, p[torch.randperm(32)], temperature=0.5)

    assert aligned < shuffled


def test_centroid_cross_entropy_is_lower_when_nodes_sit_at_their_own_centroid():
    atoms = torch.tensor([0, 0, 1, 1])
    tight = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])

    assert centroid_cross_entropy(tight, atoms, 0.5) < centroid_cross_entropy(mixed, atoms, 0.5)


def test_nearest_anchor_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    z, anchors = rng.normal(size=(500, 8)), rng.normal(size=(40, 8))

    distance, index = nearest_anchor(z, anchors, chunk=64)

    brute = np.linalg.norm(z[:, None, :] - anchors[None, :, :], axis=2)
    np.testing.assert_array_equal(index, brute.argmin(axis=1))
    np.testing.assert_allclose(distance, brute.min(axis=1), rtol=1e-5)


def test_anchors_are_the_mean_embedding_of_each_atom():
    z = np.array([[0.0, 0.0], [2.0, 2.0], [5.0, 1.0]], dtype=np.float32)

    np.testing.assert_allclose(atom_anchors(z, np.array([0, 0, 1])), [[1.0, 1.0], [5.0, 1.0]])


@pytest.fixture(scope="module")
def trained():
    graph = chain_graph()
    model, _ = train_model(graph, TINY, torch.device("cpu"))
    return graph, model


def test_embedding_by_atom_batches_equals_embedding_the_whole_graph_at_once(trained):
    graph, model = trained

    batched = embed(model, graph, TINY)
    with torch.no_grad():
        whole, _ = model(torch.from_numpy(graph.x), torch.from_numpy(graph.edge_index),
                         torch.from_numpy(graph.atom))

    np.testing.assert_allclose(batched, whole.numpy(), rtol=1e-5, atol=1e-6)


def test_training_lowers_the_loss_and_members_of_an_atom_do_not_collapse_to_one_point():
    graph = chain_graph()
    config = A2GNNConfig(hidden=16, heads=2, out_dim=8, epochs=8, atoms_per_batch=32, seed=7)

    model, metrics = train_model(graph, config, torch.device("cpu"))
    z = embed(model, graph, config)

    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    overall = np.linalg.norm(z - z.mean(axis=0), axis=1).mean()
    for atom in np.flatnonzero(graph.atom_sizes() >= 4):
        members = z[graph.atom == atom]
        spread = np.linalg.norm(members - members.mean(axis=0), axis=1).mean()
        assert spread > 0.01 * overall, f"atom {atom} collapsed (spread {spread:.2e})"


def test_training_twice_with_the_same_seed_gives_identical_scores_on_cpu():
    graph = chain_graph(num_atoms=30)
    config = A2GNNConfig(hidden=16, heads=2, out_dim=8, epochs=2, atoms_per_batch=16, seed=3)

    first = fit_detector(train_model(graph, config, torch.device("cpu"))[0], graph, config)
    second = fit_detector(train_model(graph, config, torch.device("cpu"))[0], graph, config)

    np.testing.assert_array_equal(first["train_scores"], second["train_scores"])
    assert first["threshold"] == second["threshold"]


@pytest.mark.parametrize("variant", [
    {"calibration": "in_sample", "anchor_scale": "none", "structure": "none"},
    {"calibration": "own_atom_out", "anchor_scale": "radius", "structure": "none"},
    {"calibration": "own_atom_out", "anchor_scale": "radius", "structure": "atom_shift"},
])
def test_an_outlying_flow_scores_above_the_training_threshold(trained, variant):
    graph, model = trained
    config = A2GNNConfig(**{**TINY.to_dict(), **variant})
    detector = fit_detector(model, graph, config)
    outlier = AtomGraph(np.full((1, graph.x.shape[1]), 25.0, np.float32), np.zeros(1), np.zeros((2, 0)))

    scored = detector_scores(embed(model, outlier, config), outlier.atom, detector, config)

    assert scored["score"][0] > detector["threshold"]


def test_atom_graph_rejects_edges_pointing_past_the_last_flow():
    with pytest.raises(ValueError, match="edge_index"):
        AtomGraph(np.zeros((2, 3), np.float32), np.array([0, 0]), np.array([[0], [5]]))


def test_nearest_anchor_can_exclude_each_rows_own_anchor():
    z = np.array([[0.0, 0.0], [10.0, 0.0]])
    anchors = np.array([[0.0, 0.0], [10.0, 0.0], [3.0, 4.0]])

    distance, index = nearest_anchor(z, anchors, exclude=np.array([0, 1]))

    assert index.tolist() == [2, 2]
    np.testing.assert_allclose(distance, [5.0, np.hypot(7.0, 4.0)])


def test_own_atom_out_calibration_scores_every_training_flow_at_least_as_high_as_in_sample(trained):
    graph, model = trained
    flat = {**TINY.to_dict(), "anchor_scale": "none", "structure": "none"}
    in_sample = fit_detector(model, graph, A2GNNConfig(**{**flat, "calibration": "in_sample"}))
    held_out = fit_detector(model, graph, A2GNNConfig(**{**flat, "calibration": "own_atom_out"}))

    singletons = np.isin(graph.atom, np.flatnonzero(graph.atom_sizes() == 1))
    assert np.all(held_out["train_scores"] >= in_sample["train_scores"] - 1e-9)
    assert np.all(in_sample["train_scores"][singletons] < 1e-5)
    assert np.all(held_out["train_scores"][singletons] > 0.0)
    assert held_out["threshold"] >= in_sample["threshold"]


def test_anchor_radius_is_the_rms_distance_of_an_atoms_members_to_its_anchor():
    z = np.array([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [1.0, 1.0], [1.0, 3.0]])
    atom = np.array([0, 0, 1, 2, 2])

    radii = anchor_radii(z, atom, atom_anchors(z, atom))

    np.testing.assert_allclose(radii, [1.0, 0.0, 1.0])


def test_anchor_scale_floors_tight_and_singleton_anchors_at_the_median_multi_flow_radius():
    radii = np.array([0.0, 0.5, 2.0, 4.0, 0.1])
    sizes = np.array([1, 3, 5, 9, 2])  # multi-flow radii 0.5, 2.0, 4.0, 0.1 -> median 1.25

    np.testing.assert_allclose(anchor_scales(radii, sizes), [1.25, 1.25, 2.0, 4.0, 1.25])
    np.testing.assert_allclose(anchor_scales(np.zeros(3), np.array([1, 1, 1])), [1.0, 1.0, 1.0])


def test_atom_shift_grows_with_the_square_root_of_a_cohesive_atoms_size():
    anchors = np.array([[0.0, 0.0], [100.0, 0.0]])
    scale = np.array([2.0, 1.0])
    # atom 0: one flow at (3, 4); atom 1: four flows centred on (3, 4); atom 2: at anchor 1
    z = np.array([[3.0, 4.0], [2.0, 4.0], [4.0, 4.0], [3.0, 3.0], [3.0, 5.0], [100.0, 0.0]])
    atom = np.array([0, 1, 1, 1, 1, 2])

    shift = atom_shift(z, atom, anchors, scale)

    np.testing.assert_allclose(shift, [5.0 / 2.0, 2.0 * 5.0 / 2.0, 0.0])


def test_atom_shift_can_leave_each_training_atoms_own_anchor_out():
    z = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    atom = np.array([0, 0, 1])
    anchors = atom_anchors(z, atom)

    shift = atom_shift(z, atom, anchors, np.ones(2), exclude_own=True)

    np.testing.assert_allclose(shift, [np.sqrt(2.0) * 5.0, 5.0])


def test_combined_score_exceeds_one_when_either_term_exceeds_its_threshold():
    score = combined_score(np.array([1.0, 5.0, 1.0, 0.0]), np.array([2.0, 2.0, 9.0, 0.0]), 4.0, 8.0)

    np.testing.assert_allclose(score, [0.25, 1.25, 1.125, 0.0])
    assert np.isfinite(combined_score(np.array([1.0]), np.array([1.0]), 0.0, 0.0)).all()


def test_holdout_split_keeps_atoms_whole_and_disjoint_and_is_seeded():
    graph = chain_graph(num_atoms=40)

    train, held = split_holdout(graph, 0.25, seed=1)
    again, _ = split_holdout(graph, 0.25, seed=1)

    assert held.num_atoms == 10 and train.num_atoms == 30
    assert train.num_flows + held.num_flows == graph.num_flows
    np.testing.assert_array_equal(train.x, again.x)
    for part in (train, held):
        src, dst = part.edge_index
        assert (part.atom[src] == part.atom[dst]).all()
    rows = {tuple(r) for r in np.round(graph.x, 5)}
    assert {tuple(r) for r in np.round(train.x, 5)} | {tuple(r) for r in np.round(held.x, 5)} == rows
    assert split_holdout(graph, 0.0, seed=1) == (graph, None)


def test_holdout_calibration_uses_the_held_out_atoms_and_then_adds_their_anchors(trained):
    graph, model = trained
    train, held = split_holdout(graph, 0.25, seed=2)

    detector = fit_detector(model, train, replace(TINY, calibration="holdout_atoms"), held)

    assert detector["anchors"].shape[0] == graph.num_atoms
    assert detector["train_scores"].shape == (held.num_flows,)
    assert detector["atom_scores"].shape == (held.num_atoms,)
    assert detector["threshold"] == 1.0 and detector["flow_threshold"] > 0 and detector["atom_threshold"] > 0
    assert (detector["scale"] > 0).all()


def test_an_unknown_detector_option_is_rejected_with_its_field_name():
    with pytest.raises(ValueError, match="structure"):
        check_detector_config(A2GNNConfig(structure="atom_size"))
    with pytest.raises(ValueError, match="holdout_fraction"):
        check_detector_config(A2GNNConfig(holdout_fraction=1.0))


def test_detector_scores_follow_the_configured_terms_on_a_known_geometry():
    anchors = np.array([[0.0, 0.0], [10.0, 0.0]])
    detector = {"anchors": anchors, "scale": np.array([2.0, 1.0]),
                "flow_threshold": 4.0, "atom_threshold": 5.0}
    z = np.array([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0], [3.0, 4.0], [10.0, 1.0]])
    atom = np.array([0, 0, 0, 0, 1])
    plain = A2GNNConfig(anchor_scale="none", structure="none")
    full = A2GNNConfig(anchor_scale="radius", structure="atom_shift")

    flat = detector_scores(z, atom, detector, plain)
    combined = detector_scores(z, atom, detector, full)

    np.testing.assert_allclose(flat["score"], flat["distance"])
    np.testing.assert_allclose(flat["distance"], [5.0, 5.0, 5.0, 5.0, 1.0])
    np.testing.assert_allclose(combined["flow"], [2.5, 2.5, 2.5, 2.5, 1.0])
    np.testing.assert_allclose(combined["atom"], [2.0 * 2.5, 1.0])
    np.testing.assert_allclose(combined["score"], [1.0, 1.0, 1.0, 1.0, 0.25])


def test_nearest_anchor_blocks_are_sized_by_memory_not_by_a_fixed_row_count():
    rng = np.random.default_rng(8)
    z, anchors = rng.normal(size=(300, 4)), rng.normal(size=(50, 4))
    expected = nearest_anchor(z, anchors, chunk=300)
    got = nearest_anchor(z, anchors, block_bytes=7 * 50 * 4)  # 7 rows per block
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0])
