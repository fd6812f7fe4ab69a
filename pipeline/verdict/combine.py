"""Combining the evidence pieces into one score per flow, and the alarm threshold.

Combination: Fisher's method over the pieces a flow has, ``X = -2 sum_i ln p_i`` with
``2k`` degrees of freedom for ``k`` pieces, combined tail ``P = chi2.sf(X, 2k)``; the
verdict's score is ``-log10 P`` (higher = more anomalous; 2 means a 1-in-100 benign flow
if the pieces were independent and the night like the validation nights). A flow with
no piece at all has ``P = 1``.

Threshold (``VerdictConfig.threshold_rule``), at most ``false_alarm_budget`` of benign
flows flagged:

* ``validation``: the budget quantile of ``P`` on the benign validation flows, never
  looser than the budget itself.
* ``night_null`` (Efron's empirical null): ``z = Phi^-1(1 - P)``; the night's bulk gives a
  robust location and scale (median, IQR / 1.349) of the benign null, and the threshold is
  ``z* = location + Phi^-1(1 - budget) * scale``. Pieces are calibrated on the training
  window, but a night busier, quieter or more novel than those nights shifts and widens
  every flow's combined evidence, and correlated pieces widen it too; the night's own
  bulk (attacks are a minority of flows) measures that.
* ``night_null_validation_shape``: as ``night_null``, but the distance of the budget
  tail from the bulk, in robust scale units, is read on the validation nights instead
  of assumed Gaussian (never closer than the Gaussian one).
* ``night_null_upper``: as ``night_null`` with the scale read from the upper half of the
  bulk only, ``(q75 - q50) / 0.6745`` (flows whose pieces are all near 1 pile up in the
  lower half and widen the IQR).
* ``night_lfdr`` (Efron's local false discovery rate): the night's density ``f`` of ``z``
  (Gaussian kernel), the empirical null ``f0`` of ``night_null``, ``lfdr = f0 / f``
  (``pi0 = 1``: the null is matched to the bulk); the threshold is the lowest ``z`` above
  the null's location from which every flow of the night has ``lfdr <= lfdr_level``.
  Clumps of flows with the same strong evidence (a coordinated attack) are dense where the
  null is thin; benign outliers are sparse.

Both night rules fall back to ``validation`` on a night of fewer than ``min_night_flows``
flows, and never flag a flow whose ``P`` exceeds the budget.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

P_FLOOR = 1e-12
"""Pieces are clipped to ``[P_FLOOR, 1]`` so one degenerate piece cannot reach infinity."""


def fisher(pieces: np.ndarray) -> np.ndarray:
    """``pieces [N, K]`` tail probabilities (``NaN`` = absent) -> ``[N]`` combined tail."""
    pieces = np.asarray(pieces, dtype=np.float64)
    present = np.isfinite(pieces)
    clipped = np.clip(np.where(present, pieces, 1.0), P_FLOOR, 1.0)
    statistic = -2.0 * np.log(clipped).sum(axis=1)
    dof = 2 * present.sum(axis=1)
    combined = np.ones(len(pieces))
    some = dof > 0
    combined[some] = stats.chi2.sf(statistic[some], dof[some])
    return np.clip(combined, P_FLOOR * 1e-6, 1.0)


def score_of(combined: np.ndarray) -> np.ndarray:
    """``[N]`` verdict score ``-log10 P``."""
    return -np.log10(np.asarray(combined, dtype=np.float64))


def threshold_score(validation_combined: np.ndarray, budget: float) -> float:
    """The score above which a flow is flagged: ``-log10`` of the smaller of ``budget`` and
    the ``budget`` quantile of the validation flows' combined tails (so at most that share
    of them is flagged). No validation flows: the budget alone."""
    validation = np.asarray(validation_combined, dtype=np.float64)
    validation = validation[np.isfinite(validation)]
    level = budget
    if validation.size:
        level = min(budget, float(np.quantile(validation, budget, method="lower")))
    return float(-np.log10(max(level, P_FLOOR * 1e-6)))


IQR_TO_SIGMA = 1.3489795003921634
"""Interquartile range of a standard normal distribution."""


def z_of(combined: np.ndarray) -> np.ndarray:
    """``[N]`` one-sided normal deviates ``Phi^-1(1 - P)`` of combined tails (``P = 1``, a
    flow without evidence, maps to about -7 rather than minus infinity)."""
    return stats.norm.isf(np.clip(np.asarray(combined, dtype=np.float64), 1e-300, 1.0 - 1e-12))


def robust_null(z: np.ndarray) -> tuple[float, float]:
    """``(location, scale)`` of the bulk of ``z``: median and IQR / 1.349 (floored at 1e-6)."""
    q1, median, q3 = np.quantile(np.asarray(z, dtype=np.float64), [0.25, 0.5, 0.75])
    return float(median), float(max((q3 - q1) / IQR_TO_SIGMA, 1e-6))


def tail_distance(validation_z: list[np.ndarray], budget: float) -> float:
    """The ``1 - budget`` quantile of validation ``z`` standardised per night by its own
    :func:`robust_null`, pooled over nights; at least the Gaussian ``Phi^-1(1 - budget)``."""
    gaussian = float(stats.norm.isf(budget))
    units = [(z - robust_null(z)[0]) / robust_null(z)[1] for z in validation_z if len(z)]
    if not units:
        return gaussian
    return max(gaussian, float(np.quantile(np.concatenate(units), 1.0 - budget)))


def upper_null(z: np.ndarray) -> tuple[float, float]:
    """``(location, scale)`` from the upper half of the bulk: median and ``(q75 - q50) / 0.6745``."""
    median, q3 = np.quantile(np.asarray(z, dtype=np.float64), [0.5, 0.75])
    return float(median), float(max((q3 - median) / (IQR_TO_SIGMA / 2.0), 1e-6))


def score_of_z(z: float, budget: float) -> float:
    """Score units (``-log10 P``) of a threshold ``z``, never below ``-log10 budget``."""
    return float(max(-np.log10(max(stats.norm.sf(z), 1e-300)), -np.log10(budget)))


KDE_SAMPLE = 20_000
"""At most this many flows (a fixed-seed sample) shape the night's density for ``night_lfdr``."""


