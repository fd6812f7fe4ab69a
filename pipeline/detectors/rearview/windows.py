"""RearView's FIFO session queue as index arithmetic (pure, no I/O).

Flows are replayed in start order (``first_seen_ms``, then ``flow_id``) through a FIFO
queue of ``queue_size`` sessions. When the queue is full, a session graph is built from
its contents and the oldest ``evict = round(evict_fraction * queue_size)`` sessions are
evicted, so consecutive graphs share ``queue_size - evict`` sessions. After the last
flow, whatever is left in the queue forms one final (partial) graph.

With ``N`` flows in start order, window ``j`` therefore holds flows
``[j * evict, min(j * evict + queue_size, N))``: windows are full while
``j * evict + queue_size <= N``; the first ``j`` where that fails is the final window
(it holds the rest). Every flow gets its embedding from exactly one window, its *home*:
the window in which it is evicted (``i // evict``), or the final window for the flows
still queued at the end. Because a window is a contiguous index range, scoring can be
split over workers window by window (each worker gets its windows' flows, overlapping
its neighbours by ``queue_size - evict`` flows) and give exactly the single-process
result.
"""
from __future__ import annotations

import numpy as np


def eviction_count(queue_size: int, evict_fraction: float) -> int:
    """Flows evicted per full queue, ``>= 1`` and ``<= queue_size``."""
    if queue_size < 1:
        raise ValueError(f"queue_size must be >= 1, got {queue_size}")
    if not 0.0 < evict_fraction <= 1.0:
        raise ValueError(f"evict_fraction must be in (0, 1], got {evict_fraction}")
    return min(queue_size, max(1, int(round(evict_fraction * queue_size))))


def window_count(num_flows: int, queue_size: int, evict: int) -> int:
    """Number of session graphs built for ``num_flows`` flows (0 for no flows)."""
    if num_flows <= 0:
        return 0
    if num_flows < queue_size:
        return 1
    full = (num_flows - queue_size) // evict + 1      # windows with j*evict + Q <= N
    return full + (1 if num_flows > full * evict else 0)


def window_bounds(num_flows: int, queue_size: int, evict: int) -> np.ndarray:
    """``[W, 2]`` int64 ``[start, stop)`` flow index ranges of the windows, in order.

    A final partial window exists only if it holds flows that no full window evicted.
    """
    count = window_count(num_flows, queue_size, evict)
    starts = np.arange(count, dtype=np.int64) * evict
    stops = np.minimum(starts + queue_size, num_flows)
    return np.stack([starts, stops], axis=1) if count else np.zeros((0, 2), dtype=np.int64)


def home_window(num_flows: int, queue_size: int, evict: int) -> np.ndarray:
    """``[N]`` int64: the window each flow (in start order) takes its embedding from."""
    count = window_count(num_flows, queue_size, evict)
    index = np.arange(num_flows, dtype=np.int64)
    return np.minimum(index // evict, max(count - 1, 0))


def window_membership(num_flows: int, queue_size: int, evict: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(flow_index, window_id)`` pairs, one per (flow, window containing it).

    Used to replicate each flow into every
    window it is context for (the overlap between workers).
    """
    bounds = window_bounds(num_flows, queue_size, evict)
    if len(bounds) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    lengths = bounds[:, 1] - bounds[:, 0]
    window_ids = np.repeat(np.arange(len(bounds), dtype=np.int64), lengths)
    offsets = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flow_index = np.repeat(bounds[:, 0], lengths) + offsets
    return flow_index, window_ids
