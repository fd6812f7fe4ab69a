"""Each piece of the verdict's evidence as a benign tail probability (pure numpy/pandas).

A piece's value for a flow is ``p = P(benign flow at least this unusual)``, estimated on
benign reference flows of the training window, so small is suspicious and pieces from
different sources share one scale. ``NaN`` means the piece is lacking for that flow
(detector not run, no history yet); :mod:`pipeline.verdict.combine` says so in the flow's
evidence instead of scoring it as benign.

Pieces (``PIECES``):

* ``history``: the flow's relationship pattern as of its night (:func:`history_patterns`):
  is its service ``(dst_ip, dst_port, protocol)`` new, is its host pair new, and its
  direction relative to the local networks. ``p`` is the
  discrete tail of the pattern's benign frequency (:class:`PatternModel`): the share of
  benign flows whose pattern is at most as frequent. A local host never seen before makes
  every pair it initiates new by construction, so those pairs are not counted as new (a
  device joining the network is an inventory event, listed in the ``relationships``
  table, not by itself evidence); the new services it uses still are. A new *external*
  initiator (an unknown internet host connecting in) is not explained away.
* ``volume``: for a flow in a relationship new tonight, how busy that relationship is
  tonight: flows of its new host pair, or distinct initiators of its new service,
  whichever is larger (:func:`relationship_volume`); ``p`` is its tail
  among the new relationships of the benign reference nights. Not applicable (``NaN``,
  not "lacking") for other flows.
* ``a2gnn``: A2GNN's score ``max(flow / T_flow, atom / T_atom)`` against the training
  calibration statistics the artifact stores (:func:`a2gnn_tail`).
* ``screening``, ``refined``: RearView's screening probability and refined score against
  its benign validation flows (:func:`empirical_tail`).
"""
from __future__ import annotations

import dataclasses
import ipaddress
from functools import lru_cache

import numpy as np
import pandas as pd

PIECES = ("history", "volume", "a2gnn", "screening", "refined")
DIRECTIONS = ("in->in", "in->out", "out->in", "out->out")
CONTACTS = ("known_pair", "new_pair")


