"""The verdict: calibrated evidence, its combination, the threshold and incidents.

Generated nights (pandas frames in the shape ``pipeline.verdict.tables.night_frame``
returns) stand in for Spark here; the task end to end is in ``test_detect_task.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.verdict import VerdictConfig, fit_reference, score_night
from pipeline.verdict import combine, evidence
from pipeline.verdict.incidents import build_incidents, group_flagged

MODELS = ("a2gnn", "rearview")


def _flows(n: int, rng, *, src="10.0.0.{}", dst="10.0.1.{}", port=443, seen=3, start_ms=0, spacing_ms=20_000,
           a2gnn=None, refined=None, screening=None, prior="triplet", atom=None) -> pd.DataFrame:
    """``n`` flows; ``seen``: nights every relationship of theirs was seen before (0 = new)."""
    srcs = [src.format(i % 20 + 2) if "{}" in src else src for i in range(n)]
    dsts = [dst.format(i % 7 + 2) if "{}" in dst else dst for i in range(n)]
    frame = pd.DataFrame({
        "flow_id": [f"{start_ms}-{src}-{i}" for i in range(n)],
        "src_ip": srcs, "dst_ip": dsts, "src_port": 40000 + np.arange(n) % 20000, "dst_port": port, "protocol": 6,
        "first_seen_ms": start_ms + np.arange(n) * spacing_ms,
        "community_id": None,
    })
    frame["last_seen_ms"] = frame["first_seen_ms"] + 500
    frame["service"] = frame["dst_ip"] + "|" + frame["dst_port"].astype(str) + "|6"
    low = np.minimum(frame["src_ip"], frame["dst_ip"])
    frame["host_pair"] = low + "|" + np.maximum(frame["src_ip"], frame["dst_ip"])
    for key in ("service", "client_service", "host_pair", "src_host", "dst_host"):
        frame[f"{key}_nights_seen"] = seen
    frame["history_nights"] = 3
    frame["a2gnn_score"] = rng.uniform(0.0, 0.6, n) if a2gnn is None else a2gnn
    frame["atom_id"] = [f"a{i}" for i in range(n)] if atom is None else atom
    frame["atom_size"] = 1 if atom is None else n
    frame["atom_density"] = 0.0
    frame["nearest_anchor"] = 0
    frame["anchor_distance"] = frame["a2gnn_score"]
    frame["triplet"] = frame["service"]
    frame["screening_probability"] = rng.uniform(0, 1, n) if screening is None else screening
    frame["refined_score"] = rng.normal(0, 1, n) if refined is None else refined
    frame["screening_prior"] = prior
    return frame


def _benign_night(rng, n=1500, start_ms=0) -> pd.DataFrame:
    known = _flows(n - 60, rng, start_ms=start_ms)
    new_services = _flows(60, rng, dst="93.184.216.{}", port=8443, seen=0, start_ms=start_ms + 7,
                          prior="port_protocol")
    new_services[["src_host_nights_seen"]] = 3
    return pd.concat([known, new_services], ignore_index=True)


@pytest.fixture(scope="module")
def calibration():
    rng = np.random.default_rng(7)
    return {
        "a2gnn": {"train_scores": rng.uniform(0.0, 0.6, 4000), "atom_scores": rng.uniform(0.0, 0.6, 1000),
                  "flow_threshold": 1.0, "atom_threshold": 1.0},
        "rearview": {"p": rng.uniform(0, 1, 2000), "refined": rng.normal(0, 1, 2000)},
    }


@pytest.fixture(scope="module")
def reference(calibration):
    rng = np.random.default_rng(11)
    validation = [_benign_night(rng, start_ms=d * 86_400_000) for d in range(2)]
    return fit_reference(validation, calibration["a2gnn"], calibration["rearview"], VerdictConfig(), MODELS)


# ----------------------------------------------------------------- pieces
def test_empirical_tail_is_add_one_smoothed_share_at_or_above():
    tail = evidence.empirical_tail(np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 9.0, np.nan]))
    assert tail[:3].tolist() == [1.0, 0.75, 0.25] and np.isnan(tail[3])


def test_a2gnn_tail_adds_flow_and_atom_terms_and_stays_at_most_one():
    flows, atoms = np.arange(100.0), np.arange(10.0)
    tail = evidence.a2gnn_tail(np.array([0.0, 0.995, 100.0]), 100.0, 10.0, flows, atoms)
    assert tail[0] == 1.0
    assert tail[1] == pytest.approx(1 / 101 + 1 / 11)   # above every statistic: the smallest tail
    assert tail[2] == pytest.approx(1 / 101 + 1 / 11)


def test_directions_follow_the_local_networks():
    local = "10.0.0.0/8,fe80::/10"
    got = evidence.directions(pd.Series(["10.1.1.1", "10.1.1.1", "8.8.8.8", "8.8.8.8", "fe80::1"]),
                              pd.Series(["10.2.2.2", "1.1.1.1", "10.1.1.1", "1.1.1.1", "not-an-ip"]), local)
    assert got.tolist() == ["in->in", "in->out", "out->in", "out->out", "in->out"]


def test_a_joining_device_makes_no_new_pair_but_a_new_external_initiator_does():
    rng = np.random.default_rng(0)
    flows = pd.concat([_flows(1, rng, src="10.0.0.50", dst="10.0.0.1", seen=0),       # new LAN device
                       _flows(1, rng, src="203.0.113.9", dst="10.0.0.7", seen=0),     # unknown host connecting in
                       _flows(1, rng, src="10.0.0.3", dst="10.0.0.7", seen=0)], ignore_index=True)
    flows.loc[2, ["src_host_nights_seen", "dst_host_nights_seen"]] = 3              # two known hosts, first contact
    patterns = evidence.history_patterns(flows, VerdictConfig().local_networks)
    assert patterns.tolist() == ["new_service/known_pair/in->in", "new_service/new_pair/out->in",
                                 "new_service/new_pair/in->in"]


def test_pattern_p_value_is_one_for_the_commonest_pattern_and_small_for_an_unseen_one():
    patterns = pd.Series(["known_service/known_pair/in->out"] * 990 + ["new_service/known_pair/in->out"] * 10)
    model = evidence.PatternModel.fit(patterns, pseudocount=0.5)
    p = model.p_values(pd.Series(["known_service/known_pair/in->out", "new_service/known_pair/in->out",
                                  "new_service/new_pair/in->in"]))
    assert p[0] == pytest.approx(1.0)
    assert 0.005 < p[1] < 0.02
    assert p[2] < 0.01 and p[2] < p[1]


def test_relationship_volume_counts_a_new_pairs_flows_or_a_new_services_initiators():
    rng = np.random.default_rng(0)
    scan = _flows(30, rng, src="10.0.0.3", dst="10.0.0.7", seen=0)
    scan[["src_host_nights_seen", "dst_host_nights_seen"]] = 3
    flood = _flows(12, rng, src="198.51.100.{}", dst="10.0.0.9", port=80, seen=0)
    old = _flows(5, rng)
    volume = evidence.relationship_volume(pd.concat([scan, flood, old], ignore_index=True), "10.0.0.0/8")
    assert volume[:30].tolist() == [30.0] * 30
    assert volume[30:42].tolist() == [12.0] * 12      # 12 distinct initiators of one new service
    assert np.isnan(volume[42:]).all()


# ----------------------------------------------------------------- combination and threshold
def test_fisher_of_one_piece_is_that_piece_and_no_piece_is_one():
    combined = combine.fisher(np.array([[0.01, np.nan], [np.nan, np.nan], [0.01, 0.01]]))
    assert combined[0] == pytest.approx(0.01)
    assert combined[1] == 1.0
    assert combined[2] < 0.01


def test_a_busier_noisier_night_raises_the_night_null_threshold():
    rng = np.random.default_rng(3)
    quiet = rng.uniform(0, 1, 5000)
    noisy = quiet ** 3                                # every flow's evidence inflated
    distance = float(combine.stats.norm.isf(0.01))
    assert combine.night_threshold_score(noisy, distance, 0.01) > combine.night_threshold_score(quiet, distance, 0.01)
    assert combine.night_threshold_score(quiet, distance, 0.01) >= 2.0   # never below the budget itself


def test_evidence_text_lists_strongest_pieces_then_what_was_lacking():
    texts = combine.evidence_text(np.array([[1e-3, 0.5, 1e-5]]), ("history", "volume", "a2gnn"),
                                  [["rearview"]], [["screening: no prior"]])
    assert texts == ["a2gnn 5.0, history 3.0; lacked: rearview; screening: no prior"]


# ----------------------------------------------------------------- the verdict on generated nights
def _known_service_attack(rng, screening=None) -> pd.DataFrame:
    """40 flows of one known host pair to a known service, scored far past both A2GNN's and
    RearView's refinement thresholds."""
    return _flows(40, rng, src="10.0.0.5", dst="10.0.1.4", seen=3, start_ms=5 * 86_400_000 + 1000,
                  spacing_ms=200, a2gnn=np.full(40, 5.0), refined=np.full(40, 6.0), atom=["atk"] * 40,
                  screening=screening)


