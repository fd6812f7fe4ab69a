"""Burst context of a flow inside its FIFO window (pure numpy, no I/O).

RearView's session graph counts a host's flows over its whole FIFO window, and a window
of 2,000 flows spans tens of minutes of a LAN (dev archive: ~28 min). A scan, a brute
force or a flood is a burst of seconds; over the window the host's counts mix that burst
with half an hour of its ordinary traffic. :func:`burst_counts` measures the burst where
it happens: for every flow, how many flows of the same window start within
``+-window_ms`` of it and share

* its initiator (``src``): how busy the initiator is right now (scans and brute forces
  are many flows in seconds, one beacon is one);
* its initiator and its service (``src`` and ``dst_ip|dst_port|protocol``): repeats of
  the same conversation (a brute force repeats, a scan does not);
* its service: how many flows the service receives right now, from anyone (a flood or a
  sweep of many sources at one service).

These are the time-local statistics per host and per host pair that flow-based
detectors keep (Kitsune's damped windows per source, per channel; METHODS.md's 10 s
"same host, same moment" window for A2GNN's similarity edges). Counts use only the
window's own flows, so a window's graph still depends on nothing outside it and
distributed scoring equals a single-process run.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

BURST_KEYS = ("initiator", "initiator_service", "service")
NUM_BURST_FEATURES = len(BURST_KEYS)


def count_within(times_ms: np.ndarray, key: np.ndarray, window_ms: int) -> np.ndarray:
    """``[N]`` int64: per item, the items (itself included) with the same ``key`` whose time
    lies within ``[t - window_ms, t + window_ms]``.

    ``times_ms``: ``[N]`` int64 milliseconds; ``key``: ``[N]`` int64 codes ``>= 0``.
    ``O(N log N)``: items sorted by ``(key, time)`` and located by binary search on one
    int64 composite ``key * stride + (time - min time)``.
    """
    times = np.asarray(times_ms, dtype=np.int64)
    key = np.asarray(key, dtype=np.int64)
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    if window_ms < 0:
        raise ValueError(f"window_ms must be >= 0, got {window_ms}")
    offset = times - times.min()
    stride = int(offset.max()) + 2 * int(window_ms) + 1
    if (int(key.max()) + 1) * stride >= 2 ** 62:
        raise ValueError("count_within: time span x keys too large for an int64 composite")
    composite = key * stride + offset
    ordered = np.sort(composite)
    upper = np.searchsorted(ordered, composite + window_ms, side="right")
    lower = np.searchsorted(ordered, composite - window_ms, side="left")
    return (upper - lower).astype(np.int64)


def burst_counts(times_ms: np.ndarray, initiator: np.ndarray, service: np.ndarray, window_ms: int) -> np.ndarray:
    """``[N, 3]`` float32: ``ln`` of the :data:`BURST_KEYS` counts of :func:`count_within`.

    ``initiator``, ``service``: ``[N]`` labels of any hashable dtype (IP strings or
    vertex ids; triplet keys or ids). A lone flow reads 0 in every column.
    """
    if len(times_ms) == 0:
        return np.zeros((0, NUM_BURST_FEATURES), dtype=np.float32)
    initiator_code = pd.factorize(pd.Series(np.asarray(initiator)), sort=False)[0].astype(np.int64)
    service_code = pd.factorize(pd.Series(np.asarray(service)), sort=False)[0].astype(np.int64)
    pair_code = initiator_code * (int(service_code.max()) + 1) + service_code
    counts = [count_within(times_ms, code, window_ms) for code in (initiator_code, pair_code, service_code)]
    return np.log(np.stack(counts, axis=1).astype(np.float64)).astype(np.float32)