def lfdr_threshold_score(night_combined: np.ndarray, budget: float, level: float = 0.2) -> float:
    """``night_lfdr`` threshold (score units): the lowest ``z`` above the null's location
    from which every flow has ``lfdr = f0(z) / f(z) <= level``; no such flow: nothing
    above the night's largest ``z`` is flagged."""
    z = z_of(night_combined)
    location, scale = robust_null(z)
    sample = z if len(z) <= KDE_SAMPLE else np.random.default_rng(0).choice(z, KDE_SAMPLE, replace=False)
    upper = np.sort(z[z > location])
    if upper.size == 0 or np.ptp(sample) == 0:
        return score_of_z(float(np.max(z)) if len(z) else np.inf, budget)
    density = stats.gaussian_kde(sample)(upper)
    null = stats.norm.pdf(upper, location, scale)
    lfdr = null / np.maximum(density, 1e-300)
    above_level = np.flatnonzero(lfdr > level)
    if above_level.size == 0:
        return score_of_z(location, budget)
    last = above_level[-1]
    return score_of_z(float(upper[last]), budget)


def night_threshold_score(night_combined: np.ndarray, distance: float, budget: float) -> float:
    """Threshold (score units, ``-log10 P``) at ``distance`` robust scales above the
    night's bulk, and never below the budget's own score ``-log10 budget``."""
    location, scale = robust_null(z_of(night_combined))
    return score_of_z(location + distance * scale, budget)


def night_upper_threshold_score(night_combined: np.ndarray, distance: float, budget: float) -> float:
    """As :func:`night_threshold_score` with :func:`upper_null`'s scale."""
    location, scale = upper_null(z_of(night_combined))
    return score_of_z(location + distance * scale, budget)


def evidence_text(pieces: np.ndarray, names: tuple[str, ...], lacking: list[list[str]],
                  notes: list[list[str]] | None = None, top: int = 3) -> list[str]:
    """Per flow, the pieces that drove its verdict, strongest first, as ``-log10 p``
    (``"history 3.4, a2gnn 2.1"``), then the pieces it lacked (``"lacked: rearview"``)
    and notes (``"screening: no prior"``). Pieces at ``p >= 0.1`` are not listed."""
    strength = -np.log10(np.clip(np.where(np.isfinite(pieces), pieces, 1.0), P_FLOOR, 1.0))
    order = np.argsort(-strength, axis=1, kind="stable")
    texts = []
    for row in range(len(pieces)):
        parts = [f"{names[k]} {strength[row, k]:.1f}" for k in order[row, :top] if strength[row, k] >= 1.0]
        text = ", ".join(parts) if parts else "none"
        if lacking[row]:
            text += "; lacked: " + ", ".join(lacking[row])
        if notes and notes[row]:
            text += "; " + ", ".join(notes[row])
        texts.append(text)
    return texts