@pytest.mark.parametrize("config, screening", [
    (VerdictConfig(), np.full(40, 0.9999)),                 # default: all three model pieces speak
    (VerdictConfig(coordination="off"), None),              # plain night rule: two detectors suffice
])
def test_a_coordinated_attack_at_a_known_service_reaches_the_alarm_through_model_evidence(reference, config,
                                                                                        screening):
    rng = np.random.default_rng(5)
    night = _benign_night(rng, start_ms=5 * 86_400_000)
    attack = _known_service_attack(rng, screening)
    scores, incidents = score_night(pd.concat([night, attack], ignore_index=True), reference, config,
                                    MODELS, "2026-01-06", "v1")
    hit = scores.iloc[len(night):]
    assert hit["p_history"].eq(1.0).all()                 # nothing about it is new
    assert hit["is_anomaly"].all()
    assert not hit["evidence"].str.contains("coordinated").any()   # the single-flow path, not coordination
    assert hit["incident_id"].nunique() == 1 and hit["incident_id"].iloc[0] in set(incidents["incident_id"])


def test_a_benign_flow_to_a_new_service_can_stay_under_the_alarm(reference):
    rng = np.random.default_rng(6)
    night = _benign_night(rng, start_ms=5 * 86_400_000)
    newcomer = _flows(1, rng, src="10.0.0.4", dst="198.51.100.20", port=443, seen=0,
                      a2gnn=np.array([0.3]), refined=np.array([0.0]), screening=np.array([0.5]),
                      start_ms=5 * 86_400_000 + 3)
    newcomer[["src_host_nights_seen"]] = 3
    scores, _ = score_night(pd.concat([night, newcomer], ignore_index=True), reference, VerdictConfig(), MODELS,
                            "2026-01-06", "v1")
    flow = scores.iloc[-1]
    assert flow["history_pattern"] == "new_service/new_pair/in->out" and flow["p_history"] < 0.1
    assert not flow["is_anomaly"] and flow["incident_id"] is None


