"""Ground-truth labels (``labels.csv``) and their exact flow-matching rule.

Format (``../shared/data/README.md``): ``attack,a,b,start,end`` where ``a`` is an address
or CIDR prefix, ``b`` an address or ``*``, ``start``/``end`` epoch seconds. A flow is an
attack flow of a row when one endpoint is in ``a``, the other equals ``b`` (or ``b`` is
``*``), in either direction, and ``[first_seen, last_seen]`` overlaps ``[start, end]``.
Labels are only ever used by evaluation, never by training or thresholds.
"""
from __future__ import annotations

import csv
import ipaddress
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

BENIGN = "benign"


@dataclass(frozen=True)
class LabelRule:
    attack: str
    attacker: ipaddress.IPv4Network | ipaddress.IPv6Network
    victim: str | None          # canonical address text, None for "*"
    start_ms: int
    end_ms: int


def read_labels(path: str | os.PathLike) -> list[LabelRule]:
    """Parse ``labels.csv``. Raises ``ValueError`` naming the line of a malformed row."""
    rules = []
    with open(path, newline="") as handle:
        for lineno, row in enumerate(csv.DictReader(handle), 2):
            try:
                victim = row["b"].strip()
                rules.append(
                    LabelRule(
                        attack=row["attack"].strip(),
                        attacker=ipaddress.ip_network(row["a"].strip(), strict=False),
                        victim=None if victim == "*" else ipaddress.ip_address(victim).compressed,
                        start_ms=int(float(row["start"]) * 1000),
                        end_ms=int(float(row["end"]) * 1000),
                    )
                )
            except (KeyError, ValueError) as error:
                raise ValueError(f"{path}:{lineno}: bad label row {row!r}: {error}") from error
    return rules


def _in_network(addresses: pd.Series, network) -> np.ndarray:
    unique = addresses.dropna().unique()
    members = {a for a in unique if _address_in(a, network)}
    return addresses.isin(members).to_numpy()


def _address_in(text: str, network) -> bool:
    try:
        return ipaddress.ip_address(text) in network
    except ValueError:
        return False


def matching_label_rows(flows: pd.DataFrame, rules: list[LabelRule]) -> np.ndarray:
    """``[N]`` index in ``rules`` of the labels row each flow matches, -1 for benign flows.

    A flow matches a row when one endpoint is in ``a``, the other equals ``b`` (or
    ``b == "*"``), in either direction, and its ``[first_seen, last_seen]`` overlaps
    ``[start, end]``; the first matching row in file order wins. ``flows`` needs
    ``src_ip``, ``dst_ip``, ``first_seen_ms``, ``last_seen_ms``.
    """
    rows = np.full(len(flows), -1, dtype=np.int64)
    first = flows["first_seen_ms"].to_numpy()
    last = flows["last_seen_ms"].to_numpy()
    for index, rule in enumerate(rules):
        src_in_a = _in_network(flows["src_ip"], rule.attacker)
        dst_in_a = _in_network(flows["dst_ip"], rule.attacker)
        if rule.victim is None:
            pair = src_in_a | dst_in_a
        else:
            pair = (src_in_a & (flows["dst_ip"] == rule.victim).to_numpy()) | (
                dst_in_a & (flows["src_ip"] == rule.victim).to_numpy()
            )
        hit = pair & (first <= rule.end_ms) & (last >= rule.start_ms) & (rows < 0)
        rows[hit] = index
    return rows


def label_flows(flows: pd.DataFrame, rules: list[LabelRule]) -> pd.Series:
    """The attack kind of every flow (``"benign"`` when no rule matches), by
    :func:`matching_label_rows`. Returns a Series aligned to ``flows.index``."""
    rows = matching_label_rows(flows, rules)
    kinds = np.array([BENIGN] + [rule.attack for rule in rules], dtype=object)[rows + 1]
    return pd.Series(kinds, index=flows.index, name="attack")
