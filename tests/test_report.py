"""The nightly HTML report: self-contained, complete with labels, still useful without."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from test_evaluate import (
    FLOOD_PREFIX, SCAN_ATTACKER, SCAN_CAUGHT, TEST_DATE, TRAIN_DATES, VICTIM, add_verdict,
    build_synthetic_warehouse,
)

from pipeline.evaluation.night import evaluate_night, ingest_error_rows
from pipeline.report import (
    _incident_drawing, _quality_section, _volumes_section, atom_layout, incident_edges, ingest_errors_table,
    labelled_hosts, write_report,
)

HOSTILE = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def labelled_report(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("report_labelled")
    warehouse, labels = build_synthetic_warehouse(root)
    summary = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, labels, ["a2gnn", "rearview"])
    path = write_report(spark, warehouse, TEST_DATE, summary, root / "out")
    return path, summary


def _no_external_references(text: str) -> bool:
    return not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)


def test_report_and_summary_are_written_together_and_nothing_else(labelled_report):
    path, summary = labelled_report
    assert path.name == "report.html"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html", "summary.json"]
    assert json.loads((path.parent / "summary.json").read_text()) == summary


def test_labelled_report_is_self_contained_and_shows_quality_plots_and_evidence(labelled_report):
    text = labelled_report[0].read_text()
    assert _no_external_references(text)
    for heading in ("Volumes", "Detection quality", "Recall per attack kind", "ROC and precision-recall",
                    "Score distributions", "Top anomalous flows", "Largest anomalous atoms", "Hosts"):
        assert heading in text, heading
    # every plot is an inline PNG: curves, distributions, atoms
    assert text.count("data:image/png;base64,") == 3
    # evidence columns of both models and the scan's attacker among the top flows
    for column in ("anchor_distance", "atom_density", "screening_probability", "refined_score"):
        assert f">{column}</th>" in text
    assert f"{SCAN_ATTACKER}:55555" in text
    assert f"{FLOOD_PREFIX}.1" in text
    # with labels, the top flows carry their ground truth: attacks and the benign false alarms
    assert '<b class="attack">scan</b>' in text and '<b class="attack">dos</b>' in text
    assert ">labels (flows)</th>" in text and "scan 12" in text   # the scan's atom, by label
    assert ">label</th>" in text and "<td class=\"\">benign</td>" in text


def test_unlabelled_night_without_model_scores_still_gets_a_report(spark, tmp_path):
    warehouse, _ = build_synthetic_warehouse(tmp_path, with_scores=False)
    summary = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["a2gnn", "rearview"])
    text = write_report(spark, warehouse, TEST_DATE, summary, tmp_path / "out").read_text()
    assert _no_external_references(text)
    assert "Detection quality" not in text
    assert text.count("no scores</td>") == 2          # both models listed as missing
    assert "no labels (nightly run)" in text
    assert "Score distributions" in text and "all flows of the night" in text
    assert text.count("No scores for this night.") == 2
    # volumes from flows and ingest tables, hosts ranked by traffic
    assert ">260</div><div class=\"label\">flows" in text
    assert ">2</div><div class=\"label\">ingest errors" in text
    # each error listed: file, offset; the partition predates lengths and packets after
    assert text.count('<td class="">2026-01-03/lan.pcap</td><td class="num">10</td><td class="num">–</td>') == 1
    assert text.count('<td class="">2026-01-03/lan.pcap</td><td class="num">20</td><td class="num">–</td>') == 1
    assert "busiest first" in text
    assert "No model scores for this night: the largest atoms are drawn." in text
    assert "10.10.0.81" in text


def test_atom_layout_puts_every_flow_between_its_two_hosts():
    atom = pd.DataFrame({
        "flow_id": ["f1", "f2", "f3", "f4"],
        "src_ip": ["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.3"],
        "dst_ip": ["10.0.0.2", "10.0.0.2", "10.0.0.2", "10.0.0.1"],
    })
    pos = atom_layout(atom)
    assert set(pos) == {"host:10.0.0.1", "host:10.0.0.2", "host:10.0.0.3",
                        "flow:f1", "flow:f2", "flow:f3", "flow:f4"}
    a, b = pd.Series(pos["host:10.0.0.1"]), pd.Series(pos["host:10.0.0.2"])
    parallel = [pd.Series(pos[f"flow:{f}"]) for f in ("f1", "f2", "f3")]
    # the three parallel flows are fanned out (distinct points) around the pair's midpoint
    assert len({tuple(p.round(6)) for p in parallel}) == 3
    centre = sum(parallel) / 3
    assert ((centre - (a + b) / 2).abs() < 1e-9).all()


def test_host_labels_go_to_the_busiest_hosts_and_never_on_top_of_each_other():
    positions = {"host:a": (0.0, 0.0), "host:b": (0.05, 0.01), "host:c": (1.0, 0.0),
                 "host:d": (0.0, 1.0), "flow:x": (0.5, 0.5)}
    degrees = {"host:a": 9, "host:b": 12, "host:c": 3, "host:d": 1}
    # b is busiest; a sits under b's label and is skipped; c and d are far apart
    assert labelled_hosts(positions, degrees) == ["host:b", "host:c", "host:d"]
    assert labelled_hosts(positions, degrees, max_labels=2) == ["host:b", "host:c"]
    # side by side on one row they collide only when closer than the label width
    row = {"host:a": (0.0, 0.0), "host:b": (0.3, 0.0), "host:c": (1.0, 0.0)}
    assert labelled_hosts(row, {"host:a": 2, "host:b": 1, "host:c": 1}) == ["host:a", "host:b", "host:c"]


def test_an_extra_detector_entry_without_plot_data_is_tabled_not_fatal(spark, labelled_report, tmp_path):
    """``bench.results`` adds entries (e.g. a model's first stage) with metrics only."""
    path, summary = labelled_report
    a2gnn = summary["detectors"]["a2gnn"]
    extra = {"family": "model stage", "available": True, "scored_flows": a2gnn["scored_flows"],
             "flagged": a2gnn["flagged"], "threshold": 0.6, "metrics": a2gnn["metrics"],
             "per_kind": {"scan": a2gnn["per_kind"]["scan"]}}
    summary = {**summary, "detectors": {"a2gnn (stage one)": extra, **summary["detectors"]}}
    warehouse = path.parent.parent / "warehouse"
    text = write_report(spark, warehouse, TEST_DATE, summary, tmp_path / "out").read_text()
    assert "<td class=\"\">a2gnn (stage one)</td>" in text
    assert text.count("data:image/png;base64,") == 3


def test_labelled_night_without_attacks_explains_why_curves_are_missing(spark, labelled_report, tmp_path):
    warehouse = labelled_report[0].parent.parent / "warehouse"
    no_attacks = tmp_path / "no_attacks.csv"
    no_attacks.write_text("attack,a,b,start,end\nscan,192.0.2.1,*,0,1\n")
    summary = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, no_attacks, ["a2gnn"])
    section = _quality_section(summary)
    assert "Not drawn: the labels mark no attack flow" in section
    assert "data:image/png" not in section
    assert "<b>" not in section            # every F1 is 0: nothing to single out


