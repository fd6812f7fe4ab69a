"""Detection metrics: threshold metrics from the detector's own flags, ranking from scores."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.metrics import binary_metrics, curves, per_kind_detection, score_histograms


def test_precision_recall_f1_follow_the_confusion_counts():
    truth = np.array([True, True, True, False, False, False, False, False])
    flagged = np.array([True, True, False, True, False, False, False, False])
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.1, 0.0])
    m = binary_metrics(truth, scores, flagged)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == pytest.approx(1 / 5)
    # ranking: attack 0.3 is below benign 0.7 only: 14 of 15 pairs ordered right
    assert m["roc_auc"] == pytest.approx(14 / 15)


def test_nothing_flagged_gives_zero_precision_not_a_division_error():
    m = binary_metrics(np.array([True, False]), np.array([0.1, 0.2]), np.array([False, False]))
    assert (m["precision"], m["recall"], m["f1"], m["flagged"]) == (0.0, 0.0, 0.0, 0)


def test_ranking_metrics_are_undefined_on_a_night_without_attacks():
    m = binary_metrics(np.zeros(4, bool), np.arange(4.0), np.array([False, False, False, True]))
    assert m["roc_auc"] is None and m["pr_auc"] is None
    assert m["false_positive_rate"] == 0.25
    assert curves(np.zeros(4, bool), np.arange(4.0)) is None


def test_unscored_flows_rank_below_every_scored_flow():
    truth = np.array([True, False, False])
    m = binary_metrics(truth, np.array([np.nan, 0.5, 0.4]), np.array([False, False, False]))
    assert m["roc_auc"] == 0.0
    m = binary_metrics(truth, np.array([0.1, np.nan, np.nan]), np.array([False, False, False]))
    assert m["roc_auc"] == 1.0


def test_misaligned_inputs_are_rejected():
    with pytest.raises(ValueError, match="misaligned"):
        binary_metrics(np.array([True]), np.array([0.1, 0.2]), np.array([True, False]))


def test_per_kind_recall_counts_each_attack_kind_and_benign_false_alarms():
    kinds = np.array(["scan", "scan", "dos", "benign", "benign", "exotic"], dtype=object)
    flagged = np.array([True, False, True, True, False, False])
    result = per_kind_detection(kinds, flagged)
    assert result == {
        "scan": {"flows": 2, "detected": 1, "recall": 0.5},
        "dos": {"flows": 1, "detected": 1, "recall": 1.0},
        "exotic": {"flows": 1, "detected": 0, "recall": 0.0},
        "benign": {"flows": 2, "flagged": 1, "false_positive_rate": 0.5},
    }


def test_curves_are_thinned_and_span_the_whole_range():
    rng = np.random.default_rng(0)
    truth = rng.random(5000) < 0.1
    scores = rng.random(5000) + truth
    c = curves(truth, scores, points=50)
    assert len(c["roc"]["fpr"]) <= 50 and len(c["pr"]["recall"]) <= 50
    assert (c["roc"]["fpr"][0], c["roc"]["tpr"][0]) == (0.0, 0.0)
    assert (c["roc"]["fpr"][-1], c["roc"]["tpr"][-1]) == (1.0, 1.0)
    assert c["pr"]["recall"][0] == 0.0 and c["pr"]["recall"][-1] == 1.0
    assert np.all(np.diff(c["roc"]["fpr"]) >= 0)


def test_histograms_split_benign_and_attack_on_shared_edges():
    scores = np.array([0.0, 0.1, 0.9, 1.0, np.nan])
    truth = np.array([False, False, True, True, False])
    h = score_histograms(scores, truth, bins=2)
    assert h["edges"] == [0.0, 0.5, 1.0]
    assert (h["all"], h["benign"], h["attack"]) == ([2, 2], [2, 0], [0, 2])
    assert score_histograms(np.array([math.nan])) == {"edges": [], "all": []}
