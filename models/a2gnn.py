"""A2GNN: the community-aware graph network of Atomic-Anchor (no I/O here).

Graph: one vertex per flow; edges are the latent flow--flow relations (relay,
similarity) of ``graph_edges``; every flow belongs to one atom (Leiden community).

Forward pass, for ``N`` flows with standardised features ``x [N, F]``:

1. input block ``h = ReLU(BN(W x))``                                  ``[N, hidden]``
2. community context ``c_i = mean_{j in atom(i)} h_j``                ``[N, hidden]``
   and ``u = [h || c]``                                             ``[N, 2 hidden]``
3. isolation mask: keep edge ``(i, j)`` only when ``atom(i) == atom(j)``, so no message
   ever crosses an atom boundary (no "feature smearing");
4. encoder: ``GAT(heads, concat) -> ELU -> dropout -> ... -> GAT(out_dim, 1 head)``
   giving the embedding ``z [N, out_dim]`` (used for anchors and scores);
5. projection head ``p = W2 ReLU(W1 z)`` ``[N, out_dim]`` (used only by the loss).

Because of (2) and (3) the embedding of a flow is a function of its own atom only: in
eval mode (BatchNorm on running statistics, no dropout) changing any flow outside an atom
leaves the atom's embeddings bit-for-bit unchanged, so atoms can be batched freely.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv


def isolation_mask(edge_index: torch.Tensor, atom_index: torch.Tensor) -> torch.Tensor:
    """Boolean ``[E]``: True for edges whose two endpoints lie in the same atom.

    ``edge_index``: ``[2, E]`` int64 node indices; ``atom_index``: ``[N]`` int64 atom of
    each node.
    """
    if edge_index.numel() == 0:
        return torch.zeros(edge_index.shape[1], dtype=torch.bool, device=edge_index.device)
    return atom_index[edge_index[0]] == atom_index[edge_index[1]]


def atom_mean(values: torch.Tensor, atom_index: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [N, D]`` over each node's atom, broadcast back to ``[N, D]``.

    ``atom_index`` may be any non-negative ints (need not be contiguous).
    """
    _, dense = torch.unique(atom_index, return_inverse=True)
    num_atoms = int(dense.max().item()) + 1 if dense.numel() else 0
    sums = values.new_zeros((num_atoms, values.shape[1])).index_add_(0, dense, values)
    counts = values.new_zeros(num_atoms).index_add_(0, dense, values.new_ones(dense.shape[0]))
    return (sums / counts.clamp(min=1.0).unsqueeze(1))[dense]


class A2GNN(nn.Module):
    """Input block + isolation-masked GAT encoder + projection head.

    Parameters: ``in_dim`` flow features, ``hidden`` width of the input block and of each
    head of the hidden GAT layers, ``heads`` attention heads of the hidden layers,
    ``out_dim`` embedding width, ``layers`` GAT layers (>= 1), ``dropout`` between layers.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int = 64,
        heads: int = 8,
        out_dim: int = 32,
        layers: int = 2,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"A2GNN needs at least one GAT layer, got layers={layers}")
        self.dropout = dropout
        self.input_block = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU()
        )
        convs = []
        width = 2 * hidden
        for _ in range(layers - 1):
            convs.append(GATConv(width, hidden, heads=heads, concat=True))
            width = hidden * heads
        convs.append(GATConv(width, out_dim, heads=1, concat=False))
        self.convs = nn.ModuleList(convs)
        self.projector = nn.Sequential(
            nn.Linear(out_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, atom_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(z [N, out_dim], projection [N, out_dim])``.

        ``x [N, F]`` float32, ``edge_index [2, E]`` int64 (any edges: the isolation
        mask drops those crossing atoms), ``atom_index [N]`` int64.
        """
        h = self.input_block(x)
        h = torch.cat([h, atom_mean(h, atom_index)], dim=1)
        edges = edge_index[:, isolation_mask(edge_index, atom_index)]
        for layer, conv in enumerate(self.convs):
            h = conv(h, edges)
            if layer < len(self.convs) - 1:
                h = F.dropout(F.elu(h), p=self.dropout, training=self.training)
        return h, self.projector(h)
