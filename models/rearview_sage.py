"""Anomaly-weighted edge-feature GraphSAGE with Deep Graph Infomax (RearView stage 2).

A session graph has one vertex per IP and one directed edge ``src -> dst`` per flow whose
features are the flow's VAE latent mean (and, in this project, its relationship novelty:
``pipeline.detectors.rearview``). The encoder produces one embedding per *edge* (flow); Deep
Graph Infomax (``torch_geometric.nn.DeepGraphInfomax``) trains it without labels, its
corruption shuffling the edge features across edges.

Two changes to the authors' layer (METHODS.md "RearView" step 3 names
``z = W [h_src || e]`` and anomaly-weighted *mean* aggregation), both so the layer can see
coordination, the thing stage 2 exists for:

* the vertex input adds ``log(1 + #outgoing flows)``, ``log(1 + #incoming flows)`` and
  the same for distinct peers (fan-out, fan-in) in the window. A weighted mean forgets
  multiplicity: a host with one flow to a new server and a host with sixty such flows
  have the same mean, although only the second is a scan, a brute force or a beacon; and
  sixty flows from sixty hosts (a flood, a sweep) differ from sixty from one host;
* the edge embedding reads both endpoints, ``z = W [h_src || h_dst || e]``. With the source
  alone, a flood from many spoofed sources to one victim (each source one flow) or many
  clients of one new server cannot be told from one-off flows: the coordination is visible
  only at the destination.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import DeepGraphInfomax

EMBEDDING_DIM = 64
NUM_COUNTS = 4
_EPS = 1e-8


def vertex_counts(edge_index: torch.Tensor, num_nodes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[num_nodes, 4]``: outgoing flows, incoming flows, distinct out-neighbours,
    distinct in-neighbours of each vertex (``edge_index [2, E]``, one edge per flow)."""
    src, dst = edge_index[0], edge_index[1]
    counts = torch.zeros(num_nodes, NUM_COUNTS, dtype=dtype, device=edge_index.device)
    ones = torch.ones(src.shape[0], dtype=dtype, device=edge_index.device)
    counts[:, 0].index_add_(0, src, ones)
    counts[:, 1].index_add_(0, dst, ones)
    pairs = torch.unique(src * num_nodes + dst)
    pair_ones = torch.ones(pairs.shape[0], dtype=dtype, device=edge_index.device)
    counts[:, 2].index_add_(0, torch.div(pairs, num_nodes, rounding_mode="floor"), pair_ones)
    counts[:, 3].index_add_(0, pairs % num_nodes, pair_ones)
    return counts


def weighted_mean_by_vertex(
    index: torch.Tensor, values: torch.Tensor, weight: torch.Tensor, num_nodes: int
) -> torch.Tensor:
    r"""Weighted mean of ``values`` grouped by ``index``.

    ``index: [E]`` long vertex ids, ``values: [E, D]``, ``weight: [E]`` (>= 0) ->
    ``[num_nodes, D]`` with :math:`\sum_e w_e v_e / (\sum_e w_e + 10^{-8})` (zero rows for
    vertices without edges or with zero total weight).
    """
    total = torch.zeros(num_nodes, values.shape[1], dtype=values.dtype, device=values.device)
    total.index_add_(0, index, values * weight[:, None])
    norm = torch.zeros(num_nodes, dtype=values.dtype, device=values.device)
    norm.index_add_(0, index, weight)
    return total / (norm[:, None] + _EPS)


class AnomalyWeightedEdgeSAGE(nn.Module):
    r"""One edge-feature GraphSAGE layer whose neighbour weights are ``1 - p``.

    For a vertex :math:`v`, the features :math:`e` of its outgoing and of its incoming
    edges are averaged separately, each edge weighted by :math:`w = 1 - p` (``p`` is the
    flow's screening probability, so a flow already judged anomalous barely shapes its
    neighbours' context), and joined with the log counts :math:`d_v` of its outgoing and
    incoming flows and of its distinct out- and in-neighbours (unweighted):

    .. math::

        h_v = \mathrm{ReLU}\left(W_{node}\,[\bar e^{out}_v \,\Vert\, \bar e^{in}_v
              \,\Vert\, \ln(1 + d_v)]\right), \quad
        d_v = (d^{out}_v, d^{in}_v, n^{out}_v, n^{in}_v),
        \qquad z_{uv} = W_{edge}\,[h_u \,\Vert\, h_v \,\Vert\, e_{uv}]

    Args:
        edge_dim: edge feature width ``D`` (the VAE latent width, 16).
        node_dim: vertex embedding width.
        out_dim: edge embedding width (64).

    Forward: ``edge_index [2, E]`` long (row 0 = src vertex), ``edge_attr [E, D]``,
    ``edge_weight [E]`` (``1 - p``), ``num_nodes`` -> edge embeddings ``[E, out_dim]``.
    """

    def __init__(self, edge_dim: int, node_dim: int = 64, out_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.edge_dim = edge_dim
        self.out_dim = out_dim
        self.node_linear = nn.Linear(2 * edge_dim + NUM_COUNTS, node_dim)
        self.edge_linear = nn.Linear(2 * node_dim + edge_dim, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_uniform_(self.node_linear.weight, gain=gain)
        nn.init.xavier_uniform_(self.edge_linear.weight, gain=gain)
        nn.init.zeros_(self.node_linear.bias)
        nn.init.zeros_(self.edge_linear.bias)

    def forward(
        self, edge_index: torch.Tensor, edge_attr: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int
    ) -> torch.Tensor:
        src, dst = edge_index[0], edge_index[1]
        out_mean = weighted_mean_by_vertex(src, edge_attr, edge_weight, num_nodes)
        in_mean = weighted_mean_by_vertex(dst, edge_attr, edge_weight, num_nodes)
        counts = torch.log1p(vertex_counts(edge_index, num_nodes, edge_attr.dtype))
        node = F.relu(self.node_linear(torch.cat([out_mean, in_mean, counts], dim=1)))
        return self.edge_linear(torch.cat([node[src], node[dst], edge_attr], dim=1))

    @staticmethod
    def dims_of(state_dict: dict) -> dict:
        """``edge_dim``, ``node_dim``, ``out_dim`` of a saved :meth:`state_dict`."""
        node_in = state_dict["node_linear.weight"].shape[1]
        return {"edge_dim": (node_in - NUM_COUNTS) // 2, "node_dim": state_dict["node_linear.weight"].shape[0],
                "out_dim": state_dict["edge_linear.weight"].shape[0]}


def shuffle_edge_features(
    edge_index: torch.Tensor, edge_attr: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """DGI corruption: the same graph with edge features permuted across edges (global RNG)."""
    perm = torch.randperm(edge_attr.shape[0], device=edge_attr.device)
    return edge_index, edge_attr[perm], edge_weight, num_nodes


def mean_sigmoid_summary(z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """DGI readout: ``sigmoid(mean of the edge embeddings)``, ``[out_dim]``."""
    return torch.sigmoid(z.mean(dim=0))


def build_edge_dgi(edge_dim: int, out_dim: int = EMBEDDING_DIM) -> DeepGraphInfomax:
    """Deep Graph Infomax around :class:`AnomalyWeightedEdgeSAGE` (edge-level patches)."""
    return DeepGraphInfomax(
        hidden_channels=out_dim,
        encoder=AnomalyWeightedEdgeSAGE(edge_dim, out_dim=out_dim),
        summary=mean_sigmoid_summary,
        corruption=shuffle_edge_features,
    )