def test_a_detector_not_run_is_stated_as_lacking_never_scored_benign(calibration):
    rng = np.random.default_rng(8)
    validation = [_benign_night(rng, start_ms=d * 86_400_000) for d in range(2)]
    reference = fit_reference(validation, calibration["a2gnn"], None, VerdictConfig(), ("a2gnn",))
    night = _benign_night(rng, start_ms=5 * 86_400_000)
    scores, _ = score_night(night, reference, VerdictConfig(), ("a2gnn",), "2026-01-06", "v1")
    assert scores["evidence"].str.contains("lacked: rearview").all()
    assert scores["p_screening"].isna().all() and scores["p_refined"].isna().all()


def test_a_first_night_without_history_says_so_and_an_empty_night_gives_no_rows(reference):
    rng = np.random.default_rng(9)
    night = _benign_night(rng, n=300).assign(history_nights=0)
    scores, _ = score_night(night, reference, VerdictConfig(), MODELS, "2026-01-01", "v1")
    assert scores["evidence"].str.contains("lacked: history").all() and scores["p_history"].isna().all()
    empty, incidents = score_night(night.iloc[:0], reference, VerdictConfig(), MODELS, "2026-01-01", "v1")
    assert len(empty) == 0 and len(incidents) == 0


def test_the_same_inputs_give_identical_rows(reference):
    night = _benign_night(np.random.default_rng(10), start_ms=5 * 86_400_000)
    first, _ = score_night(night, reference, VerdictConfig(), MODELS, "2026-01-06", "v1")
    again, _ = score_night(night.sample(frac=1.0, random_state=1).sort_values("flow_id").reset_index(drop=True),
                           reference, VerdictConfig(), MODELS, "2026-01-06", "v1")
    pd.testing.assert_frame_equal(first.sort_values("flow_id").reset_index(drop=True),
                                  again.sort_values("flow_id").reset_index(drop=True))


