"""Nearest-anchor search through the faiss IVF-Flat index: agreement with the exact
search, the excluded own anchor, determinism and the exact/index/auto switch."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.config import config_as_dict
from models import anchor_index
from models.a2gnn_training import (
    A2GNNConfig, atom_anchors, check_detector_config, detector_scores, nearest_anchor,
)
from models.anchor_index import (
    EXACT_BELOW_ANCHORS, SCANNED_ANCHORS, build_anchor_index, candidate_anchors, ivf_parameters, uses_index,
)

AGREEMENT = 0.999
"""Share of flows whose indexed nearest anchor must be the exact one."""
RELATIVE_TOLERANCE = 0.05
"""A flow given another anchor may be at most this much farther from it (relative)."""


def clustered_embeddings(num_flows: int, num_anchors: int, dim: int = 32, seed: int = 0):
    """``(flows [N, dim], anchors [A, dim])`` float32 around a dozen traffic profiles,
    1 % of the flows far off every profile (the anomalies a night holds)."""
    rng = np.random.default_rng(seed)
    profiles = 3.0 * rng.normal(size=(12, dim))
    anchors = profiles[rng.integers(0, 12, num_anchors)] + rng.normal(size=(num_anchors, dim))
    flows = profiles[rng.integers(0, 12, num_flows)] + rng.normal(size=(num_flows, dim))
    outliers = rng.random(num_flows) < 0.01
    flows[outliers] += 4.0 * rng.normal(size=(int(outliers.sum()), dim))
    return flows.astype(np.float32), anchors.astype(np.float32)


@pytest.fixture(scope="module")
def night():
    """10k flows against 40k anchors (above the auto threshold), searched both ways."""
    flows, anchors = clustered_embeddings(10_000, 40_000)
    return {"flows": flows, "anchors": anchors,
            "exact": nearest_anchor(flows, anchors, search="exact"),
            "index": nearest_anchor(flows, anchors, search="index")}


def assert_close_to_exact(exact, indexed):
    (exact_distance, exact_index), (distance, index) = exact, indexed
    assert (index == exact_index).mean() >= AGREEMENT
    assert (distance <= exact_distance * (1.0 + RELATIVE_TOLERANCE)).all()


def test_the_index_finds_the_exact_nearest_anchor_for_almost_every_flow(night):
    assert 40_000 >= EXACT_BELOW_ANCHORS
    assert_close_to_exact(night["exact"], night["index"])


def test_indexed_distances_are_recomputed_exactly_for_the_chosen_anchor(night):
    distance, index = night["index"]
    expected = np.linalg.norm(night["flows"].astype(np.float64) - night["anchors"][index].astype(np.float64), axis=1)

    np.testing.assert_array_equal(distance, expected)


def test_the_index_never_gives_a_row_its_excluded_anchor_and_agrees_with_exact_exclusion(night):
    flows, anchors = night["flows"][:5_000].copy(), night["anchors"]
    own = np.random.default_rng(2).integers(0, anchors.shape[0], flows.shape[0])
    flows[:2_500] = anchors[own[:2_500]] + 0.01  # half the rows sit on their own anchor

    exact = nearest_anchor(flows, anchors, exclude=own, search="exact")
    indexed = nearest_anchor(flows, anchors, exclude=own, search="index")

    assert not (indexed[1] == own).any()
    assert_close_to_exact(exact, indexed)


def test_a_row_the_index_leaves_without_an_allowed_candidate_is_searched_exactly(monkeypatch):
    anchors = np.array([[0.0, 0.0], [10.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    z = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    # row 0: only its own anchor found; row 1: nothing found
    monkeypatch.setattr("models.a2gnn_training.candidate_anchors",
                        lambda *args, **kwargs: np.array([[0, -1], [-1, -1]]))

    distance, index = nearest_anchor(z, anchors, exclude=np.array([0, 1]), search="index")

    assert index.tolist() == [2, 2]
    np.testing.assert_allclose(distance, [5.0, np.hypot(7.0, 4.0)])


def test_the_same_anchors_and_flows_give_identical_candidates_whatever_the_run_or_thread_count():
    flows, anchors = clustered_embeddings(5_000, 20_000, seed=3)

    first = build_anchor_index(anchors, threads=1).search(flows, 2)
    again = build_anchor_index(anchors.copy(), threads=1).search(flows, 2)
    two_threads = build_anchor_index(anchors.copy(), threads=2).search(flows, 2)

    for other in (again, two_threads):
        np.testing.assert_array_equal(first[1], other[1])
        np.testing.assert_array_equal(first[0], other[0])


def test_an_index_is_built_once_per_anchors_array():
    _, anchors = clustered_embeddings(10, 2_000, seed=4)

    assert anchor_index.anchor_index(anchors) is anchor_index.anchor_index(anchors)
    assert anchor_index.anchor_index(anchors.copy()) is not anchor_index.anchor_index(anchors)
    assert candidate_anchors(anchors[:5], anchors, 1)[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_auto_searches_exactly_below_the_anchor_threshold_and_through_the_index_from_it():
    assert not uses_index("auto", EXACT_BELOW_ANCHORS - 1)
    assert uses_index("auto", EXACT_BELOW_ANCHORS)
    assert uses_index("index", 10) and not uses_index("exact", 10**7)
    with pytest.raises(ValueError, match="anchor search"):
        uses_index("approximate", 10)


def test_auto_below_the_threshold_is_bit_identical_to_exact():
    flows, anchors = clustered_embeddings(2_000, 3_000, seed=5)

    auto = nearest_anchor(flows, anchors, search="auto")
    exact = nearest_anchor(flows, anchors, search="exact")

    np.testing.assert_array_equal(auto[1], exact[1])
    np.testing.assert_array_equal(auto[0], exact[0])


def test_the_index_probes_cells_holding_about_the_scanned_anchor_count():
    parameters = ivf_parameters(200_000)

    assert parameters.lists == 1_789
    assert parameters.probes * 200_000 / parameters.lists == pytest.approx(SCANNED_ANCHORS, rel=0.01)
    assert ivf_parameters(100).lists == 2 and ivf_parameters(100).probes == 2


def test_detector_scores_search_anchors_as_configured(monkeypatch):
    searches = []
    monkeypatch.setattr("models.a2gnn_training.uses_index",
                        lambda search, num_anchors: searches.append(search) or False)
    detector = {"anchors": np.array([[0.0, 0.0], [10.0, 0.0]]), "scale": np.ones(2)}
    config = A2GNNConfig(anchor_search="index", structure="atom_shift")

    detector_scores(np.array([[1.0, 0.0], [9.0, 0.0]]), np.array([0, 1]), detector, config)

    assert searches == ["index", "index"]  # the flow term and the atom term


def test_out_of_sample_scores_through_an_index_that_scans_every_anchor_equal_the_exact_ones():
    rng = np.random.default_rng(6)
    z, atom = rng.normal(size=(600, 8)).astype(np.float32), np.arange(600) % 60
    detector = {"anchors": atom_anchors(z, atom), "scale": np.ones(60)}  # 60 anchors: one cell

    exact, indexed = (detector_scores(z, atom, detector, A2GNNConfig(anchor_search=search), exclude_own=True)
                      for search in ("exact", "index"))

    assert not (indexed["index"] == atom).any()
    np.testing.assert_array_equal(indexed["index"], exact["index"])
    np.testing.assert_array_equal(indexed["atom"], exact["atom"])


def test_anchor_search_is_validated_and_stays_out_of_existing_model_versions():
    with pytest.raises(ValueError, match="anchor_search"):
        check_detector_config(A2GNNConfig(anchor_search="hnsw"))

    assert "anchor_search" not in config_as_dict(A2GNNConfig())["A2GNNConfig"]
    assert config_as_dict(A2GNNConfig(anchor_search="exact"))["A2GNNConfig"]["anchor_search"] == "exact"


def test_an_artifact_trained_before_the_switch_keeps_exact_search_and_a_new_one_records_its_own():
    from models.a2gnn_config import A2GNNConfig

    old = {k: v for k, v in A2GNNConfig().to_dict().items() if k != "anchor_search"}
    assert A2GNNConfig.from_dict(old).anchor_search == "exact"
    assert A2GNNConfig.from_dict(A2GNNConfig().to_dict()).anchor_search == "auto"
