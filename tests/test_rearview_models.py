"""RearView networks: conditional VAE, anomaly-weighted GraphSAGE, DGI training."""
from __future__ import annotations

import numpy as np
import torch

from models.rearview_cvae import ConditionalVAE
from models.rearview_sage import AnomalyWeightedEdgeSAGE, shuffle_edge_features, vertex_counts
from models.rearview_training import session_graph, train_cvae, train_edge_dgi


def _star_graph(probabilities):
    """Host 0 opens flows to hosts 1..k; edge features are random latent means."""
    k = len(probabilities)
    rng = np.random.default_rng(0)
    src = np.array(["10.0.0.1"] * k)
    dst = np.array([f"10.0.1.{i}" for i in range(k)])
    return session_graph(src, dst, rng.normal(size=(k, 16)).astype(np.float32), np.asarray(probabilities))


def _neighbour_shift(encoder, probability_of_flow_zero: float) -> float:
    """How much flow 1's embedding moves when flow 0's features change."""
    graph = _star_graph([probability_of_flow_zero, 0.1, 0.1, 0.1])
    changed_attr = graph.edge_attr.clone()
    changed_attr[0] += 5.0
    with torch.no_grad():
        before = encoder(graph.edge_index, graph.edge_attr, graph.edge_weight, graph.num_nodes)
        after = encoder(graph.edge_index, changed_attr, graph.edge_weight, graph.num_nodes)
    return float((after[1] - before[1]).norm())


def test_raising_a_flows_screening_probability_lowers_its_influence_on_neighbours():
    torch.manual_seed(0)
    encoder = AnomalyWeightedEdgeSAGE(edge_dim=16)
    shifts = [_neighbour_shift(encoder, p) for p in (0.0, 0.5, 0.9, 0.999)]
    assert shifts[0] > 0
    assert all(a > b for a, b in zip(shifts, shifts[1:]))
    assert shifts[-1] < 0.01 * shifts[0]


def test_edge_embedding_sees_how_many_flows_reach_the_destination():
    torch.manual_seed(0)
    encoder = AnomalyWeightedEdgeSAGE(edge_dim=16).eval()
    attr = np.zeros((1, 16), dtype=np.float32)
    single = session_graph(np.array(["s0"]), np.array(["victim"]), attr, np.array([0.1]))
    sources = np.array([f"s{i}" for i in range(60)])             # sixty one-flow sources, one victim
    flood = session_graph(sources, np.array(["victim"] * 60), np.repeat(attr, 60, axis=0), np.full(60, 0.1))
    with torch.no_grad():
        one = encoder(single.edge_index, single.edge_attr, single.edge_weight, single.num_nodes)
        many = encoder(flood.edge_index, flood.edge_attr, flood.edge_weight, flood.num_nodes)
    # every flood flow looks like the single flow on its own; only the victim's in-degree differs
    assert float((many[0] - one[0]).norm()) > 1e-3
    torch.testing.assert_close(many, many[:1].expand_as(many))


def test_vertex_counts_are_flows_and_distinct_peers_per_direction():
    # a -> b twice, a -> c, d -> b
    counts = vertex_counts(torch.tensor([[0, 0, 0, 3], [1, 1, 2, 1]]), num_nodes=4)
    assert counts.tolist() == [[3, 0, 2, 0], [0, 3, 0, 2], [0, 1, 0, 1], [1, 0, 1, 0]]


def test_session_graph_has_one_vertex_per_ip_and_one_edge_per_flow():
    graph = session_graph(np.array(["a", "b", "a"]), np.array(["b", "c", "c"]),
                          np.zeros((3, 16), dtype=np.float32), np.array([0.2, 0.5, 1.0]))
    assert graph.num_nodes == 3
    assert graph.edge_index.tolist() == [[0, 1, 0], [1, 2, 2]]
    np.testing.assert_allclose(graph.edge_weight.numpy(), [0.8, 0.5, 0.0])


def test_dgi_corruption_shuffles_edge_features_and_keeps_the_graph():
    torch.manual_seed(1)
    graph = _star_graph([0.1] * 50)
    edge_index, attr, weight, nodes = shuffle_edge_features(graph.edge_index, graph.edge_attr,
                                                            graph.edge_weight, graph.num_nodes)
    assert torch.equal(edge_index, graph.edge_index) and nodes == graph.num_nodes
    assert not torch.equal(attr, graph.edge_attr)
    key = lambda rows: sorted(map(tuple, rows.tolist()))  # noqa: E731
    assert key(attr) == key(graph.edge_attr)


def test_cvae_screening_is_deterministic_and_shaped_per_flow():
    model = ConditionalVAE(num_features=7, num_conditions=3).eval()
    x, c = torch.randn(5, 7), torch.tensor([0, 1, 2, 0, 1])
    err1, norm1, mu1 = model.screen(x, c)
    err2, _, _ = model.screen(x, c)
    assert err1.shape == (5,) and norm1.shape == (5,) and mu1.shape == (5, 16)
    assert torch.equal(err1, err2)


def test_cvae_training_reduces_loss_and_is_reproducible_with_a_seed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 7)).astype(np.float32)
    c = rng.integers(0, 2, size=256)
    a, history = train_cvae(x, c, 3, 2, epochs=6, learning_rate=1e-3, batch_size=32, seed=3)
    b, _ = train_cvae(x, c, 3, 2, epochs=6, learning_rate=1e-3, batch_size=32, seed=3)
    assert history[-1] < history[0]
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_dgi_training_is_reproducible_with_a_seed():
    graphs = [_star_graph([0.1, 0.5, 0.9, 0.2] * 5)]
    a, history = train_edge_dgi(graphs, 16, epochs=5, learning_rate=1e-3, seed=4)
    b, _ = train_edge_dgi(graphs, 16, epochs=5, learning_rate=1e-3, seed=4)
    assert len(history) == 5 and np.isfinite(history).all()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
