"""RearView pipeline glue: conditions, validation split, decision, artifact, distributed scoring."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.detectors import rearview as rv
from pipeline.detectors.rearview import conditions, decision, inference, scoring, session
from pipeline.store import schema

REPO_ROOT = Path(__file__).resolve().parent.parent


def _synthetic_flows(num_flows: int, seed: int, start_ms: int = 1_767_225_600_000) -> pd.DataFrame:
    spec = importlib.util.spec_from_file_location("bench_rearview", REPO_ROOT / "bench" / "bench_rearview.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_flows(num_flows, seed=seed, start_ms=start_ms, duration_ms=600_000)


def _servers(rows: list[tuple[str, int, int, int]]) -> pd.DataFrame:
    """(dst_ip, dst_port, protocol, sessions) -> one row per session."""
    records = [(ip, port, proto) for ip, port, proto, n in rows for _ in range(n)]
    return pd.DataFrame(records, columns=["dst_ip", "dst_port", "protocol"])


def test_rare_triplets_share_port_protocol_then_protocol_then_global_conditions():
    train = _servers([
        ("10.0.0.1", 443, 6, 60),          # frequent triplet: own condition
        ("10.0.0.2", 443, 6, 30),          # rare, but port 443/tcp pools 30 + 25 >= 50
        ("10.0.0.3", 443, 6, 25),
        ("10.0.0.4", 22, 6, 10),           # rare, 22/tcp pools only 10: protocol condition
        ("10.0.0.5", 53, 17, 5),           # rare udp: protocol condition
    ])
    vocab = conditions.build_condition_vocabulary(train, min_sessions=50)
    assert list(vocab["triplet"]) == ["10.0.0.1|443|6"]
    assert list(vocab["port_protocol"]) == ["443|6"]
    assert sorted(vocab["protocol"]) == ["17", "6"]
    assert vocab["global"] == vocab["num_conditions"] - 1 == 4
    scored = _servers([
        ("10.0.0.1", 443, 6, 1), ("10.0.0.2", 443, 6, 1), ("10.9.9.9", 443, 6, 1),
        ("10.0.0.4", 22, 6, 1), ("10.9.9.9", 8080, 6, 1), ("10.0.0.5", 53, 17, 1), ("10.0.0.1", 0, 1, 1),
    ])
    ids = conditions.assign_conditions(vocab, scored)
    t, pp, p6, p17 = vocab["triplet"]["10.0.0.1|443|6"], vocab["port_protocol"]["443|6"], \
        vocab["protocol"]["6"], vocab["protocol"]["17"]
    assert ids.tolist() == [t, pp, pp, p6, p6, p17, vocab["global"]]


def test_triplet_names_the_responder_as_server():
    flows = pd.DataFrame({"src_ip": ["10.0.0.9"], "dst_ip": ["10.0.0.1"], "src_port": [51000],
                          "dst_port": [443], "protocol": [6]})
    assert conditions.triplet_keys(flows).tolist() == ["10.0.0.1|443|6"]


def test_validation_flows_are_the_last_share_of_each_night_in_start_order():
    nights = np.array([0] * 10 + [1] * 5)
    mask = conditions.validation_mask(nights, 0.2)
    assert mask.tolist() == [False] * 8 + [True] * 2 + [False] * 4 + [True]


def test_anomalous_when_screening_alarms_or_a_triggered_window_classifier_flags():
    config = rv.RearViewConfig()
    p = np.array([0.10, 0.10, 0.10, 0.70, 0.97, 0.97])
    refined = np.array([0.2, 0.9, 0.9, 0.9, 0.2, 0.2])
    triggered = np.array([True, True, False, True, True, False])
    score, flagged = decision.decide(p, refined, threshold=0.5, config=config, window_triggered=triggered)
    assert flagged.tolist() == [False, True, False, True, True, True]
    assert ((score > 0.5) == flagged).all()


def test_a_suspicious_flow_triggers_refinement_of_its_whole_home_window():
    p = np.array([0.1] * 8 + [0.7] + [0.1] * 11)          # 20 flows, windows of 10, evict 8
    triggered = decision.triggered_windows(p, queue_size=10, evict=8, suspicious_p=0.6)
    # windows: [0,10) homes 0-7, [8,18) homes 8-15, [16,20) homes 16-19; flow 8 is in 0 and 1
    assert triggered.tolist() == [True] * 16 + [False] * 4


def test_fallback_cell_is_condition_level_and_whether_the_triplet_was_ever_seen_in_training():
    train = _servers([("10.0.0.1", 443, 6, 60), ("10.0.0.2", 443, 6, 30), ("10.0.0.3", 443, 6, 25),
                      ("10.0.0.4", 22, 6, 10)])
    vocab = conditions.build_condition_vocabulary(train, min_sessions=50)
    seen = set(conditions.triplet_keys(train))
    scored = _servers([
        ("10.0.0.1", 443, 6, 1),    # modelled triplet
        ("10.0.0.2", 443, 6, 1),    # rare seen triplet, pooled port
        ("10.9.9.9", 443, 6, 1),    # unseen server, pooled port
        ("10.0.0.4", 22, 6, 1),     # rare seen triplet, protocol condition
        ("10.9.9.9", 8080, 6, 1),   # unseen, protocol condition
        ("10.9.9.9", 53, 17, 1),    # protocol never seen: global
    ])
    levels = conditions.condition_levels(vocab, scored)
    assert [conditions.CONDITION_LEVELS[i] for i in levels] == [
        "triplet", "port_protocol", "port_protocol", "protocol", "protocol", "global"]
    assert conditions.fallback_cells(vocab, scored, conditions.unseen_triplets(seen, scored)).tolist() == [0, 2, 3, 4, 5, 7]


def test_training_night_novelty_is_judged_against_the_other_nights_only():
    triplets = pd.Series(["a", "b", "a", "c", "b", "d", "c"])
    night = np.array([0, 0, 0, 0, 1, 1, 1])
    is_train = np.array([True, True, True, False, True, True, False])
    # night 0 vs night 1's training flows {b, d}; night 1 vs night 0's training flows {a, b}
    assert conditions.cross_night_novelty(triplets, night, is_train).tolist() == [
        True, False, True, True, False, True, True]


def test_with_one_training_night_only_validation_flows_can_be_novel():
    triplets = pd.Series(["a", "b", "a", "c"])
    novel = conditions.cross_night_novelty(triplets, np.zeros(4, dtype=int), np.array([True, True, False, False]))
    assert novel.tolist() == [False, False, False, True]


def test_edge_features_append_the_novelty_bit_to_the_latent_mean():
    edges = session.edge_features(np.ones((3, 16)), np.array([True, False, True]))
    assert edges.shape == (3, 17) and edges.dtype == np.float32
    assert edges[:, -1].tolist() == [1.0, 0.0, 1.0] and (edges[:, :16] == 1).all()


def test_tail_model_is_empirical_in_the_bulk_and_keeps_ordering_beyond_the_validation_maximum():
    rng = np.random.default_rng(0)
    reference = rng.exponential(size=2000)
    tail = decision.TailModel.fit(reference)
    assert np.isfinite(tail.u) and tail.shape == pytest.approx(0.0, abs=0.15)
    bulk = np.array([0.1, 0.5, 1.0])
    np.testing.assert_allclose(tail.survival(bulk), decision.empirical_tail(reference, bulk))
    beyond = reference.max() + np.array([1.0, 2.0, 4.0])
    far = tail.survival(beyond)
    assert (np.diff(far) < 0).all() and far[0] < 1 / (len(reference) + 1)
    np.testing.assert_allclose(far, np.exp(-beyond), rtol=0.5)     # exponential: sf = e^-x
    level = tail.level(0.001)
    assert tail.survival(np.array([level]))[0] == pytest.approx(0.001, rel=1e-6)
    assert level == pytest.approx(-np.log(0.001), rel=0.15)


def test_tail_model_without_enough_exceedances_stays_empirical():
    tail = decision.TailModel.fit(np.arange(50.0))
    assert not np.isfinite(tail.u)
    np.testing.assert_allclose(tail.survival(np.array([49.0, 100.0])), [2 / 51, 1 / 51])


def test_empirical_tail_counts_reference_values_at_least_as_extreme_plus_one():
    reference = np.array([1.0, 2.0, 2.0, 3.0])
    tail = decision.empirical_tail(reference, np.array([0.0, 2.0, 2.5, 3.0, 9.0]))
    np.testing.assert_allclose(tail, np.array([5, 4, 2, 2, 1]) / 5)


def test_cell_prior_is_the_laplace_smoothed_validation_share_of_each_cell():
    prior = decision.cell_prior(np.array([0, 0, 0, 1]), num_cells=4)
    np.testing.assert_allclose(prior, np.array([4, 2, 1, 1]) / 8)
    assert decision.cell_prior(np.zeros(0, dtype=np.int64)).sum() == pytest.approx(1.0)


def _calibration(rng) -> decision.Calibration:
    validation = 1000
    cells = np.where(rng.random(validation) < 0.95, 0, 3)          # 5 % of benign flows fall back
    return decision.Calibration(p=rng.random(validation), cell=cells, refined=rng.normal(0.5, 0.05, validation),
                          refined_threshold=0.62)


@pytest.mark.parametrize("rule,novelty", [("calibrated", False), ("calibrated", True),
                                          ("fused", False), ("fused", True)])
def test_calibrated_rules_flag_about_the_configured_share_of_benign_flows(rule, novelty):
    rng = np.random.default_rng(0)
    calibration = _calibration(rng)
    config = rv.RearViewConfig(decision_rule=rule, novelty_prior=novelty, false_alarm_rate=0.01)
    benign = 20_000                                                   # fresh draws, same distributions
    p, refined = rng.random(benign), rng.normal(0.5, 0.05, benign)
    cells = np.where(rng.random(benign) < 0.95, 0, 3)
    score, threshold, flagged = decision.decide_flows(p, cells, refined, np.ones(benign, bool), calibration, config)
    assert ((score > threshold) == flagged).all()
    level = decision.decision_level(calibration, config)                  # once per artifact, then reused
    reused = decision.decide_flows(p, cells, refined, np.ones(benign, bool), calibration, config, level)
    np.testing.assert_array_equal(reused[0], score)
    assert reused[1] == threshold and (reused[2] == flagged).all()
    screening_budget = 0.01 if rule == "fused" else 0.01 + 0.01      # calibrated: + the refined clause
    assert flagged.mean() < screening_budget + 0.01
    paper = decision.decide_flows(p, cells, refined, np.ones(benign, bool), calibration,
                            rv.RearViewConfig(decision_rule="paper"))
    assert paper[2].mean() > 0.04                                     # p > 0.95 flags 5 % by construction


def test_novelty_prior_raises_the_suspicion_of_flows_in_rarely_used_fallback_cells():
    calibration = _calibration(np.random.default_rng(1))
    p = np.array([0.9, 0.9])
    cells = np.array([0, 3])
    plain = decision.screening_surprise(p, cells, calibration, novelty_prior=False)
    novel = decision.screening_surprise(p, cells, calibration, novelty_prior=True)
    assert plain[0] == plain[1] and novel[1] > novel[0]
    config = rv.RearViewConfig(decision_rule="fused", novelty_prior=True, false_alarm_rate=0.01)
    refined = np.array([0.5, 0.5])                                    # a typical refined score
    _, _, flagged = decision.decide_flows(np.array([0.995, 0.995]), cells, refined, np.ones(2, bool), calibration, config)
    assert flagged.tolist() == [False, True]


def test_fused_rule_uses_refined_evidence_only_in_triggered_windows():
    calibration = _calibration(np.random.default_rng(2))
    config = rv.RearViewConfig(decision_rule="fused", novelty_prior=False, false_alarm_rate=0.01)
    p, cells, refined = np.array([0.5, 0.5]), np.array([0, 0]), np.array([0.9, 0.9])
    score, _, flagged = decision.decide_flows(p, cells, refined, np.array([True, False]), calibration, config)
    assert flagged.tolist() == [True, False] and score[0] > score[1]


def test_config_rejects_unknown_decision_rule_and_false_alarm_rate_outside_0_1():
    with pytest.raises(ValueError, match="decision_rule"):
        rv.RearViewConfig(decision_rule="vote")
    with pytest.raises(ValueError, match="false_alarm_rate"):
        rv.RearViewConfig(false_alarm_rate=0.0)


def test_refined_score_is_the_mean_of_the_members_standardised_classifier_scores():
    rng = np.random.default_rng(3)
    train = [rng.normal(size=(300, 4)), rng.normal(scale=10.0, size=(300, 4))]   # members on different scales
    members = tuple(decision.RefinementMember.fit(None, "iforest", z, seed=k) for k, z in enumerate(train))
    for member, z in zip(members, train):
        standard = member.standardised(z)
        assert standard.mean() == pytest.approx(0.0, abs=1e-9) and standard.std() == pytest.approx(1.0)
    scored = [np.vstack([z[:5], 8 * z.std() * np.ones((1, 4))]) for z in train]
    refined = decision.ensemble_refined(members, scored)
    expected = (members[0].standardised(scored[0]) + members[1].standardised(scored[1])) / 2
    np.testing.assert_allclose(refined, expected)
    assert refined.argmax() == 5                                                 # the far point, in both members


def test_ensembles_of_nearby_seeds_share_no_member():
    size = rv.RearViewConfig().ensemble_size
    seeds = [{decision.member_seed(seed, k) for k in range(size)} for seed in (0, 1, 42)]
    assert decision.member_seed(42, 0) == 42
    assert all(len(a & b) == 0 for i, a in enumerate(seeds) for b in seeds[i + 1:])


def test_config_rejects_unknown_classifier():
    with pytest.raises(ValueError, match="classifier"):
        rv.RearViewConfig(classifier="svm")


def _two_training_nights() -> pd.DataFrame:
    night_one = _synthetic_flows(900, seed=1)
    night_one["date"] = "2026-01-01"
    night_two = _synthetic_flows(900, seed=2, start_ms=1_767_312_000_000)
    night_two["date"] = "2026-01-02"
    return pd.concat([night_one, night_two])


@pytest.fixture(scope="module")
def trained_artifact(spark, tmp_path_factory):
    config = rv.RearViewConfig(queue_size=200, vae_epochs=2, vae_batch_size=64, sage_epochs=3,
                               min_triplet_sessions=30)
    out = tmp_path_factory.mktemp("rearview_artifact")
    metrics = rv.train_rearview(spark, spark.createDataFrame(_two_training_nights()), config, out)
    return out, metrics


def test_training_writes_only_safetensors_and_json_and_reports_a_threshold(trained_artifact):
    out, metrics = trained_artifact
    assert sorted(p.name for p in out.iterdir()) == sorted(inference.ARTIFACT_FILES)
    assert metrics["validation_flows"] == 360 and metrics["train_flows"] == 1440
    assert np.isfinite(metrics["threshold"])
    assert 0.0 <= metrics["validation_refined_alarm_rate"] <= 0.02
    assert 0.0 <= metrics["validation_alarm_rate"] <= 2 * rv.RearViewConfig().false_alarm_rate + 0.01
    assert sum(metrics["validation_cell_counts"]) == metrics["validation_flows"]


@pytest.mark.parametrize("flows_per_task", [160, 400, scoring.DEFAULT_FLOWS_PER_TASK])
def test_distributed_scoring_equals_single_process_across_partition_boundaries(spark, trained_artifact,
                                                                             flows_per_task):
    # queue 200, evict 160, 700 flows: 5 windows, split 1 / 2 / all windows per Spark task
    out, _ = trained_artifact
    night = _synthetic_flows(700, seed=7)
    night.loc[5, ["bidirectional_bytes", "src2dst_bytes"]] = 5e8    # one absurd flow
    local = inference.score_flows_local(night, out)
    frame = spark.createDataFrame(night.sample(frac=1.0, random_state=0)).repartition(3)
    distributed = rv.score_rearview(spark, frame, out, "test-version", flows_per_task=flows_per_task).toPandas()
    distributed = conditions.order_flows(distributed)
    assert list(distributed.columns) == schema.FLOW_SCORES.names
    assert distributed["flow_id"].tolist() == local["flow_id"].tolist()
    for column in ("screening_probability", "refined_score", "score", "threshold"):
        np.testing.assert_allclose(distributed[column], local[column], rtol=1e-5, atol=1e-6, err_msg=column)
    assert distributed["is_anomaly"].tolist() == local["is_anomaly"].tolist()
    assert ((local["score"] > local["threshold"]) == local["is_anomaly"]).all()
    absurd = local["flow_id"] == night.loc[5, "flow_id"]
    # its reconstruction error lies beyond every training error: the recon CDF (weight 0.9) is 1
    assert local.loc[absurd, "screening_probability"].item() >= 0.9
    assert local["is_anomaly"].mean() < 0.2


@pytest.fixture(scope="module")
def bursty_artifact(spark, tmp_path_factory):
    config = rv.RearViewConfig(queue_size=200, vae_epochs=2, vae_batch_size=64, sage_epochs=3,
                               min_triplet_sessions=30, ensemble_size=1, burst_window_ms=10_000)
    out = tmp_path_factory.mktemp("rearview_bursty_artifact")
    rv.train_rearview(spark, spark.createDataFrame(_two_training_nights()), config, out)
    return out


def test_with_burst_counts_distributed_scoring_still_equals_single_process(spark, bursty_artifact):
    # burst counts use only a window's own flows, so overlapping partitions still see the same graphs
    night = _synthetic_flows(700, seed=7)
    local = inference.score_flows_local(night, bursty_artifact)
    frame = spark.createDataFrame(night.sample(frac=1.0, random_state=0)).repartition(3)
    distributed = conditions.order_flows(rv.score_rearview(spark, frame, bursty_artifact, "test-version",
                                                   flows_per_task=160).toPandas())
    assert inference.load_artifacts(str(bursty_artifact)).config.burst_window_ms == 10_000
    for column in ("screening_probability", "refined_score", "score"):
        np.testing.assert_allclose(distributed[column], local[column], rtol=1e-5, atol=1e-6, err_msg=column)
    assert distributed["is_anomaly"].tolist() == local["is_anomaly"].tolist()


def test_an_artifact_written_before_burst_counts_existed_loads_with_them_off(trained_artifact, tmp_path):
    out, _ = trained_artifact
    old = tmp_path / "old_artifact"
    shutil.copytree(out, old)
    config = json.loads((old / "config.json").read_text())
    del config["burst_window_ms"]
    (old / "config.json").write_text(json.dumps(config))
    assert inference.load_artifacts(str(old)).config.burst_window_ms == 0


def test_reloading_the_artifact_rebuilds_the_same_classifier(trained_artifact):
    out, _ = trained_artifact
    night = _synthetic_flows(300, seed=9)
    first = inference.score_flows_local(night, out)
    inference.load_artifacts.cache_clear()
    second = inference.score_flows_local(night, out)
    pd.testing.assert_frame_equal(first, second)
