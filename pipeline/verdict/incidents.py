"""Flagged flows grouped into incidents: what an analyst triages (pure pandas).

Two flagged flows belong to one incident when (transitively) they
* lie in the same multi-flow A2GNN atom, or
* share a host pair (either direction) and start within ``gap_ms`` of each other, or
* go to the same service ``(dst_ip, dst_port, protocol)`` and start within ``gap_ms``
  (a flood from many sources, a scan from several).
Incidents are ranked by score (the highest verdict score among their flagged flows),
then by first flow start; ``incident_id`` = ``<date>-<rank, 4 digits>``. Deterministic:
the same flagged flows give the same incidents.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _pair_keys(flows: pd.DataFrame) -> pd.Series:
    """``"low|high"`` host pair of each flow (either direction is one pair)."""
    src, dst = flows["src_ip"].astype(str), flows["dst_ip"].astype(str)
    return pd.Series(np.minimum(src, dst) + "|" + np.maximum(src, dst), index=flows.index)


def _service_keys(flows: pd.DataFrame) -> pd.Series:
    """``"dst_ip|dst_port|protocol"`` of each flow."""
    return (flows["dst_ip"].astype(str) + "|" + flows["dst_port"].astype("Int64").astype(str)
            + "|" + flows["protocol"].astype("Int64").astype(str))


def _link_within_gap(uf: _UnionFind, keys: pd.Series, starts: np.ndarray, gap_ms: float) -> None:
    """Union consecutive (by start) members of each key group closer than ``gap_ms``."""
    frame = pd.DataFrame({"key": keys.to_numpy(), "start": starts, "row": np.arange(len(keys))})
    frame = frame.sort_values(["key", "start", "row"], kind="stable")
    same = frame["key"].to_numpy()[1:] == frame["key"].to_numpy()[:-1]
    close = np.diff(frame["start"].to_numpy()) <= gap_ms
    rows = frame["row"].to_numpy()
    for a, b in zip(rows[:-1][same & close], rows[1:][same & close]):
        uf.union(int(a), int(b))


def group_flagged(flagged: pd.DataFrame, gap_ms: float) -> np.ndarray:
    """``[M]`` group number (0..G-1, by first row) of each flagged flow.

    ``flagged`` needs ``src_ip``, ``dst_ip``, ``dst_port``, ``protocol``,
    ``first_seen_ms``, ``atom_id``, ``atom_size`` (nulls allowed for the atom columns).
    """
    n = len(flagged)
    uf = _UnionFind(n)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = flagged["first_seen_ms"].to_numpy(dtype=np.float64)
    _link_within_gap(uf, _pair_keys(flagged).reset_index(drop=True), starts, gap_ms)
    _link_within_gap(uf, _service_keys(flagged).reset_index(drop=True), starts, gap_ms)
    sizes = pd.to_numeric(flagged["atom_size"], errors="coerce").fillna(0).to_numpy()
    atoms = flagged["atom_id"].where(sizes > 1)
    atom_frame = pd.DataFrame({"atom": atoms.to_numpy(), "row": np.arange(n)}).dropna()
    for _, rows in atom_frame.groupby("atom")["row"]:
        rows = rows.to_numpy()
        for other in rows[1:]:
            uf.union(int(rows[0]), int(other))
    roots = np.array([uf.find(i) for i in range(n)])
    _, group = np.unique(roots, return_inverse=True)
    return group


def build_incidents(night: pd.DataFrame, is_flagged: np.ndarray, date: str, gap_ms: float,
                    piece_strengths: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """Group a night's flagged flows into ranked incidents.

    ``night [N rows]``: every flow of the night with ``flow_id``, ``src_ip``, ``dst_ip``,
    ``dst_port``, ``protocol``, ``first_seen_ms``, ``last_seen_ms``, ``atom_id``,
    ``atom_size``, ``score``; ``is_flagged [N]``; ``piece_strengths [N, pieces]``:
    ``-log10 p`` of each evidence piece (0 where absent); an incident's ``top_evidence``
    lists the pieces by their mean strength over its flagged flows.
    Returns ``incident_id [N]`` (null for unflagged flows) and the incidents table
    (``pipeline.store.schema.INCIDENTS`` columns). ``flows`` of an incident counts the night's
    flows, flagged or not, of its host pairs within its time span.
    """
    incident_ids = pd.Series([None] * len(night), index=night.index, dtype=object)
    flagged = night.loc[is_flagged].reset_index()
    if flagged.empty:
        return incident_ids, _empty_incidents()
    flagged["group"] = group_flagged(flagged, gap_ms)
    strengths = piece_strengths.loc[is_flagged].reset_index(drop=True)
    summary = flagged.groupby("group").agg(score=("score", "max"), first_seen_ms=("first_seen_ms", "min"),
                                          last_seen_ms=("last_seen_ms", "max"), flagged_flows=("flow_id", "size"))
    summary = summary.sort_values(["score", "first_seen_ms"], ascending=[False, True], kind="stable")
    summary["rank"] = np.arange(1, len(summary) + 1)
    summary["incident_id"] = [f"{date}-{rank:04d}" for rank in summary["rank"]]
    flagged["incident_id"] = flagged["group"].map(summary["incident_id"])
    incident_ids.loc[flagged["index"].to_numpy()] = flagged["incident_id"].to_numpy()

    # starts of the night's flows per host pair, sorted: an incident's flows in its span
    # are binary searches, not a pass over the night per incident
    night_starts = pd.DataFrame({"pair": _pair_keys(night).to_numpy(),
                                 "first": night["first_seen_ms"].to_numpy(dtype=np.int64)})
    starts_by_pair = {pair: np.sort(firsts.to_numpy()) for pair, firsts in night_starts.groupby("pair")["first"]}
    flagged["pair"] = _pair_keys(flagged)
    flagged["service"] = _service_keys(flagged)
    rows = []
    for group, members in flagged.groupby("group", sort=False):
        info = summary.loc[group]
        hosts = sorted(set(members["src_ip"].astype(str)) | set(members["dst_ip"].astype(str)))
        services = sorted(set(members["service"]))
        in_span = sum(int(np.searchsorted(starts_by_pair[pair], info["last_seen_ms"], side="right")
                          - np.searchsorted(starts_by_pair[pair], info["first_seen_ms"], side="left"))
                      for pair in set(members["pair"]))
        total = strengths.loc[members.index].mean().sort_values(ascending=False, kind="stable")
        top = ", ".join(f"{name} {value:.1f}" for name, value in total.items() if value > 0)
        rows.append({
            "incident_id": info["incident_id"], "rank": int(info["rank"]), "hosts": hosts, "services": services,
            "first_seen_ms": int(info["first_seen_ms"]), "last_seen_ms": int(info["last_seen_ms"]),
            "flows": int(max(in_span, len(members))), "flagged_flows": int(info["flagged_flows"]),
            "score": float(info["score"]), "top_evidence": top or "none",
        })
    table = pd.DataFrame(rows).sort_values("rank", kind="stable").reset_index(drop=True)
    return incident_ids, table


def _empty_incidents() -> pd.DataFrame:
    from pipeline.store.schema import INCIDENTS

    return INCIDENTS.empty_table().to_pandas()
