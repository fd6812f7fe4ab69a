"""A2GNN training, anchors and scores (maths and the training loop; no Spark here).

Data: an :class:`AtomGraph` holds one or more nights' flows as arrays, with atoms made
contiguous ids ``0..A-1``. Because of the isolation mask atoms are independent
subgraphs, so training and embedding iterate over *batches of atoms*: memory is bounded
by the batch, not by the night.

Loss for a batch of ``N`` flows (projections ``p``, ``p'`` of two augmented views, view 1
with edges dropped with probability ``edge_drop``, view 2 with feature columns masked
with probability ``feature_mask``; ``tau`` the temperature; all vectors L2-normalised):

* fine (InfoNCE / NT-Xent over the ``2N`` views)::

      L_fine = -1/(2N) sum_i [ log exp(p_i.p'_i / tau) / sum_{k != i} exp(v_i.v_k / tau) ]

  (``v`` the ``2N`` stacked views; each view's positive is its twin);
* coarse (node against community centroids ``m_a = normalise(mean_{i in a} p_i)``)::

      L_coarse = -1/N sum_i log softmax_a(p_i.m_a / tau)[atom(i)]

* total ``L = L_fine + coarse_weight * L_coarse``.

Anchors are the mean embedding ``z`` of every training atom. Detector (see
:func:`detector_scores`), every statistic calibrated on benign training data only:

* flow term ``d(flow) = min_a ||z - anchor_a||_2``, optionally divided by the nearest
  anchor's radius (``anchor_scale="radius"``: RMS distance of the anchor's members to it,
  floored at the median radius of the multi-flow training atoms) so that a diverse
  benign atom does not set the scale for every other one;
* atom term (``structure="atom_shift"``, the "coordinated structural anomaly"): for an
  atom of ``n`` flows with mean embedding ``m``, ``sqrt(n) * d(m)`` (``d`` scaled as
  above): the displacement of the whole atom from the benign reference in units of its
  standard error, large for a big cohesive aggregate away from every benign anchor;
* thresholds: EVT peaks-over-threshold fitted on *calibration* statistics, which are
  (``calibration``) the training flows themselves (``in_sample``, authors), the training
  flows against the other atoms' anchors (``own_atom_out``), or atoms held out of
  training (``holdout_atoms``, a fraction ``holdout_fraction`` of the training atoms
  that the model never sees and whose anchors are added only after calibration);
* score: ``d(flow)`` against its EVT threshold (``structure="none"``), or
  ``max(d(flow) / T_flow, shift(atom) / T_atom)`` against 1 (``structure="atom_shift"``).
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.utils import dropout_edge, mask_feature

from models.a2gnn import A2GNN
from models.anchor_index import ANCHOR_SEARCHES, candidate_anchors, uses_index
from models.a2gnn_config import (  # noqa: F401 (re-exported)
    ANCHORS_FILE, WEIGHTS_FILE, A2GNNConfig, member_dir, member_seed,
)
from models.thresholds import evt_threshold

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data
@dataclass
class AtomGraph:
    """Flows of one or more nights as a graph partitioned into atoms.

    ``x [N, F]`` float32 standardised features; ``atom [N]`` int64 contiguous atom ids
    ``0..A-1``; ``edge_index [2, E]`` int64 flow indices of intra-atom edges (both
    directions). Nodes need not be sorted by atom.
    """

    x: np.ndarray
    atom: np.ndarray
    edge_index: np.ndarray

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        self.atom = np.ascontiguousarray(self.atom, dtype=np.int64)
        self.edge_index = np.ascontiguousarray(self.edge_index, dtype=np.int64).reshape(2, -1)
        if self.x.ndim != 2 or self.atom.shape != (self.x.shape[0],):
            raise ValueError(f"AtomGraph: x {self.x.shape} and atom {self.atom.shape} disagree")
        if self.atom.size and (self.atom.min() < 0):
            raise ValueError("AtomGraph: atom ids must be non-negative")
        if self.edge_index.size and self.edge_index.max() >= self.x.shape[0]:
            raise ValueError("AtomGraph: edge_index points past the last flow")
        order = np.argsort(self.atom, kind="stable")
        self._order = order
        sorted_atoms = self.atom[order]
        self.num_atoms = int(sorted_atoms[-1]) + 1 if sorted_atoms.size else 0
        self._starts = np.searchsorted(sorted_atoms, np.arange(self.num_atoms + 1))
        self._edge_atom = self.atom[self.edge_index[0]] if self.edge_index.size else np.zeros(0, np.int64)
        edge_order = np.argsort(self._edge_atom, kind="stable")
        self._edge_order = edge_order
        self._edge_starts = np.searchsorted(self._edge_atom[edge_order], np.arange(self.num_atoms + 1))

    @property
    def num_flows(self) -> int:
        return int(self.x.shape[0])

    def atom_sizes(self) -> np.ndarray:
        return np.diff(self._starts)

    def subgraph(self, atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flows of ``atoms``: ``(flow_indices [n], x [n, F], atom [n], edge_index [2, e])``.

        ``edge_index`` is relabelled to positions within the returned flows.
        """
        atoms = np.asarray(atoms, dtype=np.int64)
        flows = np.concatenate([self._order[self._starts[a]:self._starts[a + 1]] for a in atoms]) \
            if atoms.size else np.zeros(0, np.int64)
        edges = np.concatenate(
            [self._edge_order[self._edge_starts[a]:self._edge_starts[a + 1]] for a in atoms]
        ) if atoms.size and self.edge_index.size else np.zeros(0, np.int64)
        position = np.full(self.num_flows, -1, dtype=np.int64) if edges.size else None
        if edges.size:
            position[flows] = np.arange(flows.size)
            local_edges = position[self.edge_index[:, edges]]
        else:
            local_edges = np.zeros((2, 0), dtype=np.int64)
        return flows, self.x[flows], self.atom[flows], local_edges


