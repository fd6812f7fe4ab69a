"""A2GNN's hyper-parameters as a plain dataclass (no torch import).

Kept apart from ``models.a2gnn_training`` so that reading configuration (Luigi's task
parameters, model versions) does not import torch and PyTorch Geometric, which took
~8 s on this machine before bytecode was compiled (3.7 s after): every ``luigi --module jobs`` start paid it, even for a night that
was already complete.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

WEIGHTS_FILE = "weights.safetensors"
ANCHORS_FILE = "anchors.safetensors"


@dataclass(frozen=True)
class A2GNNConfig:
    """Hyper-parameters (defaults: METHODS.md "Atomic-Anchor", authors' reference code).

    ``atoms_per_batch`` atoms form one training batch, capped at ``max_batch_flows``
    flows (an atom larger than the cap is a batch of its own); the fine loss uses at most
    ``contrastive_sample`` flows of a batch (its ``2N x 2N`` similarity matrix bounds
    memory). ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    ``num_processes``/``use_gpu``/``local_mode`` go to TorchDistributor.
    ``calibration``: which statistics the EVT thresholds are fitted on (``in_sample``,
    ``own_atom_out`` or ``holdout_atoms`` with ``holdout_fraction`` of the training
    atoms held out of training). Default ``own_atom_out``: every training flow is scored
    against the anchors of the *other* atoms, as a new night's flow is; it calibrates on
    all training atoms instead of a 20 % hold-out, and on the dev archive it beat
    ``holdout_atoms`` at each of three seeds (F1 0.78/0.68/0.69 vs 0.53/0.60/0.37,
    docs/benchmarks.md '## A2GNN'; METHODS.md allows a change a labelled measurement
    supports). ``anchor_scale``: ``none`` or ``radius`` (per-anchor
    spread); ``structure``: ``none`` or ``atom_shift`` (atom-level term), see the module
    doc and :func:`fit_detector`.
    ``cpu_threads``: torch intra-op threads of a training worker (0 = torch's default;
    on a shared, busy machine 1 avoids spin-waiting threads; results are bit-identical
    only for the same thread count).
    ``ensemble_size``: independently seeded members (model, anchors, thresholds each;
    member 0 uses ``seed``, :func:`member_seed`); a flow's score is the median over
    members of each member's score over its own threshold, so it is anomalous when most
    members say so (``models.a2gnn_training.ensemble_scores``). 1 = the authors' single
    model, the default: 3 members gave the same mean dev F1 over three seeds (0.672) with
    half the benign alarms, at 3x the cost (docs/benchmarks.md, '## A2GNN').
    ``anchor_search``: how a flow's nearest anchor is found, ``exact`` (every anchor),
    ``index`` (a faiss IVF-Flat index, ``models.anchor_index``: the same anchor for
    >= 99.9 % of flows, the others slightly farther) or ``auto`` (the index from
    ``models.anchor_index.EXACT_BELOW_ANCHORS`` anchors on). Added after versions
    existed: at ``auto`` it stays out of the model version, and an artifact trained before
    it keeps ``exact`` (:data:`LEGACY_VALUES`), so its pinned rescoring is unchanged.
    """

    hidden: int = 64
    heads: int = 8
    out_dim: int = 32
    layers: int = 2
    dropout: float = 0.3
    edge_drop: float = 0.3
    feature_mask: float = 0.3
    temperature: float = 0.5
    coarse_weight: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 5e-4
    epochs: int = 20
    atoms_per_batch: int = 512
    max_batch_flows: int = 8192
    contrastive_sample: int = 4096
    seed: int = 42
    evt_quantile: float = 0.95
    evt_risk: float = 0.002
    device: str = "auto"
    num_processes: int = 1
    use_gpu: bool = False
    local_mode: bool = True
    cpu_threads: int = 0
    calibration: str = "own_atom_out"
    holdout_fraction: float = 0.2
    anchor_scale: str = "radius"
    structure: str = "atom_shift"
    ensemble_size: int = 1
    anchor_search: str = field(default="auto", metadata={"added_later": "auto"})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "A2GNNConfig":
        """The config an artifact was trained with. Fields it predates take the value
        that reproduces how it was scored then (``LEGACY_VALUES``): a pinned rescoring of
        an old version gives identical rows."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**{**LEGACY_VALUES, **known})


LEGACY_VALUES = {"anchor_search": "exact"}
"""Behaviour of artifacts whose ``config.json`` predates a field (they searched every anchor)."""


MEMBER_SEED_STRIDE = 1_000_003


def member_seed(seed: int, member: int) -> int:
    """Training seed of ensemble member ``member`` (member 0 uses ``seed`` itself)."""
    return seed + MEMBER_SEED_STRIDE * member


def member_dir(member: int) -> str:
    """Sub-directory of an artifact holding member ``member`` ('' = the artifact root, member 0)."""
    return "" if member == 0 else f"member{member}"
