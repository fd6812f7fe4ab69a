"""Numeric flow features shared by both detectors, and their normalisation.

The detectors see the same per-flow vector: the statistical columns of the ``flows``
table (``pipeline.store.schema.FLOWS``), ``log1p``-scaled (counts, bytes and times are
heavy-tailed) and standardised with statistics fitted on the *training window* only.
The statistics are a small JSON-able dict stored with every model artifact, so a
scored night is never normalised with its own statistics.

Ports and addresses are deliberately not features: they are identities, used by the
graph (hosts) and by RearView's condition triplet.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.store.schema import DIRECTIONS, TCP_FLAGS

_PER_DIRECTION = (
    "duration_ms",
    "packets",
    "bytes",
    "min_ps",
    "mean_ps",
    "stddev_ps",
    "max_ps",
    "min_piat_ms",
    "mean_piat_ms",
    "stddev_piat_ms",
    "max_piat_ms",
)
FEATURE_COLUMNS: tuple[str, ...] = tuple(
    [f"{d}_{stat}" for d in DIRECTIONS for stat in _PER_DIRECTION]
    + [f"bidirectional_{flag}_packets" for flag in TCP_FLAGS]
    + ["ip_fragment_packets"]
)
"""Column names, in model input order. ``len(FEATURE_COLUMNS)`` is the input width."""

_MIN_STD = 1e-6


def raw_matrix(flows: pd.DataFrame) -> np.ndarray:
    """``[num_flows, len(FEATURE_COLUMNS)]`` float64, nulls as 0, log1p-scaled.

    Negative values (never expected) are clipped to 0 before the log.
    """
    values = flows.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=np.float64, na_value=0.0)
    return np.log1p(np.clip(np.nan_to_num(values, nan=0.0), 0.0, None))


def fit_normalisation(flows: pd.DataFrame) -> dict:
    """Mean and standard deviation per feature of ``raw_matrix(flows)``.

    Returns ``{"columns": [...], "mean": [...], "std": [...]}`` (plain lists, JSON-able).
    Raises ``ValueError`` on an empty frame: there is nothing to fit on.
    """
    if len(flows) == 0:
        raise ValueError("cannot fit feature normalisation on zero flows")
    matrix = raw_matrix(flows)
    std = matrix.std(axis=0)
    return {
        "columns": list(FEATURE_COLUMNS),
        "mean": matrix.mean(axis=0).tolist(),
        "std": np.where(std < _MIN_STD, 1.0, std).tolist(),
    }


def apply_normalisation(flows: pd.DataFrame, stats: dict) -> np.ndarray:
    """Standardised features ``[num_flows, num_features]`` float32 using fitted ``stats``.

    Raises ``ValueError`` when ``stats`` were fitted on other columns.
    """
    if list(stats["columns"]) != list(FEATURE_COLUMNS):
        raise ValueError("normalisation statistics were fitted on different feature columns")
    matrix = raw_matrix(flows)
    mean = np.asarray(stats["mean"], dtype=np.float64)
    std = np.asarray(stats["std"], dtype=np.float64)
    return ((matrix - mean) / std).astype(np.float32)
