"""The three unsupervised baselines: fitted on benign training flows, thresholds included."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.detectors.features import FEATURE_COLUMNS
from pipeline.evaluation.baselines import BASELINE_NAMES, BaselinesConfig, fit_baselines


def _flows(count: int, rng: np.random.Generator, dst_port: int = 443, packets: float = 10.0) -> pd.DataFrame:
    frame = pd.DataFrame(0.0, index=range(count), columns=list(FEATURE_COLUMNS))
    frame["bidirectional_packets"] = rng.normal(packets, 1.0, count).clip(1)
    frame["bidirectional_bytes"] = frame["bidirectional_packets"] * rng.normal(500, 20, count)
    frame["bidirectional_duration_ms"] = rng.normal(200, 20, count).clip(0)
    frame["dst_ip"], frame["dst_port"], frame["protocol"] = "10.0.0.1", dst_port, 6
    return frame


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(1)
    return fit_baselines(_flows(2000, rng), seed=0)


def test_about_one_percent_of_fresh_benign_flows_is_flagged(fitted):
    results = fitted.score(_flows(4000, np.random.default_rng(2)))
    for name in ("isolation_forest", "knn_distance"):
        rate = results[name][1].mean()
        assert 0.002 < rate < 0.03, (name, rate)
    assert not results["novelty_lookup"][1].any()


def test_outlying_flows_score_above_typical_ones_and_are_flagged(fitted):
    rng = np.random.default_rng(3)
    night = pd.concat([_flows(50, rng), _flows(5, rng, packets=400.0)], ignore_index=True)
    results = fitted.score(night)
    for name in ("isolation_forest", "knn_distance"):
        scores, flagged = results[name]
        assert scores[50:].min() > np.median(scores[:50]), name
        assert flagged[50:].all(), name


def test_novelty_flags_exactly_the_never_seen_service_triplets(fitted):
    rng = np.random.default_rng(4)
    night = pd.concat([_flows(3, rng), _flows(2, rng, dst_port=8443)], ignore_index=True)
    scores, flagged = fitted.score(night)["novelty_lookup"]
    assert flagged.tolist() == [False, False, False, True, True]
    assert scores.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_knn_threshold_uses_leave_one_out_distances():
    rng = np.random.default_rng(5)
    train = _flows(200, rng)
    baselines = fit_baselines(train, seed=0, config=BaselinesConfig(knn_neighbors=1))
    # with self-matches the 1-NN training distance would be 0 for every flow
    assert baselines.knn_threshold > 0.0
    scores, _ = baselines.score(train)["knn_distance"]
    assert np.allclose(scores, 0.0, atol=1e-5)


def test_same_seed_gives_the_same_scores():
    rng = np.random.default_rng(6)
    train, night = _flows(300, rng), _flows(40, rng)
    a = fit_baselines(train, seed=11).score(night)
    b = fit_baselines(train, seed=11).score(night)
    for name in BASELINE_NAMES:
        np.testing.assert_array_equal(a[name][0], b[name][0])


def test_the_order_of_the_training_rows_does_not_change_any_baseline():
    """Same flows in another file layout (e.g. another writer) -> the same baselines."""
    rng = np.random.default_rng(7)
    train, night = _flows(3000, rng), _flows(50, rng)
    train["flow_id"] = [f"{i:016x}" for i in rng.permutation(len(train))]
    config = BaselinesConfig(knn_max_reference=1000)
    a = fit_baselines(train, seed=3, config=config).score(night)
    b = fit_baselines(train.sample(frac=1.0, random_state=5), seed=3, config=config).score(night)
    for name in BASELINE_NAMES:
        np.testing.assert_array_equal(a[name][0], b[name][0])


def test_empty_night_and_too_little_training_data():
    rng = np.random.default_rng(7)
    baselines = fit_baselines(_flows(20, rng), seed=0)
    empty = baselines.score(_flows(0, rng))
    assert all(len(scores) == 0 for scores, _ in empty.values())
    with pytest.raises(ValueError, match="at least 2 training flows"):
        fit_baselines(_flows(1, rng), seed=0)


def test_knn_reference_is_capped_so_scoring_cost_does_not_grow_with_the_training_window():
    rng = np.random.default_rng(7)
    train, night = _flows(3000, rng), _flows(500, rng)
    capped = fit_baselines(train, seed=0, config=BaselinesConfig(knn_max_reference=1000))
    assert capped.knn_index.n_samples_fit_ == 1000
    rate = capped.score(night)["knn_distance"][1].mean()
    assert 0.002 < rate < 0.03, rate  # still about the 0.99 training quantile on fresh benign flows
    exact = fit_baselines(train, seed=0)
    assert exact.knn_index.n_samples_fit_ == 3000


def test_a_subset_of_baselines_is_fitted_and_scored_alone():
    rng = np.random.default_rng(4)
    train, night = _flows(500, rng), _flows(300, rng)
    novelty_only = fit_baselines(train[["dst_ip", "dst_port", "protocol"]], seed=0, names=("novelty_lookup",))
    assert novelty_only.isolation_forest is None and novelty_only.knn_index is None
    assert list(novelty_only.score(night)) == ["novelty_lookup"]
    full = fit_baselines(train, seed=0).score(night)["novelty_lookup"]
    np.testing.assert_array_equal(novelty_only.score(night)["novelty_lookup"][0], full[0])
    with pytest.raises(ValueError, match="unknown baselines"):
        fit_baselines(train, seed=0, names=("lof",))
