"""Burst counts: how many flows share a flow's initiator / conversation / service right now."""
import numpy as np
import pytest

from pipeline.detectors.rearview.bursts import burst_counts, count_within


def brute_force_count(times, key, window_ms):
    return np.array([np.sum((key == key[i]) & (np.abs(times - times[i]) <= window_ms)) for i in range(len(times))])


def test_count_within_counts_same_key_items_inside_the_window_including_itself():
    times = np.array([0, 5_000, 10_000, 10_001, 30_000])
    key = np.array([0, 0, 0, 0, 1])
    assert count_within(times, key, 10_000).tolist() == [3, 4, 4, 3, 1]


def test_count_within_matches_a_quadratic_reference_on_random_input():
    rng = np.random.default_rng(3)
    times = rng.integers(0, 100_000, 500)
    key = rng.integers(0, 7, 500)
    assert np.array_equal(count_within(times, key, 2_500), brute_force_count(times, key, 2_500))


def test_count_within_rejects_a_negative_window():
    with pytest.raises(ValueError):
        count_within(np.array([1, 2]), np.array([0, 0]), -1)


def test_a_scan_a_brute_force_and_a_lone_flow_read_differently():
    # scanner 10.0.0.9 hits 20 services in 2 s; guesser 10.0.0.7 hits one service 20 times;
    # 10.0.0.5 makes one flow. Ten minutes later nothing overlaps.
    scan = [("10.0.0.9", f"10.0.1.{i}|22|6", 100 * i) for i in range(20)]
    brute = [("10.0.0.7", "10.0.2.1|22|6", 100 * i) for i in range(20)]
    lone = [("10.0.0.5", "10.0.3.1|443|6", 600_000)]
    src, service, times = (np.array(column) for column in zip(*(scan + brute + lone)))
    counts = np.exp(burst_counts(times, src, service, 10_000)).round().astype(int)
    assert counts[0].tolist() == [20, 1, 1]      # busy initiator, no repeats, quiet service
    assert counts[20].tolist() == [20, 20, 20]   # busy initiator repeating one conversation
    assert counts[40].tolist() == [1, 1, 1]      # ln 1 = 0 everywhere


def test_many_sources_at_one_service_show_on_the_service_column_only():
    src = np.array([f"198.51.100.{i}" for i in range(30)])
    service = np.array(["10.0.0.1|80|6"] * 30)
    counts = np.exp(burst_counts(np.arange(30) * 10, src, service, 10_000)).round()
    assert (counts == [1, 1, 30]).all()


def test_no_flows_give_an_empty_three_column_block():
    assert burst_counts(np.zeros(0, np.int64), np.array([]), np.array([]), 10_000).shape == (0, 3)
