"""Packet-length signatures of flows: Daubechies-4 wavelet statistics of ``splt_signed_ps``.

A flow's signature is a fixed-length vector of statistics of the Daubechies-4 (``db4``)
wavelet decomposition of its first ``SPLT_LENGTH`` signed packet sizes (IP bytes,
positive src->dst, negative dst->src; shorter sequences are zero-padded). The
decomposition uses ``mode="periodization"`` at level 2, so 32 sizes give three bands
(approximation ``a2``: 8 coefficients, details ``d2``: 8, ``d1``: 16). Per band we keep
mean, standard deviation, minimum, maximum and mean energy: 15 numbers per flow.

The similarity edges of the graph compare signatures with Pearson's correlation after
standardising every statistic with a mean and standard deviation fitted on the
*training window* (``fit_signature_normalisation``). Those statistics are a small
JSON-able dict stored with the run and passed to ``pipeline.graph.build.build_graph``, so a
scored night is never normalised with its own statistics.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pywt

from pipeline.store.schema import SPLT_LENGTH

log = logging.getLogger(__name__)

WAVELET = "db4"
WAVELET_MODE = "periodization"
WAVELET_LEVEL = 2
BANDS = ("a2", "d2", "d1")
BAND_STATISTICS = ("mean", "std", "min", "max", "energy")
SIGNATURE_FEATURES: tuple[str, ...] = tuple(f"{b}_{s}" for b in BANDS for s in BAND_STATISTICS)
"""Names of the signature columns, in order. ``len(SIGNATURE_FEATURES) == 15``."""

STATS_VERSION = 1
_MIN_STD = 1e-6


def splt_matrix(splt: pd.Series | list, length: int = SPLT_LENGTH) -> np.ndarray:
    """Stack a column of signed packet-size lists into ``[n_flows, length]`` float64.

    Missing lists (``None``) become all-zero rows; longer lists are truncated.
    """
    values = list(splt)
    matrix = np.zeros((len(values), length), dtype=np.float64)
    for row, sizes in enumerate(values):
        if sizes is None:
            continue
        sizes = np.asarray(sizes, dtype=np.float64)[:length]
        matrix[row, : sizes.size] = sizes
    return matrix


def wavelet_signatures(sizes: np.ndarray) -> np.ndarray:
    """Raw (unnormalised) signatures of ``sizes`` ``[n_flows, SPLT_LENGTH]`` (IP bytes).

    Returns ``[n_flows, len(SIGNATURE_FEATURES)]`` float64. Pure numpy/PyWavelets,
    vectorised over flows.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 2:
        raise ValueError(f"sizes must be [n_flows, length], got shape {sizes.shape}")
    if sizes.shape[0] == 0:
        return np.zeros((0, len(SIGNATURE_FEATURES)))
    bands = pywt.wavedec(sizes, WAVELET, mode=WAVELET_MODE, level=WAVELET_LEVEL, axis=1)
    columns = []
    for coefficients in bands:  # a2, d2, d1
        columns += [
            coefficients.mean(axis=1),
            coefficients.std(axis=1),
            coefficients.min(axis=1),
            coefficients.max(axis=1),
            (coefficients**2).mean(axis=1),
        ]
    return np.column_stack(columns)


def _eligible(flows: pd.DataFrame, min_packets: int) -> pd.DataFrame:
    return flows[flows["bidirectional_packets"] > min_packets]


def _partial_moments(flows: pd.DataFrame, min_packets: int) -> np.ndarray:
    """``[3, n_features]``: count, sum and sum of squares of the raw signatures."""
    raw = wavelet_signatures(splt_matrix(_eligible(flows, min_packets)["splt_signed_ps"]))
    count = np.full(raw.shape[1], raw.shape[0], dtype=np.float64)
    return np.vstack([count, raw.sum(axis=0), (raw**2).sum(axis=0)])


