"""Score thresholds fitted on training scores only (pure functions, no I/O).

* :func:`evt_threshold`: peaks over threshold (extreme value theory). Take the
  ``q``-quantile ``t`` of the training scores, fit a generalised Pareto distribution
  (shape ``xi``, scale ``sigma``, location 0) to the excesses ``s - t`` of the ``n_t``
  scores above ``t`` (``n`` scores in all), and return the score whose exceedance
  probability is ``risk``::

      P(S > t + y) = (n_t / n) * (1 + xi y / sigma) ** (-1 / xi)
      threshold    = t + sigma / xi * ((n_t / (n risk)) ** xi - 1)     (xi != 0)
                   = t + sigma * log(n_t / (n risk))                    (xi == 0)

* :func:`quantile_threshold`: the plain empirical quantile.
"""
from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

MIN_TAIL_SAMPLES = 10
"""Fewer excesses than this cannot support a GPD fit: fall back to the quantile."""


def quantile_threshold(scores: np.ndarray, quantile: float) -> float:
    """Empirical ``quantile`` (in [0, 1]) of finite ``scores``.

    Raises ``ValueError`` on no finite score or a quantile outside [0, 1].
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    finite = _finite(scores)
    return float(np.quantile(finite, quantile))


def evt_threshold(scores: np.ndarray, quantile: float = 0.95, risk: float = 0.002) -> float:
    """Peaks-over-threshold score with exceedance probability ``risk`` (see module doc).

    ``scores``: 1-d training scores (higher = more anomalous). ``quantile`` is the
    initial threshold's level, ``risk`` must be below ``1 - quantile``. With fewer than
    ``MIN_TAIL_SAMPLES`` excesses (or a degenerate tail) the empirical
    ``1 - risk`` quantile is returned instead (logged). The result is never below the
    initial threshold ``t``.
    """
    from scipy.stats import genpareto

    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    if not 0.0 < risk < 1.0 - quantile:
        raise ValueError(f"risk must lie in (0, 1 - quantile) = (0, {1 - quantile}), got {risk}")
    finite = _finite(scores)
    initial = float(np.quantile(finite, quantile))
    excesses = finite[finite > initial] - initial
    if excesses.size < MIN_TAIL_SAMPLES or float(np.ptp(excesses)) == 0.0:
        log.warning(
            "EVT: only %d distinct tail samples above the %.3f quantile; using the %.4f quantile",
            excesses.size, quantile, 1.0 - risk,
        )
        return float(np.quantile(finite, 1.0 - risk))
    shape, _, scale = genpareto.fit(excesses, floc=0.0)
    ratio = excesses.size / (finite.size * risk)
    if abs(shape) < 1e-6:
        threshold = initial + scale * math.log(ratio)
    else:
        threshold = initial + scale / shape * (ratio**shape - 1.0)
    return float(max(threshold, initial))


def _finite(scores: np.ndarray) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("cannot fit a threshold: no finite training score")
    return finite