def empirical_tail(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``[N]`` share of ``reference`` at or above each value, add-one smoothed:
    ``(#{r >= v} + 1) / (n + 1)``, so it is never 0 and a value above every reference is
    ``1 / (n + 1)``. ``NaN`` values stay ``NaN``; an empty reference gives ``NaN``."""
    values = np.asarray(values, dtype=np.float64)
    reference = np.sort(np.asarray(reference, dtype=np.float64)[np.isfinite(reference)])
    if reference.size == 0:
        return np.full(values.shape, np.nan)
    above = reference.size - np.searchsorted(reference, values, side="left")
    tail = (above + 1.0) / (reference.size + 1.0)
    return np.where(np.isnan(values), np.nan, tail)


def pareto_tail(reference: np.ndarray, values: np.ndarray, top_fraction: float = 0.1,
                min_top: int = 10) -> np.ndarray:
    """``[N]`` :func:`empirical_tail` within the reference's range, extrapolated above its
    largest value by a Pareto (power-law) tail fitted to its top values (Hill estimator).

    Counts such as a relationship's flows are heavy-tailed; beyond the largest benign
    value the empirical tail stays at ``1 / (n + 1)``, so 6 and 600 flows would weigh the
    same. Above the ``k``-th largest value ``x_k`` (``k = max(min_top, top_fraction n)``)
    the tail is ``tail(x_k) * (x_k / v) ** alpha``, ``1 / alpha`` = mean of
    ``ln(x_i / x_k)`` over the top ``k``. Falls back to the empirical tail when the
    reference has fewer than ``min_top`` positive values or no spread at the top.
    """
    values = np.asarray(values, dtype=np.float64)
    tail = empirical_tail(reference, values)
    ref = np.sort(np.asarray(reference, dtype=np.float64)[np.isfinite(reference)])
    ref = ref[ref > 0]
    if ref.size < min_top:
        return tail
    k = max(min_top, int(top_fraction * ref.size))
    top = ref[-k:]
    x_k = top[0]
    spread = np.log(top / x_k).mean()
    if spread <= 0:
        return tail
    alpha = 1.0 / spread
    above = np.isfinite(values) & (values > x_k)
    start = empirical_tail(ref, np.array([x_k]))[0]
    extrapolated = start * (x_k / np.where(above, values, x_k)) ** alpha
    return np.where(above, np.minimum(tail, extrapolated), tail)


def a2gnn_tail(score: np.ndarray, flow_threshold: float, atom_threshold: float,
               train_scores: np.ndarray, atom_scores: np.ndarray) -> np.ndarray:
    """``[N]`` benign tail of A2GNN's score ``s = max(f / T_flow, a / T_atom)``.

    ``P(max(F / T_f, A / T_a) >= s) <= P(F >= s T_f) + P(A >= s T_a)`` (union bound), each
    term the empirical tail of the artifact's training calibration statistics (flow
    statistics ``train_scores [n]``, atom statistics ``atom_scores [a]``); clipped to 1.
    With ``atom_threshold`` 0 (no atom term) only the flow term is used.
    """
    score = np.asarray(score, dtype=np.float64)
    tail = empirical_tail(train_scores, score * flow_threshold)
    if atom_threshold > 0 and len(atom_scores):
        tail = tail + empirical_tail(atom_scores, score * atom_threshold)
    return np.minimum(tail, 1.0)


@lru_cache(maxsize=8)
def _networks(local_networks: str) -> tuple:
    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in local_networks.split(",") if n.strip())


def is_local(ips: pd.Series, local_networks: str) -> np.ndarray:
    """``[N]`` bool: the address lies in one of the comma-separated ``local_networks``."""
    networks = _networks(local_networks)

    def local(text) -> bool:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        return any(address in network for network in networks if network.version == address.version)

    unique = {ip: local(ip) for ip in pd.unique(ips)}
    return ips.map(unique).to_numpy(dtype=bool)


def directions(src_ip: pd.Series, dst_ip: pd.Series, local_networks: str) -> np.ndarray:
    """``[N]`` one of ``DIRECTIONS``: initiator side -> responder side (``in`` = local)."""
    src, dst = is_local(src_ip, local_networks), is_local(dst_ip, local_networks)
    return np.select([src & dst, src & ~dst, ~src & dst], list(DIRECTIONS[:3]), DIRECTIONS[3])


def history_patterns(flows: pd.DataFrame, local_networks: str) -> pd.Series:
    """``[N]`` pattern ``"<service>/<pair>/<direction>"`` of each flow, e.g.
    ``"new_service/new_pair/in->in"``.

    ``flows`` needs ``src_ip``, ``dst_ip`` and the history counts of
    :func:`pipeline.relationships.flow_history` (``service_nights_seen``,
    ``host_pair_nights_seen``, ``src_host_nights_seen``, ``dst_host_nights_seen``).
    ``pair`` is ``new_pair`` per :func:`new_pairs` (see the module docstring for why a
    joining device's pairs are not), else ``known_pair``.
    """
    service = np.where(flows["service_nights_seen"].to_numpy() == 0, "new_service", "known_service")
    contact = np.where(new_pairs(flows, local_networks), "new_pair", "known_pair")
    direction = directions(flows["src_ip"], flows["dst_ip"], local_networks)
    return pd.Series(pd.Series(service).str.cat([pd.Series(contact), pd.Series(direction)], sep="/").to_numpy(),
                     index=flows.index)


ALL_PATTERNS = tuple(f"{s}/{c}/{d}" for s in ("known_service", "new_service") for c in CONTACTS for d in DIRECTIONS)


@dataclasses.dataclass(frozen=True)
class PatternModel:
    """Benign frequencies of the history patterns (``ALL_PATTERNS``), Laplace-smoothed.

    ``p_value(pattern)`` = total probability of the patterns at most as probable as it:
    the discrete analogue of a tail probability (1 for the most common pattern, about
    ``pseudocount / n`` for one never seen among ``n`` benign flows).
    """

    probability: dict

    @classmethod
    def fit(cls, patterns: pd.Series, pseudocount: float) -> "PatternModel":
        counts = patterns.value_counts()
        raw = np.array([counts.get(p, 0) for p in ALL_PATTERNS], dtype=np.float64) + pseudocount
        return cls(dict(zip(ALL_PATTERNS, (raw / raw.sum()).tolist())))

    def p_values(self, patterns: pd.Series) -> np.ndarray:
        probs = np.array(list(self.probability.values()))
        tail = {p: float(probs[probs <= q + 1e-15].sum()) for p, q in self.probability.items()}
        return patterns.map(tail).to_numpy(dtype=np.float64)

    def to_dict(self) -> dict:
        return dict(self.probability)


def new_pairs(flows: pd.DataFrame, local_networks: str) -> np.ndarray:
    """``[N]`` bool: the flow's host pair never talked before, and not merely because its
    initiator is a local host never seen before (a device joining the network makes every
    one of its pairs new: that is an inventory event, not a new relationship here)."""
    joining = (flows["src_host_nights_seen"].to_numpy() == 0) & is_local(flows["src_ip"], local_networks)
    return (flows["host_pair_nights_seen"].to_numpy() == 0) & ~joining


def relationship_volume(flows: pd.DataFrame, local_networks: str) -> np.ndarray:
    """``[N]`` tonight's volume of the new relationship a flow belongs to, ``NaN`` if none.

    A new pair (:func:`new_pairs`) counts the night's flows of that pair; a new service
    counts the night's distinct initiators of that service; the larger of the two. Needs ``host_pair``,
    ``service`` (entity keys), ``src_ip`` and the history counts.
    """
    pair_flows = flows.groupby("host_pair")["host_pair"].transform("size").to_numpy(dtype=np.float64)
    service_initiators = flows.groupby("service")["src_ip"].transform("nunique").to_numpy(dtype=np.float64)
    service_new = flows["service_nights_seen"].to_numpy() == 0
    return np.fmax(np.where(new_pairs(flows, local_networks), pair_flows, np.nan),
                   np.where(service_new, service_initiators, np.nan))


def new_relationship_volumes(flows: pd.DataFrame, local_networks: str) -> np.ndarray:
    """The volume of every new relationship of one night, one value per relationship
    (a new pair, :func:`new_pairs`: its flows; a new service: its distinct
    initiators): the benign reference of the ``volume`` piece, counted per relationship,
    not per flow."""
    pairs = flows.loc[new_pairs(flows, local_networks)].groupby("host_pair").size()
    services = flows.loc[flows["service_nights_seen"] == 0].groupby("service")["src_ip"].nunique()
    return np.concatenate([pairs.to_numpy(dtype=np.float64), services.to_numpy(dtype=np.float64)])