def atom_batches(
    sizes: np.ndarray, atoms_per_batch: int, max_batch_flows: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Group atom ids into batches of at most ``atoms_per_batch`` atoms and about
    ``max_batch_flows`` flows (an atom above the cap forms its own batch).

    ``sizes [A]`` flows per atom; ``rng`` shuffles the atom order (None keeps it).
    """
    order = np.arange(sizes.size) if rng is None else rng.permutation(sizes.size)
    batches, current, flows = [], [], 0
    for atom in order:
        size = int(sizes[atom])
        if current and (len(current) >= atoms_per_batch or flows + size > max_batch_flows):
            batches.append(np.asarray(current, dtype=np.int64))
            current, flows = [], 0
        current.append(atom)
        flows += size
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


# ---------------------------------------------------------------------------- losses
def info_nce(p1: torch.Tensor, p2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent between two views ``[N, D]`` (row ``i`` of each is a positive pair)."""
    n = p1.shape[0]
    views = F.normalize(torch.cat([p1, p2], dim=0), dim=1)
    logits = views @ views.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=logits.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(logits.device)
    return F.cross_entropy(logits, targets)


def centroid_cross_entropy(p: torch.Tensor, atom: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of each node against the centroids of the batch's atoms (own = target)."""
    _, dense = torch.unique(atom, return_inverse=True)
    num = int(dense.max().item()) + 1
    normed = F.normalize(p, dim=1)
    sums = normed.new_zeros((num, normed.shape[1])).index_add_(0, dense, normed)
    centroids = F.normalize(sums, dim=1)
    return F.cross_entropy(normed @ centroids.T / temperature, dense)


def batch_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    edge_index: torch.Tensor,
    atom: torch.Tensor,
    config: A2GNNConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float, float]:
    """Total loss of one batch and its (fine, coarse) parts as floats."""
    edges_1, _ = dropout_edge(edge_index, p=config.edge_drop, force_undirected=True, training=True) if edge_index.numel() \
        else (edge_index, None)
    x_2, _ = mask_feature(x, p=config.feature_mask, mode="col")
    _, p1 = model(x, edges_1, atom)
    _, p2 = model(x_2, edge_index, atom)
    n = x.shape[0]
    if n > config.contrastive_sample:
        pick = torch.randperm(n, generator=generator)[: config.contrastive_sample].to(x.device)
        fine = info_nce(p1[pick], p2[pick], config.temperature)
    else:
        fine = info_nce(p1, p2, config.temperature)
    coarse = centroid_cross_entropy(p1, atom, config.temperature)
    return fine + config.coarse_weight * coarse, float(fine.detach()), float(coarse.detach())


# ---------------------------------------------------------------------------- loops
def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_model(in_dim: int, config: A2GNNConfig) -> A2GNN:
    return A2GNN(in_dim, config.hidden, config.heads, config.out_dim, config.layers, config.dropout)


def train_model(
    graph: AtomGraph,
    config: A2GNNConfig,
    device: torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[A2GNN, dict]:
    """Train A2GNN on ``graph``; return ``(model in eval mode on CPU, metrics)``.

    With ``world_size > 1`` (an initialised process group) the model is wrapped in DDP
    and each rank trains on its share of every epoch's batches. Metrics: per-epoch mean
    loss, fine and coarse parts, seconds per epoch.
    """
    set_seeds(config.seed)
    device = device or resolve_device(config.device)
    model = build_model(graph.x.shape[1], config).to(device)
    trained = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimiser = torch.optim.Adam(trained.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    sizes = graph.atom_sizes()
    history = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        batches = atom_batches(sizes, config.atoms_per_batch, config.max_batch_flows, rng)
        per_rank = len(batches) // world_size if world_size > 1 else len(batches)
        mine = batches[rank::world_size][:per_rank] if world_size > 1 else batches
        trained.train()
        totals = np.zeros(3)
        used = 0
        for atoms in mine:
            _, x, atom, edges = graph.subgraph(atoms)
            if x.shape[0] < 2:  # BatchNorm and InfoNCE need two flows
                continue
            x_t = torch.from_numpy(x).to(device)
            loss, fine, coarse = batch_loss(
                trained, x_t, torch.from_numpy(edges).to(device),
                torch.from_numpy(atom).to(device), config, generator,
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            totals += (float(loss.detach()), fine, coarse)
            used += 1
        seconds = time.perf_counter() - started
        mean = totals / max(used, 1)
        history.append({"epoch": epoch, "loss": mean[0], "fine": mean[1], "coarse": mean[2],
                        "batches": used, "seconds": seconds})
        log.info("A2GNN epoch %d: loss %.4f (fine %.4f coarse %.4f) %d batches %.1fs",
                 epoch, mean[0], mean[1], mean[2], used, seconds)
    model = model.to("cpu").eval()
    metrics = {
        "epochs": config.epochs,
        "history": history,
        "final_loss": history[-1]["loss"] if history else math.nan,
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else 0.0,
        "train_flows": graph.num_flows,
        "train_atoms": graph.num_atoms,
        "device": str(device),
        "world_size": world_size,
    }
    return model, metrics


@torch.no_grad()
def embed(
    model: A2GNN, graph: AtomGraph, config: A2GNNConfig, device: torch.device | None = None
) -> np.ndarray:
    """Eval-mode embeddings ``[N, out_dim]`` float32 in ``graph``'s flow order, by atom batches
    of about ``max_batch_flows`` flows (as in training), so memory does not grow with the
    input. Atoms are independent under isolation masking: the batching changes no bit
    (a 41.5k-flow bucket in batches of 8k instead of 65k flows: same embeddings, peak RSS
    1508 -> 1137 MiB, and slightly faster)."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    out = np.zeros((graph.num_flows, config.out_dim), dtype=np.float32)
    for atoms in atom_batches(graph.atom_sizes(), config.atoms_per_batch * 8,
                              config.max_batch_flows, rng=None):
        flows, x, atom, edges = graph.subgraph(atoms)
        z, _ = model(torch.from_numpy(x).to(device), torch.from_numpy(edges).to(device),
                     torch.from_numpy(atom).to(device))
        out[flows] = z.cpu().numpy()
    return out


def atom_anchors(embeddings: np.ndarray, atom: np.ndarray) -> np.ndarray:
    """Mean embedding per atom ``[A, D]`` (``atom`` contiguous ids ``0..A-1``)."""
    num = int(atom.max()) + 1 if atom.size else 0
    sums = np.zeros((num, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, atom, embeddings)
    counts = np.bincount(atom, minlength=num).astype(np.float64)
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


NEAREST_ANCHOR_BLOCK_BYTES = 256 * 2**20
"""Memory of one block of squared distances in :func:`nearest_anchor` (rows x anchors x 4 B)."""


def nearest_anchor(
    embeddings: np.ndarray, anchors: np.ndarray, chunk: int | None = None,
    exclude: np.ndarray | None = None, block_bytes: int = NEAREST_ANCHOR_BLOCK_BYTES,
    search: str = "exact", threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(distance [N] float64, index [N] int64)`` of each embedding's nearest anchor.

    ``exclude [N]`` (optional): an anchor index per row that row may not use (its own
    atom, for out-of-sample training scores); needs at least two anchors.

    ``search`` (``models.anchor_index.ANCHOR_SEARCHES``): ``exact`` (below), ``index``
    (a faiss IVF-Flat index proposes the anchor: the nearest it finds, or with
    ``exclude`` the nearer allowed one of the two it finds; a row left without an
    allowed candidate is searched exactly; see ``models.anchor_index`` for parameters
    and measured agreement) or ``auto`` (the index from
    ``models.anchor_index.EXACT_BELOW_ANCHORS`` anchors on). ``threads``: faiss's
    OpenMP threads (None: torch's intra-op thread count).

    Exact: the arg-min comes from the matrix form ``|z|^2 + |a|^2 - 2 z.a`` (one GEMM
    per chunk of ``chunk`` rows, memory ``chunk x A``). ``chunk`` defaults to the rows
    that fit ``block_bytes`` (256 MiB) at this number of anchors, so memory
    stays bounded however many training atoms there are (a fixed 8,192 rows against
    219k anchors reached 15.6 GB). Either way the returned distance is then recomputed
    exactly as ``||z - a_idx||_2`` in float64.
    """
    if anchors.shape[0] == 0:
        raise ValueError("no anchors: the model was trained on zero atoms")
    if exclude is not None and anchors.shape[0] < 2:
        raise ValueError("cannot exclude a row's own anchor when there is only one anchor")
    if uses_index(search, anchors.shape[0]):
        index = _indexed_nearest(embeddings, anchors, exclude, torch.get_num_threads() if threads is None else threads)
        missing = np.flatnonzero(index < 0)
        if missing.size:
            index[missing] = _exact_nearest(embeddings[missing], anchors, chunk,
                                            None if exclude is None else exclude[missing], block_bytes)
    else:
        index = _exact_nearest(embeddings, anchors, chunk, exclude, block_bytes)
    difference = np.asarray(embeddings, dtype=np.float64) - anchors[index].astype(np.float64)
    return np.sqrt((difference * difference).sum(axis=1)), index


@torch.no_grad()
def _exact_nearest(
    embeddings: np.ndarray, anchors: np.ndarray, chunk: int | None, exclude: np.ndarray | None, block_bytes: int,
) -> np.ndarray:
    """``[N]`` arg-min over every anchor, blocked GEMM (see :func:`nearest_anchor`)."""
    if chunk is None:
        chunk = max(1, block_bytes // (4 * anchors.shape[0]))
    anchor_t = torch.from_numpy(np.ascontiguousarray(anchors, dtype=np.float32))
    anchor_sq = (anchor_t * anchor_t).sum(dim=1)
    index = np.empty(embeddings.shape[0], dtype=np.int64)
    for start in range(0, embeddings.shape[0], chunk):
        block = torch.from_numpy(np.ascontiguousarray(embeddings[start:start + chunk], dtype=np.float32))
        # |a|^2 - 2 z.a (+ |z|^2, constant per row), in place: one chunk x A block at a time
        # (the out-of-place form held three; -2P + a is bitwise a - 2P)
        squared = (block @ anchor_t.T).mul_(-2.0).add_(anchor_sq.unsqueeze(0))
        if exclude is not None:
            rows = torch.arange(squared.shape[0])
            squared[rows, torch.from_numpy(exclude[start:start + chunk])] = float("inf")
        index[start:start + chunk] = squared.argmin(dim=1).numpy()
    return index


def _indexed_nearest(embeddings: np.ndarray, anchors: np.ndarray, exclude: np.ndarray | None,
                     threads: int) -> np.ndarray:
    """``[N]`` the index's nearest allowed candidate per row, -1 where it found none."""
    candidates = candidate_anchors(embeddings, anchors, 1 if exclude is None else 2, threads)
    if exclude is not None:
        candidates[candidates == np.asarray(exclude, dtype=np.int64)[:, None]] = -1
    first = (candidates >= 0).argmax(axis=1)
    return candidates[np.arange(candidates.shape[0]), first]


CALIBRATIONS = ("in_sample", "own_atom_out", "holdout_atoms")
ANCHOR_SCALES = ("none", "radius")
STRUCTURES = ("none", "atom_shift")


def check_detector_config(config: A2GNNConfig) -> None:
    """Raise ``ValueError`` naming the field when a detector option is unknown."""
    for field, allowed in (("calibration", CALIBRATIONS), ("anchor_scale", ANCHOR_SCALES),
                           ("structure", STRUCTURES)):
        if getattr(config, field) not in allowed:
            raise ValueError(f"A2GNNConfig.{field}={getattr(config, field)!r} is not one of {allowed}")
    if config.anchor_search not in ANCHOR_SEARCHES:
        raise ValueError(f"A2GNNConfig.anchor_search={config.anchor_search!r} is not one of {ANCHOR_SEARCHES}")
    if not 0.0 <= config.holdout_fraction < 1.0:
        raise ValueError(f"A2GNNConfig.holdout_fraction must lie in [0, 1), got {config.holdout_fraction}")
    if config.ensemble_size < 1:
        raise ValueError(f"A2GNNConfig.ensemble_size must be >= 1, got {config.ensemble_size}")


def anchor_radii(embeddings: np.ndarray, atom: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """RMS distance ``[A]`` of each atom's members to its anchor (0 for a singleton).

    ``embeddings [N, D]``, ``atom [N]`` contiguous ids ``0..A-1``, ``anchors [A, D]``.
    """
    squared = ((np.asarray(embeddings, np.float64) - anchors[atom].astype(np.float64)) ** 2).sum(axis=1)
    sums = np.bincount(atom, weights=squared, minlength=anchors.shape[0])
    counts = np.bincount(atom, minlength=anchors.shape[0])
    return np.sqrt(sums / np.maximum(counts, 1))


def anchor_scales(radii: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per-anchor distance unit ``[A]``: the radius floored at the median radius of the
    atoms with at least two flows (1.0 when there is none or that median is 0), so a
    singleton or very tight anchor does not blow distances up.
    """
    multi = radii[sizes >= 2]
    floor = float(np.median(multi)) if multi.size else 1.0
    floor = floor if floor > 0.0 else 1.0
    return np.maximum(radii, floor)


def atom_shift(
    embeddings: np.ndarray, atom: np.ndarray, anchors: np.ndarray, scale: np.ndarray,
    exclude_own: bool = False, search: str = "exact",
) -> np.ndarray:
    """Atom-level statistic ``[A_local]``: ``sqrt(n) * d(mean embedding) / scale[nearest]``.

    ``atom [N]`` contiguous local ids ``0..A_local-1``; ``scale [A]`` per anchor (ones for
    unscaled). ``exclude_own``: local atom ``k`` is training anchor ``k`` and may not use
    it (out-of-sample statistic for the training atoms themselves). ``search``: as in
    :func:`nearest_anchor`.
    """
    means = atom_anchors(embeddings, atom)
    sizes = np.bincount(atom, minlength=means.shape[0]).astype(np.float64)
    exclude = np.arange(means.shape[0]) if exclude_own else None
    distance, index = nearest_anchor(means, anchors, exclude=exclude, search=search)
    return np.sqrt(sizes) * distance / scale[index]


def combined_score(
    flow_statistic: np.ndarray, atom_statistic: np.ndarray, flow_threshold: float, atom_threshold: float
) -> np.ndarray:
    """``max(flow / T_flow, atom / T_atom)`` per flow: above 1 when either term exceeds
    its own calibrated threshold. ``atom_statistic`` is already broadcast to flows; a
    threshold of 0 is treated as the smallest positive float (no division by zero).
    """
    tiny = np.finfo(np.float64).tiny
    return np.maximum(np.asarray(flow_statistic, np.float64) / max(flow_threshold, tiny),
                      np.asarray(atom_statistic, np.float64) / max(atom_threshold, tiny))


def ensemble_scores(member_scores: list[np.ndarray], member_thresholds: list[float]) -> np.ndarray:
    """``[N]`` the median over members of ``score_k / threshold_k`` (anomalous above 1).

    Each member's score is put on its own threshold's scale first (members are trained
    and calibrated independently, so their raw distances are not comparable); the median
    flags a flow when more than half of the members flag it, so one member whose EVT tail
    fit landed low (the spread across seeds in docs/benchmarks.md, '## A2GNN') cannot
    flag whole benign atoms on its own.
    """
    tiny = np.finfo(np.float64).tiny
    ratios = [np.asarray(s, np.float64) / max(float(t), tiny) for s, t in zip(member_scores, member_thresholds)]
    return np.median(np.stack(ratios), axis=0)


def detector_scores(
    embeddings: np.ndarray, atom: np.ndarray, detector: dict, config: A2GNNConfig,
    exclude_own: bool = False,
) -> dict:
    """Score flows ``embeddings [N, D]`` grouped in local atoms ``atom [N]`` (contiguous).

    ``detector``: ``anchors [A, D]``, ``scale [A]`` and, for the final score,
    ``flow_threshold``/``atom_threshold``. Returns ``{"distance" [N] raw distance to the
    nearest anchor, "index" [N] that anchor, "flow" [N] flow statistic, "atom" [A_local]
    atom statistic (zeros with ``structure="none"``), "score" [N] (only when the
    thresholds are in ``detector``)}``. ``exclude_own``: local atom ``k`` is anchor ``k``
    and neither term may use it. Both terms search anchors as ``config.anchor_search`` says.
    """
    anchors = detector["anchors"]
    scale = detector["scale"] if config.anchor_scale == "radius" else np.ones(anchors.shape[0])
    distance, index = nearest_anchor(embeddings, anchors, exclude=atom if exclude_own else None,
                                     search=config.anchor_search)
    flow = distance / scale[index]
    num_atoms = int(atom.max()) + 1 if atom.size else 0
    shift = atom_shift(embeddings, atom, anchors, scale, exclude_own, config.anchor_search) if (
        config.structure == "atom_shift" and atom.size) else np.zeros(num_atoms)
    out = {"distance": distance, "index": index, "flow": flow, "atom": shift}
    if "flow_threshold" in detector:
        out["score"] = flow if config.structure == "none" else combined_score(
            flow, shift[atom], detector["flow_threshold"], detector["atom_threshold"])
    return out


def split_holdout(graph: AtomGraph, fraction: float, seed: int) -> tuple[AtomGraph, AtomGraph | None]:
    """Split ``graph`` by atoms: ``(training graph, held-out graph or None)``.

    A seeded ``fraction`` of the atoms (at least one, never all) goes to the held-out
    graph; both keep their atoms whole and get contiguous atom ids in original order.
    """
    if fraction <= 0.0 or graph.num_atoms < 2:
        return graph, None
    rng = np.random.default_rng(seed)
    count = min(max(1, int(round(fraction * graph.num_atoms))), graph.num_atoms - 1)
    held = np.zeros(graph.num_atoms, dtype=bool)
    held[rng.choice(graph.num_atoms, size=count, replace=False)] = True
    return _sub_graph(graph, np.flatnonzero(~held)), _sub_graph(graph, np.flatnonzero(held))


def _sub_graph(graph: AtomGraph, atoms: np.ndarray) -> AtomGraph:
    _, x, atom, edges = graph.subgraph(atoms)
    local = np.searchsorted(atoms, atom)
    return AtomGraph(x, local, edges)


def fit_detector(
    model: A2GNN, graph: AtomGraph, config: A2GNNConfig, holdout: AtomGraph | None = None
) -> dict:
    """Anchors, per-anchor scales, calibration statistics and EVT thresholds.

    ``graph``: the atoms the model was trained on (their means are the anchors);
    ``holdout``: atoms held out of training (``calibration="holdout_atoms"``; without it
    that calibration falls back to ``own_atom_out``, logged). Calibration: ``in_sample``
    (authors: a training flow may use its own atom's anchor, so a singleton scores 0; the
    atom term always leaves the own anchor out, which would make it 0), ``own_atom_out``
    (a training flow/atom against the *other* atoms' anchors, what a new night faces) or
    ``holdout_atoms`` (held-out atoms against the training anchors; their anchors are
    then added, so the thresholds are slightly conservative).

    Returns ``{"anchors" [A, D] float32, "scale" [A] float64, "train_scores" [n] flow
    statistics calibrated on, "atom_scores" [a] atom statistics calibrated on,
    "flow_threshold", "atom_threshold", "threshold" (of the final score: the flow
    threshold, or 1.0 with ``structure="atom_shift"``)}``.
    """
    check_detector_config(config)
    z = embed(model, graph, config)
    anchors = atom_anchors(z, graph.atom)
    sizes = graph.atom_sizes()
    radii = anchor_radii(z, graph.atom, anchors)
    detector = {"anchors": anchors, "scale": anchor_scales(radii, sizes)}
    calibration = config.calibration
    if calibration == "holdout_atoms" and (holdout is None or holdout.num_flows == 0):
        log.warning("A2GNN: no held-out atoms; calibrating own_atom_out instead")
        calibration = "own_atom_out"
    if calibration == "own_atom_out" and anchors.shape[0] < 2:
        calibration = "in_sample"
    if calibration == "holdout_atoms":
        z_held = embed(model, holdout, config)
        stats = detector_scores(z_held, holdout.atom, detector, config)
        flow_stats, atom_stats = stats["flow"], stats["atom"]
        held_anchors = atom_anchors(z_held, holdout.atom)
        held_radii = anchor_radii(z_held, holdout.atom, held_anchors)
        anchors = np.concatenate([anchors, held_anchors])
        detector = {"anchors": anchors,
                    "scale": anchor_scales(np.concatenate([radii, held_radii]),
                                           np.concatenate([sizes, holdout.atom_sizes()]))}
    else:
        out_of_sample = detector_scores(z, graph.atom, detector, config, exclude_own=anchors.shape[0] > 1)
        atom_stats = out_of_sample["atom"]
        flow_stats = out_of_sample["flow"] if calibration == "own_atom_out" else \
            detector_scores(z, graph.atom, detector, config)["flow"]
    detector["train_scores"] = np.asarray(flow_stats, np.float64)
    detector["atom_scores"] = np.asarray(atom_stats, np.float64)
    detector["flow_threshold"] = evt_threshold(flow_stats, config.evt_quantile, config.evt_risk)
    detector["atom_threshold"] = evt_threshold(atom_stats, config.evt_quantile, config.evt_risk) \
        if config.structure == "atom_shift" else 0.0
    detector["threshold"] = detector["flow_threshold"] if config.structure == "none" else 1.0
    return detector


def save_graph(path: Path, graph: AtomGraph) -> None:
    from safetensors.numpy import save_file

    save_file({"x": graph.x, "atom": graph.atom, "edge_index": graph.edge_index}, str(path))


def load_graph(path: str | Path) -> AtomGraph:
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    return AtomGraph(arrays["x"], arrays["atom"], arrays["edge_index"])




def save_trained(out_dir: Path, model: A2GNN, detector: dict) -> None:
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()},
              str(out_dir / WEIGHTS_FILE))
    save_file({"anchors": detector["anchors"],
               "scale": np.asarray(detector["scale"], np.float64),
               "train_scores": detector["train_scores"].astype(np.float64),
               "atom_scores": np.asarray(detector["atom_scores"], np.float64)},
              str(out_dir / ANCHORS_FILE))


def load_trained(artifact_dir: Path, in_dim: int, config: A2GNNConfig) -> tuple[A2GNN, np.ndarray]:
    """The eval-mode model (CPU) and anchors ``[A, D]`` from an artifact; no code runs."""
    from safetensors.numpy import load_file

    model = build_model(in_dim, config)
    state = {k: torch.from_numpy(v) for k, v in load_file(str(artifact_dir / WEIGHTS_FILE)).items()}
    model.load_state_dict(state)
    anchors = load_file(str(artifact_dir / ANCHORS_FILE))["anchors"]
    return model.eval(), anchors
