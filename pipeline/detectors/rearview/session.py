"""RearView over FIFO session windows: screening (stage 1), edge features and the session
graphs' edge embeddings (stage 2), shared by training and scoring.

Edge features are the conditional VAE's latent mean and the novelty bit
(:func:`edge_features`), plus the burst counts when ``burst_window_ms`` is on
(``pipeline.detectors.rearview.bursts``); windows come from
``pipeline.detectors.rearview.windows``.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from models.rearview_training import embed_edges, session_graph
from pipeline.detectors.rearview.bursts import burst_counts
from pipeline.detectors.rearview.conditions import triplet_keys
from pipeline.detectors.rearview.config import RearViewConfig
from pipeline.detectors.rearview.windows import home_window, window_bounds

log = logging.getLogger(__name__)


def edge_features(latent_mean: np.ndarray, novel: np.ndarray) -> np.ndarray:
    """``[N, 17]`` float32 session-graph edge features: VAE latent mean ``|| novel``.

    METHODS.md gives the latent mean alone. The novelty bit (triplet unseen on other
    nights) is added because under a pooled fallback condition the latent mean of a flow
    to a new server is that of an ordinary flow of its protocol: without it, a burst of
    flows to new servers, the shape of a scan, brute force or beacon, is invisible to the
    graph layer, which can only see how many flows a host has and what they look like.
    """
    return np.hstack([np.asarray(latent_mean, dtype=np.float32),
                      np.asarray(novel, dtype=np.float32).reshape(-1, 1)])


def burst_inputs(flows: pd.DataFrame, config: RearViewConfig) -> dict:
    """:func:`stream_windows`' burst arguments for ``flows`` (replay order): empty when
    burst counts are off, so the default path builds no triplet keys for them."""
    if config.burst_window_ms <= 0:
        return {}
    return {"times_ms": flows["first_seen_ms"].to_numpy(dtype=np.int64),
            "service": triplet_keys(flows).to_numpy(), "burst_window_ms": config.burst_window_ms}


# -------------------------------------------------------------- training (worker)
def stream_windows(src, dst, edges, p, queue_size: int, evict: int, bounds: np.ndarray | None = None,
                   times_ms: np.ndarray | None = None, service: np.ndarray | None = None,
                   burst_window_ms: int = 0) -> list:
    """``[(start, stop, SessionGraph)]`` of a flow stream's FIFO windows, built once and
    embedded by every ensemble member (the graphs do not depend on the encoder).

    ``src``, ``dst``: ``[N]`` initiator and responder labels; ``edges``: ``[N, D]``
    (:func:`edge_features`); ``p``: ``[N]`` screening probability. ``bounds``: ``[W, 2]``
    flow ranges into the arrays (default: every window of the stream,
    :func:`window_bounds`; a scoring task passes its span's windows). With
    ``burst_window_ms > 0`` each window's edge features gain the ``[E, 3]`` burst counts
    of its own flows (``pipeline.detectors.rearview.bursts``; ``times_ms [N]`` start times,
    ``service [N]`` triplet labels), so every graph has ``D + 3`` edge features.
    """
    if bounds is None:
        bounds = window_bounds(len(src), queue_size, evict)

    def window_edges(start: int, stop: int) -> np.ndarray:
        if burst_window_ms <= 0:
            return edges[start:stop]
        bursts = burst_counts(times_ms[start:stop], src[start:stop], service[start:stop], burst_window_ms)
        return np.hstack([edges[start:stop], bursts])

    return [(start, stop, session_graph(src[start:stop], dst[start:stop], window_edges(start, stop), p[start:stop]))
            for start, stop in bounds]


def embed_windows(windows: list, num_flows: int, encoder, queue_size: int, evict: int,
                  device: str = "cpu", home: np.ndarray | None = None) -> np.ndarray:
    """Edge embeddings ``[num_flows, 64]`` by ``encoder``, each flow's from its home window.

    ``home``: ``[num_flows]`` index into ``windows`` of each flow's home window (default
    :func:`home_window` of the whole stream); flows whose home is not in ``windows`` keep
    zeros.
    """
    out = np.zeros((num_flows, encoder.out_dim), dtype=np.float32)
    if home is None:
        home = home_window(num_flows, queue_size, evict)
    for window, (start, stop, graph) in enumerate(windows):
        z = embed_edges(encoder, graph, device)
        mine = home[start:stop] == window
        out[start:stop][mine] = z[mine]
    return out