# ---------------------------------------------------------------------- incidents
@pytest.fixture(scope="module")
def verdict_report(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("report_verdict")
    warehouse, labels = build_synthetic_warehouse(root)
    version = add_verdict(warehouse, hostile_host=HOSTILE)
    summary = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, labels, ["a2gnn", "rearview", "verdict"],
                             versions={"verdict": version})
    return write_report(spark, warehouse, TEST_DATE, summary, root / "out").read_text(), warehouse


def test_report_leads_with_the_ranked_incidents_and_their_truth(verdict_report):
    text = verdict_report[0]
    headings = re.findall(r"<h2>([^<]+)", text)
    assert headings[0] == "Incidents "
    assert headings[1:] == ["Volumes", "Detection quality", "Score distributions ", "Top anomalous flows",
                            "Largest anomalous atoms", "Hosts "]
    incidents = text[text.index("<h2>Incidents"):text.index("<h2>Volumes")]
    rows = re.findall(r"<tr><td[^>]*>(\d+)</td><td[^>]*>([^<]+)</td>", incidents)
    assert rows == [("1", f"{TEST_DATE}-0001"), ("2", f"{TEST_DATE}-0002")]
    assert f"{SCAN_CAUGHT} / {SCAN_CAUGHT}" in incidents and ", ".join(sorted([SCAN_ATTACKER, VICTIM])) in incidents
    assert f'<b class="attack">scan</b> {SCAN_CAUGHT}' in incidents      # truth of 0001
    assert ">benign</td></tr>" in incidents                               # 0002: benign flows only
    assert "attacks caught: 1 of 2, benign incidents: 1" in incidents
    assert ">truth</th>" in incidents and "history 3.4, a2gnn 2.1" in incidents
    assert "Top 2 incidents drawn" in incidents and incidents.count("data:image/png;base64,") == 1
    assert text.count("data:image/png;base64,") == 4                     # + curves, distributions, atoms
    assert ">incident_id</th>" in text                                    # the verdict's top flows' evidence


