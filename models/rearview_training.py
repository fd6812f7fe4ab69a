"""Training loops and batched inference of RearView's two networks (no Spark, no Parquet).

* :func:`train_cvae` fits the conditional VAE (Adam, mini-batches, condition dropout so
  the global fallback condition is learned too);
* :func:`screen_flows` gives per-flow reconstruction error, latent norm and latent mean;
* :func:`session_graph` turns the flows of one FIFO window into a directed IP graph;
* :func:`train_edge_dgi` fits the anomaly-weighted GraphSAGE with Deep Graph Infomax
  over a list of session graphs; :func:`embed_edges` applies the trained encoder.

Every stochastic step takes an explicit seed; on CPU two runs with the same seed and
thread count give bit-identical weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from models.rearview_cvae import ConditionalVAE
from models.rearview_sage import AnomalyWeightedEdgeSAGE, build_edge_dgi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionGraph:
    """One FIFO window as a directed graph: vertices are IPs, one edge per flow.

    ``edge_index [2, E]`` long (src vertex, dst vertex), ``edge_attr [E, D]`` float32
    (VAE latent means), ``edge_weight [E]`` float32 (``1 - p``), ``num_nodes``.
    """

    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    edge_weight: torch.Tensor
    num_nodes: int

    def to(self, device: str) -> "SessionGraph":
        return SessionGraph(self.edge_index.to(device), self.edge_attr.to(device),
                            self.edge_weight.to(device), self.num_nodes)


def session_graph(src: np.ndarray, dst: np.ndarray, latent_mean: np.ndarray, probability: np.ndarray) -> SessionGraph:
    """Build a window's graph. ``src``, ``dst``: ``[E]`` address labels (any hashable
    dtype); ``latent_mean``: ``[E, D]``; ``probability``: ``[E]`` screening p in [0, 1].

    Vertex ids are assigned in order of first appearance (src before dst per flow), so
    the graph does not depend on anything outside the window.
    """
    both = np.empty(2 * len(src), dtype=object)
    both[0::2], both[1::2] = src, dst
    _, first, inverse = np.unique(both.astype(str), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    ids = rank[inverse.reshape(-1)]
    edge_index = torch.from_numpy(np.stack([ids[0::2], ids[1::2]]).astype(np.int64))
    return SessionGraph(
        edge_index=edge_index,
        edge_attr=torch.as_tensor(np.asarray(latent_mean, dtype=np.float32)),
        edge_weight=torch.as_tensor(1.0 - np.asarray(probability, dtype=np.float32)),
        num_nodes=len(first),
    )


def train_cvae(
    features: np.ndarray,
    condition: np.ndarray,
    num_conditions: int,
    global_condition: int,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    condition_dropout: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[ConditionalVAE, list[float]]:
    """Fit a :class:`ConditionalVAE` on ``features [N, F]`` with ``condition [N]`` ids.

    Each sample's condition is replaced by ``global_condition`` with probability
    ``condition_dropout`` per epoch (so that condition is trained on every flow).
    Returns the model (eval mode, on ``device``) and the mean loss per epoch.
    """
    if len(features) == 0:
        raise ValueError("train_cvae: no training flows")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ConditionalVAE(features.shape[1], num_conditions).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    x_all = torch.as_tensor(features, dtype=torch.float32)
    c_all = torch.as_tensor(condition, dtype=torch.long)
    history = []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=generator)
        dropped = torch.rand(len(x_all), generator=generator) < condition_dropout
        c_epoch = torch.where(dropped, torch.full_like(c_all, global_condition), c_all)
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            x, c = x_all[rows].to(device), c_epoch[rows].to(device)
            recon, mu, logvar = model(x, c)
            loss = model.loss(x, recon, mu, logvar)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(rows)
        history.append(total / len(order))
        if epoch % 10 == 0 or epoch == epochs - 1:
            log.info("cvae epoch %d/%d loss %.4f", epoch + 1, epochs, history[-1])
    model.eval()
    return model, history


@torch.no_grad()
def screen_flows(
    model: ConditionalVAE, features: np.ndarray, condition: np.ndarray, batch_size: int = 65536, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(recon_error [N] float64, latent_norm [N] float64, latent_mean [N, 16] float32)``."""
    model.eval()
    errors, norms, means = [], [], []
    x_all = torch.as_tensor(features, dtype=torch.float32)
    c_all = torch.as_tensor(condition, dtype=torch.long)
    for start in range(0, len(x_all), batch_size):
        err, norm, mu = model.screen(x_all[start:start + batch_size].to(device), c_all[start:start + batch_size].to(device))
        errors.append(err.cpu().double().numpy())
        norms.append(norm.cpu().double().numpy())
        means.append(mu.cpu().numpy())
    if not errors:
        return np.zeros(0), np.zeros(0), np.zeros((0, model.latent_dim), dtype=np.float32)
    return np.concatenate(errors), np.concatenate(norms), np.concatenate(means)


def train_edge_dgi(
    graphs: list[SessionGraph], edge_dim: int, *, epochs: int, learning_rate: float, seed: int = 0, device: str = "cpu"
) -> tuple[AnomalyWeightedEdgeSAGE, list[float]]:
    """Train the encoder with Deep Graph Infomax, one optimiser step per graph per epoch.

    Returns the trained encoder (eval mode) and the mean DGI loss per epoch.
    """
    if not graphs:
        raise ValueError("train_edge_dgi: no session graphs")
    torch.manual_seed(seed)
    dgi = build_edge_dgi(edge_dim).to(device)
    optimiser = torch.optim.Adam(dgi.parameters(), lr=learning_rate)
    graphs = [g.to(device) for g in graphs]
    history = []
    dgi.train()
    for epoch in range(epochs):
        total = 0.0
        for graph in graphs:
            pos, neg, summary = dgi(graph.edge_index, graph.edge_attr, graph.edge_weight, graph.num_nodes)
            loss = dgi.loss(pos, neg, summary)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        history.append(total / len(graphs))
        if epoch % 20 == 0 or epoch == epochs - 1:
            log.info("dgi epoch %d/%d loss %.4f", epoch + 1, epochs, history[-1])
    encoder = dgi.encoder
    encoder.eval()
    return encoder, history


@torch.no_grad()
def embed_edges(encoder: AnomalyWeightedEdgeSAGE, graph: SessionGraph, device: str = "cpu") -> np.ndarray:
    """Edge embeddings ``[E, 64]`` float32 of one session graph."""
    graph = graph.to(device)
    z = encoder(graph.edge_index, graph.edge_attr, graph.edge_weight, graph.num_nodes)
    return z.cpu().numpy()
