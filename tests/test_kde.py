"""Per-condition KDE screening probabilities (models/kde.py)."""
from __future__ import annotations

import numpy as np
import pytest

from models.kde import fit_conditional_kde, kde_cdf, kde_probability


def _two_condition_model():
    rng = np.random.default_rng(0)
    condition = np.repeat([0, 1], 500)
    recon = np.concatenate([rng.normal(1.0, 0.1, 500), rng.normal(10.0, 2.0, 500)])
    latent = np.concatenate([rng.normal(3.0, 0.5, 500), rng.normal(3.0, 0.5, 500)])
    return fit_conditional_kde(condition, recon, latent, num_conditions=3, bandwidth=0.1), recon, latent


def test_probabilities_lie_in_unit_interval_even_far_outside_training_range():
    model, _, _ = _two_condition_model()
    values = np.array([-1e6, -5.0, 0.0, 1.0, 5.0, 1e6])
    p = kde_probability(model, np.zeros(len(values), dtype=int), values, values)
    assert np.all((p >= 0.0) & (p <= 1.0))
    assert p[0] == 0.0 and p[-1] == 1.0


def test_probability_is_monotone_in_reconstruction_error_and_latent_norm():
    model, _, _ = _two_condition_model()
    grid = np.linspace(0.0, 2.0, 400)
    fixed = np.full(len(grid), 3.0)
    by_recon = kde_probability(model, np.zeros(len(grid), dtype=int), grid, fixed)
    by_latent = kde_probability(model, np.zeros(len(grid), dtype=int), fixed, np.linspace(0, 6, 400))
    assert np.all(np.diff(by_recon) >= 0) and by_recon[-1] - by_recon[0] > 0.85
    assert np.all(np.diff(by_latent) >= 0) and by_latent[-1] - by_latent[0] > 0.09


def test_tabulated_cdf_matches_exact_kernel_sum():
    model, recon, _ = _two_condition_model()
    values = np.linspace(0.6, 1.4, 101)
    standard_samples = (recon[:500] - model["recon_mean"][0]) / model["recon_std"][0]
    exact = kde_cdf((values - model["recon_mean"][0]) / model["recon_std"][0], standard_samples, 0.1)
    big = np.full(len(values), 1e9)  # latent part saturates at 1
    p = kde_probability(model, np.zeros(len(values), dtype=int), values, big)
    np.testing.assert_allclose((p - 0.1) / 0.9, exact, atol=1e-3)


def test_each_condition_judges_values_against_its_own_training_values():
    model, _, _ = _two_condition_model()
    error = np.array([5.0, 5.0])
    p = kde_probability(model, np.array([0, 1]), error, np.array([3.0, 3.0]))
    assert p[0] > 0.9       # recon part saturates: far above condition 0's errors (~1)
    assert p[1] < 0.1       # low for condition 1 (errors around 10)


def test_training_values_get_roughly_uniform_probabilities():
    model, recon, latent = _two_condition_model()
    p_recon_only = kde_probability(model, np.repeat([0, 1], 500), recon, np.full(1000, -1e9)) / 0.9
    assert abs(np.mean(p_recon_only > 0.95) - 0.05) < 0.03


def test_condition_without_training_values_is_refused():
    model, _, _ = _two_condition_model()
    with pytest.raises(ValueError, match="condition ids \\[2\\]"):
        kde_probability(model, np.array([2]), np.array([1.0]), np.array([1.0]))