def test_hostile_text_from_the_incidents_table_is_escaped(verdict_report):
    text = verdict_report[0]
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text


def test_a_night_with_no_incident_says_so(spark, tmp_path):
    warehouse, _ = build_synthetic_warehouse(tmp_path)
    version = add_verdict(warehouse, incidents=False)
    summary = evaluate_night(spark, warehouse, TEST_DATE, TRAIN_DATES, None, ["verdict"])
    assert summary["incidents"]["incidents"] == 0
    text = write_report(spark, warehouse, TEST_DATE, summary, tmp_path / "out").read_text()
    assert text.index("<h2>Incidents") < text.index("<h2>Volumes")
    assert f"<b>no incident flagged</b> on this night by verdict {version}" in text
    assert ">truth</th>" not in text


def test_incident_edges_count_its_pairs_flows_in_its_span_and_mark_flagged_ones():
    flows = pd.DataFrame({
        "src_ip": ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.1", "10.0.0.3", "10.0.0.1"],
        "dst_ip": ["10.0.0.2", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.0.2"],
        "first_seen_ms": [100, 150, 120, 130, 500, 900],
        "incident_id": ["D-1", None, None, "D-1", None, "D-2"],
    })
    edges = incident_edges(flows, "D-1", 100, 400)
    # pair 1-2: its flagged flow plus two unflagged ones in the span (not D-2's at 900 ms);
    # pair 1-3: the flagged flow only (the other starts after the span)
    assert edges.to_dict("records") == [
        {"a": "10.0.0.1", "b": "10.0.0.2", "flows": 3, "flagged": 1},
        {"a": "10.0.0.1", "b": "10.0.0.3", "flows": 1, "flagged": 1},
    ]
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    hostile = pd.DataFrame({"a": ["$x<b>"], "b": ["10.0.0.9"], "flows": [2], "flagged": [0]})
    _incident_drawing(ax, hostile, 40, "drawn")          # mathtext-like names draw as text
    fig.canvas.draw()
    plt.close(fig)


def test_every_ingest_error_is_listed_and_a_hostile_file_name_is_escaped():
    rows = [
        {"capture_file": f"2026-01-03/{HOSTILE}.pcap", "byte_offset": 123_456, "byte_length": 76,
         "reason": f"corrupt pcap record header ({HOSTILE})", "fatal": False, "packets_after": 4_567},
        {"capture_file": "2026-01-03/a&b.pcap", "byte_offset": 0, "byte_length": None,
         "reason": "unreadable file: not a regular file (a directory)", "fatal": True, "packets_after": 0},
    ]
    errors = {"errors": 2, "fatal": 1, "by_reason": {}, "rows": rows}
    summary = {"volumes": {"flows": 1, "packets": 2, "bytes": 3, "hosts": 4, "ingest": None,
                           "ingest_errors": errors}}
    for text in (ingest_errors_table(errors), _volumes_section(summary)):
        assert HOSTILE not in text and "<script>" not in text
        assert ('<td class="">2026-01-03/&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;.pcap</td>'
                '<td class="num">123,456</td><td class="num">76</td>') in text
        assert '<td class="num">4,567</td>' in text
        assert '<td class="">2026-01-03/a&amp;b.pcap</td><td class="num">0</td><td class="num">–</td>' in text
        assert "Ingest errors (2)" in text


def test_ingest_error_rows_are_ordered_by_file_and_offset_with_missing_columns_as_none():
    errors = pd.DataFrame({"capture_file": ["b.pcap", "a.pcap", "a.pcap"], "byte_offset": [5, 90, 24],
                           "reason": ["x", "y", "z"], "fatal": [True, False, False],
                           "byte_length": [None, 16.0, None]})
    assert ingest_error_rows(errors) == [
        {"capture_file": "a.pcap", "byte_offset": 24, "byte_length": None, "reason": "z", "fatal": False,
         "packets_after": None},
        {"capture_file": "a.pcap", "byte_offset": 90, "byte_length": 16, "reason": "y", "fatal": False,
         "packets_after": None},
        {"capture_file": "b.pcap", "byte_offset": 5, "byte_length": None, "reason": "x", "fatal": True,
         "packets_after": None},
    ]