# ----------------------------------------------------------------- incidents
def _flagged(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["src_ip", "dst_ip", "dst_port", "protocol", "first_seen_ms", "atom_id",
                                       "atom_size"])


def test_flagged_flows_of_one_pair_within_the_gap_form_one_incident_and_a_later_burst_another():
    flagged = _flagged([("10.0.0.1", "10.0.0.2", 22, 6, 0, None, None),
                        ("10.0.0.2", "10.0.0.1", 23, 6, 100_000, None, None),      # either direction
                        ("10.0.0.1", "10.0.0.2", 24, 6, 100_000 + 400_000, None, None)])   # after the gap
    assert group_flagged(flagged, gap_ms=300_000).tolist() == [0, 0, 1]


def test_a_flood_from_many_sources_to_one_service_is_one_incident():
    flagged = _flagged([(f"198.51.100.{i}", "10.0.0.9", 80, 6, i * 10, None, None) for i in range(30)])
    assert set(group_flagged(flagged, gap_ms=300_000)) == {0}


def test_flows_of_one_atom_are_one_incident_however_far_apart():
    flagged = _flagged([("10.0.0.1", "8.8.8.8", 53, 17, 0, "atom-1", 5),
                        ("10.0.0.3", "1.1.1.1", 53, 17, 3_000_000, "atom-1", 5),
                        ("10.0.0.4", "9.9.9.9", 53, 17, 6_000_000, "solo", 1)])
    assert group_flagged(flagged, gap_ms=300_000).tolist() == [0, 0, 1]


def test_incidents_are_ranked_by_score_and_count_the_pairs_unflagged_flows():
    night = pd.DataFrame({
        "flow_id": list("abcde"),
        "src_ip": ["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.5", "10.0.0.5"],
        "dst_ip": ["10.0.0.2"] * 3 + ["10.0.0.6"] * 2,
        "dst_port": [22, 22, 22, 80, 80], "protocol": 6,
        "first_seen_ms": [0, 1000, 2000, 0, 1000], "last_seen_ms": [10, 1010, 2010, 10, 1010],
        "atom_id": None, "atom_size": None, "score": [3.0, 1.0, 3.5, 9.0, 8.0],
    })
    flagged = np.array([True, False, True, True, True])
    strengths = pd.DataFrame({"history": [2.0, 0, 2.0, 0.5, 0.5], "a2gnn": [1.0, 0, 1.0, 4.0, 4.0]})
    ids, table = build_incidents(night, flagged, "2026-01-03", 300_000, strengths)
    assert table["incident_id"].tolist() == ["2026-01-03-0001", "2026-01-03-0002"]
    assert table["hosts"].tolist() == [["10.0.0.5", "10.0.0.6"], ["10.0.0.1", "10.0.0.2"]]
    assert table["flagged_flows"].tolist() == [2, 2] and table["flows"].tolist() == [2, 3]
    assert table["top_evidence"].tolist() == ["a2gnn 4.0, history 0.5", "history 2.0, a2gnn 1.0"]
    assert ids.tolist() == ["2026-01-03-0002", None, "2026-01-03-0002", "2026-01-03-0001", "2026-01-03-0001"]


def test_pareto_tail_keeps_the_empirical_tail_inside_the_reference_and_keeps_falling_beyond_it():
    reference = np.arange(1.0, 201.0)
    inside, at_max, far = evidence.pareto_tail(reference, np.array([50.0, 200.0, 2000.0]))
    assert inside == pytest.approx(evidence.empirical_tail(reference, np.array([50.0]))[0])
    assert far < at_max <= 1 / 100


# ----------------------------------------------------------------- threshold rules and coordination
def test_the_upper_half_null_ignores_a_pile_up_below_the_median():
    rng = np.random.default_rng(11)
    z = rng.normal(0.0, 1.0, 20_000)
    piled = np.concatenate([z[z >= 0], np.full((z < 0).sum(), -7.0)])    # half the flows carry no evidence
    assert combine.upper_null(piled)[1] == pytest.approx(combine.upper_null(z)[1], rel=0.05)
    assert combine.robust_null(piled)[1] > 2 * combine.robust_null(z)[1]


