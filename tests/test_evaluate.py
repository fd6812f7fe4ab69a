"""The evaluation command: detectors and baselines on one night, with or without labels.

A small synthetic warehouse (two benign training nights, one test night with a scan and
a spoofed flood, model scores, atoms, ingest tables) is written with the real partition
writer, so the evaluation reads exactly what the pipeline would leave.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.evaluate import main
from pipeline.evaluation.baselines import BASELINE_NAMES
from pipeline.evaluation.labels import label_flows, matching_label_rows, read_labels
from pipeline.evaluation.metrics import incident_detection
from pipeline.evaluation.night import EvaluationConfig, evaluate_night, latest_score_version, results_markdown
from pipeline.store.warehouse import read_arrow_partition, write_arrow_partition

TRAIN_DATES = ["2026-01-01", "2026-01-02"]
TEST_DATE = "2026-01-03"
SERVERS = [("10.10.0.53", 53, 17), ("10.10.0.80", 443, 6), ("10.10.0.81", 80, 6)]
SCAN_ATTACKER, VICTIM = "10.10.9.66", "10.10.0.81"
FLOOD_PREFIX = "58.144.227"
SCAN_FLOWS, FLOOD_FLOWS, BENIGN_FLOWS = 12, 8, 240


def _day_start_ms(date: str) -> int:
    return int(pd.Timestamp(date, tz="UTC").timestamp() * 1000)


def _benign_flows(date: str, count: int, rng: np.random.Generator) -> list[dict]:
    start = _day_start_ms(date)
    rows = []
    for i in range(count):
        dst_ip, dst_port, protocol = SERVERS[i % len(SERVERS)]
        packets = int(rng.integers(4, 12))
        mean_ps = float(rng.normal(300 + 200 * (i % 3), 20))
        first = start + int(rng.integers(0, 3_000_000))
        duration = float(rng.uniform(50, 500))
        rows.append(
            dict(src_ip=f"10.10.1.{i % 20 + 10}", dst_ip=dst_ip, src_port=40000 + i, dst_port=dst_port,
                 protocol=protocol, first_seen_ms=first, last_seen_ms=first + int(duration),
                 bidirectional_packets=packets, bidirectional_bytes=int(packets * mean_ps),
                 bidirectional_duration_ms=duration, bidirectional_mean_ps=mean_ps,
                 bidirectional_mean_piat_ms=duration / packets, src2dst_packets=packets // 2,
                 dst2src_packets=packets - packets // 2)
        )
    return rows


def _attack_flows(date: str) -> list[dict]:
    start = _day_start_ms(date) + 1_000_000
    rows = []
    for i in range(SCAN_FLOWS):   # one SYN to a new port each: tiny, novel triplets
        rows.append(dict(src_ip=SCAN_ATTACKER, dst_ip=VICTIM, src_port=55555, dst_port=1000 + i, protocol=6,
                         first_seen_ms=start + i, last_seen_ms=start + i, bidirectional_packets=1,
                         bidirectional_bytes=44, bidirectional_duration_ms=0.0, bidirectional_mean_ps=44.0,
                         bidirectional_syn_packets=1, src2dst_packets=1))
    for i in range(FLOOD_FLOWS):  # spoofed SYNs to the victim's known web port
        rows.append(dict(src_ip=f"{FLOOD_PREFIX}.{i + 1}", dst_ip=VICTIM, src_port=2000 + i, dst_port=80,
                         protocol=6, first_seen_ms=start + 5000 + i, last_seen_ms=start + 5000 + i,
                         bidirectional_packets=1, bidirectional_bytes=40, bidirectional_duration_ms=0.0,
                         bidirectional_mean_ps=40.0, bidirectional_syn_packets=1, src2dst_packets=1))
    return rows


def _with_ids(rows: list[dict], date: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.insert(0, "flow_id", [f"{date[-2:]}{i:014x}" for i in range(len(frame))])
    return frame


def _scores(flows: pd.DataFrame, is_attack: np.ndarray, model: str, rng: np.random.Generator) -> pd.DataFrame:
    """A detector that ranks attacks high but also raises a few false alarms."""
    score = rng.uniform(0.0, 1.0, len(flows)) + np.where(is_attack, 1.5, 0.0)
    score[:3] += 2.0                           # three benign false alarms
    frame = flows[["flow_id", "src_ip", "dst_ip", "src_port", "dst_port", "protocol",
                   "first_seen_ms", "last_seen_ms"]].copy()
    frame["score"], frame["threshold"] = score, 1.5
    frame["is_anomaly"] = score > 1.5
    if model == "a2gnn":
        frame["atom_id"] = "atom-" + flows["src_ip"].str.replace(".", "-", regex=False)
        frame["atom_size"], frame["atom_density"] = 5, 0.4
        frame["nearest_anchor"], frame["anchor_distance"] = 2, score
    else:
        frame["triplet"] = flows["dst_ip"] + "|" + flows["dst_port"].astype(str) + "|" + flows["protocol"].astype(str)
        frame["screening_probability"], frame["refined_score"] = 0.7, score
    return frame


def build_synthetic_warehouse(root, with_scores: bool = True) -> tuple:
    """Write the synthetic nights under ``root``; returns (warehouse, labels.csv path)."""
    rng = np.random.default_rng(3)
    warehouse = root / "warehouse"
    for date in TRAIN_DATES:
        write_arrow_partition(pa.Table.from_pandas(_with_ids(_benign_flows(date, BENIGN_FLOWS, rng), date)),
                              warehouse, "flows", date=date)
    test = _with_ids(_benign_flows(TEST_DATE, BENIGN_FLOWS, rng) + _attack_flows(TEST_DATE), TEST_DATE)
    write_arrow_partition(pa.Table.from_pandas(test), warehouse, "flows", date=TEST_DATE)
    is_attack = (test["src_ip"] == SCAN_ATTACKER) | test["src_ip"].str.startswith(FLOOD_PREFIX)
    if with_scores:
        for model in ("a2gnn", "rearview"):
            write_arrow_partition(pa.Table.from_pandas(_scores(test, is_attack.to_numpy(), model, rng)),
                                  warehouse, "flow_scores", date=TEST_DATE, model=model, model_version="v1")
    atoms = pd.DataFrame({"flow_id": test["flow_id"],
                          "atom_id": "atom-" + test["src_ip"].str.replace(".", "-", regex=False)})
    atoms["component_id"] = "c0"
    atoms["atom_size"] = atoms.groupby("atom_id")["flow_id"].transform("size")
    atoms["atom_internal_edges"], atoms["atom_density"], atoms["atom_internal_weight"] = 3, 0.4, 1.0
    write_arrow_partition(pa.Table.from_pandas(atoms), warehouse, "atoms", date=TEST_DATE)
    write_arrow_partition(
        pa.table({"capture_file": ["2026-01-03/lan.pcap"], "file_bytes": [123456], "status": ["ok"],
                  "packets_read": [1000], "packets_in_flows": [990], "packets_skipped": [10],
                  "skipped_non_ip": [10]}),
        warehouse, "ingest_stats", date=TEST_DATE)
    write_arrow_partition(
        pa.table({"capture_file": ["2026-01-03/lan.pcap"] * 2, "byte_offset": [10, 20],
                  "reason": ["truncated", "truncated"], "fatal": [False, False]}),
        warehouse, "ingest_errors", date=TEST_DATE)
    labels = root / "labels.csv"
    start_s = (_day_start_ms(TEST_DATE) + 1_000_000) // 1000
    labels.write_text(
        "attack,a,b,start,end\n"
        f"scan,{SCAN_ATTACKER},{VICTIM},{start_s - 1},{start_s + 3}\n"
        f"dos,{FLOOD_PREFIX}.0/24,{VICTIM},{start_s + 4},{start_s + 8}\n"
    )
    return warehouse, labels


SCAN_CAUGHT = 5
"""Scan flows the synthetic verdict flags (of ``SCAN_FLOWS``); it misses the flood."""


def add_verdict(warehouse, version: str = "verdict-v1", incidents: bool = True, hostile_host: str | None = None):
    """Write verdict scores and incidents for the synthetic night: incident ``-0001`` holds
    ``SCAN_CAUGHT`` scan flows, ``-0002`` three benign flows (``hostile_host`` first in
    its host list when given); the flood is not flagged. ``incidents=False``: a night with
    nothing flagged (an empty incidents table)."""
    night = read_arrow_partition(warehouse, "flows", date=TEST_DATE).to_pandas()
    scan = night.index[night["src_ip"] == SCAN_ATTACKER][:SCAN_CAUGHT]
    benign = night.index[night["src_ip"].str.startswith("10.10.1.")][:3]
    scores = night[["flow_id", "src_ip", "dst_ip", "src_port", "dst_port", "protocol",
                    "first_seen_ms", "last_seen_ms"]].copy()
    scores["score"], scores["threshold"], scores["is_anomaly"] = 0.5, 3.0, False
    scores["incident_id"], scores["evidence"] = None, "none"
    rows = []
    if incidents:
        for rank, members, score in ((1, scan, 9.0), (2, benign, 4.0)):
            incident_id = f"{TEST_DATE}-{rank:04d}"
            scores.loc[members, ["score", "is_anomaly", "incident_id"]] = [score, True, incident_id]
            scores.loc[members, "evidence"] = "history 3.4, a2gnn 2.1; lacked: rearview"
            part = night.loc[members]
            hosts = sorted(set(part["src_ip"]) | set(part["dst_ip"]))
            rows.append({"incident_id": incident_id, "rank": rank,
                         "hosts": ([hostile_host] if hostile_host and rank == 2 else []) + hosts,
                         "services": sorted(set(part["dst_ip"] + "|" + part["dst_port"].astype(str) + "|"
                                                + part["protocol"].astype(str))),
                         "first_seen_ms": int(part["first_seen_ms"].min()),
                         "last_seen_ms": int(part["last_seen_ms"].max()),
                         "flows": len(members), "flagged_flows": len(members), "score": score,
                         "top_evidence": "history 3.4, a2gnn 2.1"})
    from pipeline.store.schema import INCIDENTS, empty_table

    table = pa.Table.from_pylist(rows, schema=INCIDENTS) if rows else empty_table("incidents")
    write_arrow_partition(table, warehouse, "incidents", date=TEST_DATE, model_version=version)
    write_arrow_partition(pa.Table.from_pandas(scores), warehouse, "flow_scores", date=TEST_DATE,
                          model="verdict", model_version=version)
    return version


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return build_synthetic_warehouse(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture(scope="module")
def labelled_summary(spark, synthetic):
    warehouse, labels = synthetic
    return evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, labels, ["a2gnn", "rearview"])


def test_summary_counts_every_labelled_attack_kind(labelled_summary):
    assert labelled_summary["attack_flows_by_kind"] == {
        "benign": BENIGN_FLOWS, "dos": FLOOD_FLOWS, "scan": SCAN_FLOWS,
    }
    assert labelled_summary["volumes"]["flows"] == BENIGN_FLOWS + SCAN_FLOWS + FLOOD_FLOWS
    assert labelled_summary["train_flows"] == 2 * BENIGN_FLOWS


def test_model_metrics_match_its_flags_in_the_warehouse(labelled_summary):
    a2gnn = labelled_summary["detectors"]["a2gnn"]
    assert a2gnn["model_version"] == "v1"
    m = a2gnn["metrics"]
    # the synthetic detector flags every attack plus exactly three benign flows
    assert (m["tp"], m["fp"], m["fn"]) == (SCAN_FLOWS + FLOOD_FLOWS, 3, 0)
    assert m["recall"] == 1.0
    assert m["precision"] == pytest.approx(20 / 23)
    assert a2gnn["per_kind"]["scan"] == {"flows": SCAN_FLOWS, "detected": SCAN_FLOWS, "recall": 1.0}
    assert a2gnn["per_kind"]["benign"]["flagged"] == 3


def test_novelty_baseline_flags_the_scan_but_not_the_flood_on_a_known_port(labelled_summary):
    novelty = labelled_summary["detectors"]["novelty_lookup"]["per_kind"]
    assert novelty["scan"]["recall"] == 1.0
    assert novelty["dos"]["detected"] == 0
    assert novelty["benign"]["flagged"] == 0


def test_distance_baselines_single_out_one_packet_attack_flows(labelled_summary):
    for name in ("knn_distance", "isolation_forest"):
        entry = labelled_summary["detectors"][name]
        assert entry["family"] == "baseline"
        assert entry["metrics"]["roc_auc"] > 0.9, name
        assert entry["curves"]["roc"]["fpr"][0] == 0.0


def test_summary_is_plain_json(labelled_summary):
    assert json.loads(json.dumps(labelled_summary)) == labelled_summary


def test_missing_model_scores_are_reported_unavailable_not_fatal(spark, tmp_path):
    warehouse, labels = build_synthetic_warehouse(tmp_path, with_scores=False)
    summary = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["a2gnn"])
    assert summary["detectors"]["a2gnn"] == {"family": "model", "available": False}
    assert summary["attack_flows_by_kind"] is None
    assert summary["detectors"]["novelty_lookup"]["metrics"] is None
    assert summary["volumes"]["ingest_errors"]["errors"] == 2
    assert "not available" in results_markdown(summary)


def test_a_night_without_labels_gets_only_the_baselines_that_mean_something_without_them(spark, tmp_path):
    warehouse, _ = build_synthetic_warehouse(tmp_path, with_scores=False)
    summary = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["a2gnn"])
    baselines = sorted(n for n, e in summary["detectors"].items() if e["family"] == "baseline")
    assert baselines == ["novelty_lookup"]
    everything = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["a2gnn"],
                                EvaluationConfig(baselines_without_labels=BASELINE_NAMES))
    assert sorted(n for n, e in everything["detectors"].items() if e["family"] == "baseline") == sorted(BASELINE_NAMES)
    assert everything["detectors"]["novelty_lookup"] == summary["detectors"]["novelty_lookup"]


def test_newest_score_version_is_evaluated_not_the_first_by_name(tmp_path):
    scores = pa.table({"flow_id": ["f1"], "score": [0.5]})
    for version in ("b-written-first", "a-written-second"):
        write_arrow_partition(scores, tmp_path, "flow_scores", date=TEST_DATE, model="a2gnn",
                              model_version=version)
    assert latest_score_version(tmp_path, TEST_DATE, "a2gnn") == "a-written-second"
    assert latest_score_version(tmp_path, TEST_DATE, "rearview") is None


def test_command_writes_summary_table_and_report(spark, synthetic, tmp_path):
    warehouse, labels = synthetic
    out = tmp_path / "out"
    main(["--warehouse", str(warehouse), "--date", TEST_DATE, "--train-dates", ",".join(TRAIN_DATES),
          "--labels", str(labels), "--models", "a2gnn", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["detectors"]) == {"a2gnn", "isolation_forest", "knn_distance", "novelty_lookup"}
    table = (out / "results.md").read_text()
    assert "| a2gnn | model | 23 | 0.870 | 1.000 | 0.930 |" in table
    assert "| scan | 12 |" in table
    assert (out / "report.html").stat().st_size > 10_000


def test_pinned_version_is_evaluated_and_a_missing_pin_is_unavailable(spark, synthetic):
    warehouse, labels = synthetic
    pinned = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["a2gnn", "rearview"],
                            versions={"a2gnn": "v1", "rearview": "v9"})
    assert pinned["detectors"]["a2gnn"]["model_version"] == "v1"
    assert pinned["detectors"]["rearview"] == {"family": "model", "available": False}


def test_a_night_without_labels_is_summarised_by_spark_exactly_as_in_pandas(spark, synthetic):
    warehouse, _ = synthetic
    in_spark = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["a2gnn", "rearview"])
    in_pandas = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["a2gnn", "rearview"],
                               EvaluationConfig(aggregate_in_spark=False))
    assert in_spark == in_pandas
    assert in_spark["detectors"]["a2gnn"]["flagged"] == SCAN_FLOWS + FLOOD_FLOWS + 3
    assert sum(in_spark["detectors"]["novelty_lookup"]["histogram"]["all"]) == in_spark["volumes"]["flows"]


def test_spark_histogram_bins_like_numpy_at_edges_and_skips_non_finite_scores(spark):
    from pipeline.evaluation import aggregates as night_aggregates
    from pipeline.evaluation import metrics

    # 0, 1, ..., 40 fall exactly on the 40 bins' edges; NaN, +-inf and null are not scores
    values = [float(v) for v in range(41)] + [20.5, 39.999, float("nan"), float("inf"), float("-inf"), None]
    frame = spark.createDataFrame([(v,) for v in values], "score double")
    expected = metrics.score_histograms(np.array([np.nan if v is None else v for v in values]))
    assert night_aggregates.histogram(frame, "score") == expected
    assert expected["all"][-1] == 3  # the last bin is closed: 39, 39.999 and 40
    empty = spark.createDataFrame([(float("nan"),)], "score double")
    assert night_aggregates.histogram(empty, "score") == {"edges": [], "all": []}


# ------------------------------------------------------------------ incident level
def _rules(tmp_path, text: str):
    path = tmp_path / "labels.csv"
    path.write_text("attack,a,b,start,end\n" + text)
    return read_labels(path)


def test_each_flow_gets_the_first_labels_row_it_matches_with_cidr_wildcard_and_overlap(tmp_path):
    rules = _rules(tmp_path, "scan,10.0.0.0/24,10.9.9.9,10,20\n"
                             "c2,10.0.0.5,*,0,100\n"
                             "dos,10.0.1.7,10.9.9.9,50,60\n")
    flows = pd.DataFrame({
        "src_ip": ["10.0.0.5", "10.9.9.9", "10.0.0.5", "10.0.1.7", "10.0.1.7", "10.1.1.1"],
        "dst_ip": ["10.9.9.9", "10.0.0.200", "8.8.8.8", "10.9.9.9", "10.9.9.9", "10.9.9.9"],
        "first_seen_ms": [15_000, 19_500, 30_000, 61_000, 45_000, 15_000],
        "last_seen_ms": [16_000, 25_000, 31_000, 62_000, 50_000, 16_000],
    })
    # scan in the prefix (either direction, overlap at the edge), then c2 by wildcard,
    # dos only while it overlaps [50 s, 60 s], the last flow matches nothing
    assert matching_label_rows(flows, rules).tolist() == [0, 0, 1, -1, 2, -1]
    kinds = [rules[r].attack if r >= 0 else "benign" for r in matching_label_rows(flows, rules)]
    assert kinds == label_flows(flows, rules).tolist()


def test_attack_partly_in_a_flagged_incident_is_caught_benign_incidents_counted_missed_attack_listed(tmp_path):
    rules = _rules(tmp_path, "scan,10.0.0.66,*,0,100\n"
                             "dos,58.1.1.0/24,10.0.0.80,0,100\n"
                             "exfil,6.6.6.6,*,5000,6000\n")        # another night's attack
    flows = pd.DataFrame({"flow_id": [f"f{i}" for i in range(10)],
                          "label_row": [0, 0, 0, 0, 1, 1, -1, -1, -1, -1]})
    verdict = pd.DataFrame({
        "flow_id": ["f0", "f6", "f7", "f8", "f9"],
        "is_anomaly": [True, True, True, True, False],
        # the scan's one flagged flow shares incident 0001 with a benign flow; 0002 and
        # 0003 hold only benign flows
        "incident_id": ["D-0001", "D-0001", "D-0002", "D-0003", None],
    })
    incidents = pd.DataFrame({
        "incident_id": ["D-0001", "D-0002", "D-0003"], "rank": [1, 2, 3],
        "hosts": [["10.0.0.66", "10.0.0.9"], ["10.0.0.7"], ["10.0.0.8"]],
        "services": [["10.0.0.9|22|6"], ["10.0.0.7|53|17"], ["10.0.0.8|80|6"]],
        "first_seen_ms": [1000, 2000, 3000], "last_seen_ms": [1500, 2500, 3500],
        "flows": [6, 1, 1], "flagged_flows": [2, 1, 1], "score": [7.5, 3.1, 2.9],
        "top_evidence": ["history 3.4", "a2gnn 2.1", "volume 1.0"],
    })
    result = incident_detection(flows, verdict, incidents, rules)
    scan, dos = result["attacks"]
    assert scan == {"row": 0, "kind": "scan", "attacker": "10.0.0.66/32", "victim": "*", "start_ms": 0,
                    "end_ms": 100_000, "attack_flows": 4, "caught": True, "flagged_flows": 1,
                    "incident_ids": ["D-0001"]}
    assert (dos["kind"], dos["attack_flows"], dos["caught"], dos["flagged_flows"], dos["incident_ids"]) == \
        ("dos", 2, False, 0, [])
    assert (result["attacks_caught"], result["attacks_total"]) == (1, 2)     # exfil: not on this night
    assert (result["incidents"], result["benign_incidents"], result["flagged_flows"]) == (3, 2, 4)
    assert result["truth"] == {"D-0001": {"benign": 1, "scan": 1}}
    assert [(i["rank"], i["truth"]) for i in result["top"]] == [
        (1, {"benign": 1, "scan": 1}), (2, {"benign": 1}), (3, {"benign": 1})]
    assert json.loads(json.dumps(result)) == result


@pytest.fixture(scope="module")
def verdict_warehouse(tmp_path_factory):
    warehouse, labels = build_synthetic_warehouse(tmp_path_factory.mktemp("verdict"))
    return warehouse, labels, add_verdict(warehouse)


def test_night_summary_judges_the_verdicts_incidents_against_labels(spark, verdict_warehouse):
    warehouse, labels, version = verdict_warehouse
    summary = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, labels, ["a2gnn", "verdict"],
                             versions={"verdict": version})
    assert summary["detectors"]["verdict"]["flagged"] == SCAN_CAUGHT + 3
    incidents = summary["incidents"]
    assert (incidents["model_version"], incidents["available"], incidents["labelled"]) == (version, True, True)
    assert [(a["kind"], a["attack_flows"], a["caught"], a["flagged_flows"]) for a in incidents["attacks"]] == [
        ("scan", SCAN_FLOWS, True, SCAN_CAUGHT), ("dos", FLOOD_FLOWS, False, 0)]
    assert incidents["attacks"][0]["incident_ids"] == [f"{TEST_DATE}-0001"]
    assert (incidents["incidents"], incidents["benign_incidents"]) == (2, 1)
    assert [i["truth"] for i in incidents["top"]] == [{"scan": SCAN_CAUGHT}, {"benign": 3}]
    table = results_markdown(summary)
    assert "Attacks caught: 1 of 2; benign incidents: 1 of 2." in table
    assert f"| 3 | dos | {FLOOD_PREFIX}.0/24 | {VICTIM} | {FLOOD_FLOWS} | **missed** | 0 | – |" in table


def test_night_without_labels_lists_its_incidents_and_one_without_verdict_has_none(spark, verdict_warehouse):
    warehouse, _, version = verdict_warehouse
    summary = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["a2gnn", "verdict"])
    incidents = summary["incidents"]
    assert (incidents["labelled"], incidents["incidents"], incidents["attacks"]) == (False, 2, None)
    assert [(i["rank"], i["incident_id"], i["flagged_flows"]) for i in incidents["top"]] == [
        (1, f"{TEST_DATE}-0001", SCAN_CAUGHT), (2, f"{TEST_DATE}-0002", 3)]
    assert incidents["top"][0]["hosts"] == sorted([SCAN_ATTACKER, VICTIM])
    assert "| 1 | 2026-01-03-0001 | 9.000 | 5 / 5 | 2 |" in results_markdown(summary)
    assert evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["a2gnn"])["incidents"] is None