def fit_signature_normalisation(flows: Any, min_packets: int = 8) -> dict:
    """Fit per-statistic mean and standard deviation of signatures on training flows.

    ``flows``: a pandas DataFrame or a Spark DataFrame with ``splt_signed_ps`` and
    ``bidirectional_packets``. Only flows with more than ``min_packets`` packets (those
    similarity edges can join) are used. Returns a JSON-able dict; raises ``ValueError``
    when no flow qualifies (nothing to fit on).
    """
    if isinstance(flows, pd.DataFrame):
        moments = _partial_moments(flows, min_packets)
    else:
        moments = _spark_moments(flows, min_packets)
    count = moments[0, 0]
    if count == 0:
        raise ValueError(
            f"fit_signature_normalisation: no flow with more than {min_packets} packets "
            "in the training window; cannot fit signature statistics"
        )
    mean = moments[1] / count
    variance = np.maximum(moments[2] / count - mean**2, 0.0)
    std = np.maximum(np.sqrt(variance), _MIN_STD)
    mean, std = _layout_free(mean), _layout_free(std)
    log.info("signature normalisation fitted on %d flows", int(count))
    return {
        "version": STATS_VERSION,
        "wavelet": WAVELET,
        "mode": WAVELET_MODE,
        "level": WAVELET_LEVEL,
        "length": SPLT_LENGTH,
        "min_packets": int(min_packets),
        "features": list(SIGNATURE_FEATURES),
        "flows": int(count),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
    }


STATS_SIGNIFICANT_DIGITS = 12
"""Fitted means and deviations are rounded to this many significant digits: Spark sums the
moments partition by partition, so the same flows stored in other files (a capture read
as byte ranges, a rerun with other parallelism) change the last bits of the sums, and a
similarity edge at its threshold could flip with them."""


def _layout_free(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to :data:`STATS_SIGNIFICANT_DIGITS` significant digits."""
    return np.array([float(f"{v:.{STATS_SIGNIFICANT_DIGITS}g}") for v in np.asarray(values, dtype=np.float64)])


def _spark_moments(flows_df, min_packets: int) -> np.ndarray:
    """Per-partition moments summed on the driver (a few numbers per partition)."""
    from pyspark.sql import types as T

    n = len(SIGNATURE_FEATURES)
    out_schema = T.StructType([T.StructField("moments", T.ArrayType(T.DoubleType()))])

    def moments_of(batches):
        total = np.zeros((3, n))
        for batch in batches:
            total += _partial_moments(batch, min_packets)
        yield pd.DataFrame({"moments": [total.ravel().tolist()]})

    rows = (
        flows_df.select("splt_signed_ps", "bidirectional_packets")
        .mapInPandas(moments_of, schema=out_schema)
        .collect()
    )
    total = np.zeros((3, n))
    for row in rows:
        total += np.asarray(row["moments"]).reshape(3, n)
    return total


def check_signature_stats(stats: dict) -> None:
    """Raise ``ValueError`` when ``stats`` was not produced by this module's version."""
    expected = {
        "version": STATS_VERSION,
        "wavelet": WAVELET,
        "mode": WAVELET_MODE,
        "level": WAVELET_LEVEL,
        "features": list(SIGNATURE_FEATURES),
    }
    for key, value in expected.items():
        if stats.get(key) != value:
            raise ValueError(
                f"signature stats field {key!r} is {stats.get(key)!r}, expected {value!r}: "
                "refit them with pipeline.graph.signatures.fit_signature_normalisation"
            )


def normalised_signatures(sizes: np.ndarray, stats: dict) -> np.ndarray:
    """Signatures standardised with the training ``stats``: ``[n_flows, 15]``."""
    raw = wavelet_signatures(sizes)
    return (raw - np.asarray(stats["mean"])) / np.asarray(stats["std"])


def correlation_ready(signatures: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm, so Pearson(i, j) = ``out[i] @ out[j]``.

    Rows with zero variance (no defined correlation) become NaN.
    """
    centred = signatures - signatures.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 1e-12, centred / norms, np.nan)
