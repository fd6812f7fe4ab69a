"""RearView's conditions and relationship novelty: which triplet, port or protocol a flow is judged
against, and whether its triplet is new (pure numpy / pandas, no torch).

Condition of a flow = its triplet ``server_ip|server_port|protocol`` (server = responder =
``dst``) when that triplet has ``>= min_triplet_sessions`` training flows; otherwise its
``(port, protocol)`` when the rare triplets of that port and protocol pool at least that
many; otherwise its protocol; a global condition covers protocols never seen in training.
A training-night flow is *novel* when its triplet has no training flow on the *other*
training nights (:func:`cross_night_novelty`), which gives benign flows the novelty rate
of a new night. The validation split (:func:`validation_mask`) holds out the last
``validation_fraction`` of each night's flows in start order.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


CONDITION_LEVELS = ("triplet", "port_protocol", "protocol", "global")


NUM_FALLBACK_CELLS = 2 * len(CONDITION_LEVELS)


# ---------------------------------------------------------------- conditions (pure)
def triplet_keys(flows: pd.DataFrame) -> pd.Series:
    """``"server_ip|server_port|protocol"`` per flow (server = responder = ``dst``)."""
    return flows["dst_ip"].astype(str) + "|" + flows["dst_port"].astype("int64").astype(str) + "|" + \
        flows["protocol"].astype("int64").astype(str)


def _port_protocol_keys(flows: pd.DataFrame) -> pd.Series:
    return flows["dst_port"].astype("int64").astype(str) + "|" + flows["protocol"].astype("int64").astype(str)


def build_condition_vocabulary(train_flows: pd.DataFrame, min_sessions: int) -> dict:
    """Condition ids from the training flows (``dst_ip``, ``dst_port``, ``protocol``).

    Returns ``{"triplet": {key: id}, "port_protocol": {key: id}, "protocol": {key: id},
    "global": id, "num_conditions": C}``; ids are assigned in sorted key order, global last.
    """
    triplets = triplet_keys(train_flows)
    counts = triplets.value_counts()
    frequent = sorted(counts.index[counts >= min_sessions])
    rare = ~triplets.isin(frequent)
    pairs = _port_protocol_keys(train_flows)[rare]
    pair_counts = pairs.value_counts()
    pooled = sorted(pair_counts.index[pair_counts >= min_sessions])
    rest = rare & ~_port_protocol_keys(train_flows).isin(pooled)
    protocols = sorted(train_flows.loc[rest, "protocol"].astype("int64").astype(str).unique())
    vocab: dict = {"triplet": {}, "port_protocol": {}, "protocol": {}}
    next_id = 0
    for level, keys in (("triplet", frequent), ("port_protocol", pooled), ("protocol", protocols)):
        for key in keys:
            vocab[level][key] = next_id
            next_id += 1
    vocab["global"] = next_id
    vocab["num_conditions"] = next_id + 1
    return vocab


def assign_conditions(vocab: dict, flows: pd.DataFrame) -> np.ndarray:
    """Condition id per flow: triplet, else (port, protocol), else protocol, else global."""
    ids = triplet_keys(flows).map(vocab["triplet"])
    ids = ids.fillna(_port_protocol_keys(flows).map(vocab["port_protocol"]))
    ids = ids.fillna(flows["protocol"].astype("int64").astype(str).map(vocab["protocol"]))
    return ids.fillna(vocab["global"]).to_numpy(dtype=np.int64)


def condition_levels(vocab: dict, flows: pd.DataFrame) -> np.ndarray:
    """``[N]`` int index into ``CONDITION_LEVELS``: how far each flow falls back."""
    level = np.full(len(flows), CONDITION_LEVELS.index("global"), dtype=np.int64)
    keys = (
        ("protocol", flows["protocol"].astype("int64").astype(str)),
        ("port_protocol", _port_protocol_keys(flows)),
        ("triplet", triplet_keys(flows)),
    )
    for name, key in keys:                       # deeper levels first, shallower overwrite
        level[key.isin(list(vocab[name])).to_numpy()] = CONDITION_LEVELS.index(name)
    return level


def unseen_triplets(seen_triplets: set[str] | frozenset | list[str], flows: pd.DataFrame) -> np.ndarray:
    """``[N]`` bool: the flow's triplet is not among ``seen_triplets`` (scoring-time novelty)."""
    return ~triplet_keys(flows).isin(list(seen_triplets)).to_numpy()


def cross_night_novelty(triplets: pd.Series, night: np.ndarray, is_train: np.ndarray) -> np.ndarray:
    """``[N]`` bool novelty of the *training nights'* flows, as a new night would see it.

    A flow is novel when its triplet occurs in no training flow of the *other* training
    nights. A scored night is judged against every training night, and on a new night
    benign hosts meet servers they did not meet before (new devices, new applications):
    the within-night hold-out sees far fewer of those than a new night (dev archive,
    benign only: 1.1 % of validation flows have a triplet unseen in training, while
    6.5-6.8 % of each training night's flows have a triplet unseen on the other night).
    Leave-one-night-out novelty gives training and validation flows the novelty rate of a
    new night, so the refinement learns what benign novelty looks like and the novelty
    prior is calibrated for it. With a single training night there is no other night:
    its training flows count as seen and validation flows are novel when their triplet has
    no training flow.
    """
    night = np.asarray(night)
    is_train = np.asarray(is_train, dtype=bool)
    keys = triplets.reset_index(drop=True)
    nights = np.unique(night)
    novel = np.zeros(len(keys), dtype=bool)
    if len(nights) == 1:
        novel[~is_train] = ~keys[~is_train].isin(set(keys[is_train])).to_numpy()
        return novel
    for n in nights:
        mine = night == n
        reference = set(keys[is_train & ~mine])
        novel[mine] = ~keys[mine].isin(reference).to_numpy()
    return novel


def fallback_cells(vocab: dict, flows: pd.DataFrame, novel: np.ndarray) -> np.ndarray:
    """``[N]`` int in ``[0, NUM_FALLBACK_CELLS)``: ``2 * condition level + novel``.

    ``novel [N]`` bool: :func:`unseen_triplets` when scoring, :func:`cross_night_novelty`
    for the training nights' flows. A triplet seen fewer than ``min_triplet_sessions``
    times falls back like an unseen one but is a different cell.
    """
    return 2 * condition_levels(vocab, flows) + np.asarray(novel, dtype=np.int64)


def order_flows(flows: pd.DataFrame, by_night: bool = False) -> pd.DataFrame:
    """Flows in replay order: (``date`` when ``by_night``), ``first_seen_ms``, ``flow_id``."""
    keys = (["date"] if by_night else []) + ["first_seen_ms", "flow_id"]
    return flows.sort_values(keys, kind="mergesort").reset_index(drop=True)


def validation_mask(nights: np.ndarray, fraction: float) -> np.ndarray:
    """``[N]`` bool: the last ``fraction`` of each night's flows (``nights`` in replay order)."""
    mask = np.zeros(len(nights), dtype=bool)
    _, starts, counts = np.unique(nights, return_index=True, return_counts=True)
    for start, count in zip(starts, counts):
        held = int(np.ceil(fraction * count)) if count > 1 else 0
        mask[start + count - held:start + count] = True
    return mask