def test_the_local_fdr_threshold_sits_below_a_dense_clump_and_above_a_thin_gaussian_tail():
    rng = np.random.default_rng(12)
    null_z = rng.normal(0.0, 1.0, 5000)
    clump_z = rng.normal(4.5, 0.05, 300)                 # a coordinated attack: many flows, one strength
    combined = combine.stats.norm.sf(np.concatenate([null_z, clump_z]))
    threshold = combine.lfdr_threshold_score(combined, 0.01, 0.2)
    assert 2.0 <= threshold < -np.log10(combine.stats.norm.sf(4.3))
    assert combine.lfdr_threshold_score(combine.stats.norm.sf(null_z), 0.01, 0.2) > 2.0


def test_coordination_counts_gate_passing_flows_of_one_new_pair_or_one_new_service(reference):
    rng = np.random.default_rng(13)
    beacon = _flows(30, rng, src="10.0.0.9", dst="203.0.113.7", port=443, seen=0)
    busy_known = _flows(30, rng, src="10.0.0.8", dst="10.0.1.3", port=53, seen=3)
    night = pd.concat([beacon, busy_known], ignore_index=True)
    passing = np.ones(len(night), bool)
    from pipeline.verdict.scoring import relationship_counts
    counts_all = relationship_counts(night, passing, "all")
    counts_new = relationship_counts(night, passing, "new")
    assert (counts_all == 30).all()
    assert (counts_new[:30] == 30).all() and (counts_new[30:] == 0).all()
    passing[:25] = False
    assert (relationship_counts(night, passing, "new")[25:30] == 5).all()


def test_a_joining_devices_pairs_do_not_count_as_new_coordination(reference):
    rng = np.random.default_rng(14)
    joining = _flows(30, rng, src="10.0.0.77", dst="10.0.1.2", port=53, seen=3)
    joining[["host_pair_nights_seen", "client_service_nights_seen", "src_host_nights_seen"]] = 0
    from pipeline.verdict.scoring import relationship_counts
    passing = np.ones(len(joining), bool)
    patterns = evidence.history_patterns(joining, VerdictConfig().local_networks)
    assert (relationship_counts(joining, passing, "new") == 30).all()
    assert (relationship_counts(joining, passing, "new_pattern", patterns) == 0).all()


def test_a_repeated_new_relationship_is_flagged_as_coordinated_under_the_strong_flow_threshold(reference):
    rng = np.random.default_rng(15)
    night = _benign_night(rng, start_ms=5 * 86_400_000)
    quiet = dict(a2gnn=np.full(40, 0.5), refined=np.full(40, 1.0), screening=np.full(40, 0.5), prior="port_protocol")
    beacon = _flows(40, rng, src="10.0.0.5", dst="203.0.113.9", port=443, seen=0, start_ms=5 * 86_400_000 + 11,
                    spacing_ms=60_000, **quiet)
    lone = _flows(1, rng, src="10.0.0.6", dst="203.0.113.10", port=443, seen=0, start_ms=5 * 86_400_000 + 13,
                  **{k: (v[:1] if isinstance(v, np.ndarray) else v) for k, v in quiet.items()})
    for frame in (beacon, lone):
        frame[["src_host_nights_seen"]] = 3
    both = pd.concat([night, beacon, lone], ignore_index=True)
    config = VerdictConfig(coordination="new_pattern", single_flow_budget_share=0.1)
    scores, incidents = score_night(both, reference, config, MODELS, "2026-01-06", "v1")
    hit, single = scores.iloc[len(night):-1], scores.iloc[-1]
    assert (hit["score"] > reference.threshold).all() and (hit["score"] <= hit["threshold"]).all()
    assert hit["is_anomaly"].all() and hit["evidence"].str.contains("coordinated relationship").all()
    assert hit["incident_id"].nunique() == 1 and hit["incident_id"].iloc[0] in set(incidents["incident_id"])
    assert not single["is_anomaly"] and single["incident_id"] is None     # the same flow, once
    assert scores["threshold"].iloc[0] >= 3.0        # the single-flow path at a tenth of the budget
