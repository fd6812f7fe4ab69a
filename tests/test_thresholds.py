"""Thresholds from training scores: EVT peaks over threshold and plain quantiles."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from models.thresholds import evt_threshold, quantile_threshold


def test_evt_threshold_recovers_the_exponential_tail_quantile():
    rng = np.random.default_rng(0)
    scores = rng.exponential(scale=2.0, size=200_000)

    threshold = evt_threshold(scores, quantile=0.95, risk=0.002)

    exact = stats.expon(scale=2.0).ppf(1 - 0.002)  # 2 ln(500) = 12.43
    assert threshold == pytest.approx(exact, rel=0.03)


def test_evt_threshold_recovers_a_heavy_pareto_tail_quantile():
    rng = np.random.default_rng(1)
    law = stats.genpareto(c=0.3, scale=1.0)
    scores = law.rvs(size=200_000, random_state=rng)

    threshold = evt_threshold(scores, quantile=0.95, risk=0.002)

    assert threshold == pytest.approx(law.ppf(1 - 0.002), rel=0.06)


def test_evt_threshold_of_a_bounded_uniform_tail_stays_inside_the_support():
    rng = np.random.default_rng(2)
    scores = rng.uniform(0.0, 1.0, size=100_000)

    threshold = evt_threshold(scores, quantile=0.95, risk=0.002)

    assert 0.99 < threshold <= 1.01


def test_evt_threshold_falls_back_to_the_quantile_when_the_tail_is_too_short():
    scores = np.arange(100, dtype=float)  # 4 excesses above the 0.95 quantile

    assert evt_threshold(scores, quantile=0.95, risk=0.002) == pytest.approx(np.quantile(scores, 0.998))


def test_evt_threshold_ignores_non_finite_scores():
    rng = np.random.default_rng(3)
    scores = rng.exponential(size=50_000)
    polluted = np.concatenate([scores, [np.nan, np.inf]])

    assert evt_threshold(polluted) == evt_threshold(scores)


def test_evt_threshold_rejects_a_risk_larger_than_the_tail():
    with pytest.raises(ValueError, match="risk"):
        evt_threshold(np.arange(1000.0), quantile=0.95, risk=0.1)


def test_quantile_threshold_is_the_empirical_quantile():
    assert quantile_threshold(np.arange(101.0), 0.99) == pytest.approx(99.0)


def test_thresholds_refuse_scores_without_a_finite_value():
    with pytest.raises(ValueError, match="finite"):
        quantile_threshold(np.array([np.nan]), 0.5)
