"""``docs/results.md`` from night summaries: several archives, several seeds, incidents.

Summaries are built as dicts (the shape ``pipeline.evaluation.night.evaluate_night`` returns), so
no pipeline runs here; ``bench.results.run_archive`` is what produces them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.results import (
    NOTES_MARKER, ArchiveSet, parse_archive_set, parse_seeds, results_document, seed_table, with_notes,
)


def _entry(f1: float, fpr: float, family: str = "model", flagged: int = 10) -> dict:
    return {"family": family, "available": True, "scored_flows": 100, "flagged": flagged, "threshold": 1.0,
            "metrics": {"precision": f1, "recall": f1, "f1": f1, "roc_auc": 0.9, "pr_auc": 0.5,
                        "false_positive_rate": fpr},
            "per_kind": {"scan": {"flows": 5, "detected": 5, "recall": 1.0},
                         "benign": {"flows": 95, "flagged": flagged - 5, "false_positive_rate": fpr}}}


def _summary(verdict_f1: float, novelty_f1: float, caught: int, benign_incidents: int) -> dict:
    attacks = [{"row": 0, "kind": "scan", "attacker": "10.0.0.66/32", "victim": "*", "start_ms": 0,
                "end_ms": 1000, "attack_flows": 5, "caught": caught >= 1, "flagged_flows": 5 if caught else 0,
                "incident_ids": ["2026-01-03-0001"] if caught else []},
               {"row": 1, "kind": "dos", "attacker": "58.1.1.0/24", "victim": "10.0.0.80", "start_ms": 0,
                "end_ms": 1000, "attack_flows": 8, "caught": caught >= 2, "flagged_flows": 8 if caught >= 2 else 0,
                "incident_ids": ["2026-01-03-0002"] if caught >= 2 else []}]
    return {
        "date": "2026-01-03", "train_dates": ["2026-01-01", "2026-01-02"], "train_flows": 200,
        "labels_file": "labels.csv", "models": ["a2gnn", "rearview", "verdict"],
        "attack_flows_by_kind": {"benign": 95, "dos": 8, "scan": 5},
        "detectors": {
            "a2gnn": {**_entry(0.5, 0.02), "model_version": "a-v"},
            "rearview": {**_entry(0.25, 0.03), "model_version": "r-v"},
            "verdict": {**_entry(verdict_f1, 0.01), "model_version": "v-v"},
            "isolation_forest": _entry(0.0, 0.006, "baseline"),
            "novelty_lookup": _entry(novelty_f1, 0.07, "baseline"),
            "rearview (screening only)": _entry(0.01, 0.05, "model stage"),
        },
        "incidents": {"model_version": "v-v", "available": True, "labelled": True, "incidents": caught + benign_incidents,
                      "flagged_flows": 20, "top": [], "attacks": attacks, "attacks_total": 2,
                      "attacks_caught": caught, "benign_incidents": benign_incidents, "truth": {}},
    }


@pytest.fixture
def two_archives():
    dev = ArchiveSet("dev", Path("../shared/data/archive"), Path("../shared/data/labels.csv"))
    other = ArchiveSet("other", Path("/data/other/archive"), Path("/data/other/labels.csv"))
    return [
        (dev, {"42": _summary(0.80, 0.50, 2, 1), "0": _summary(0.70, 0.50, 1, 3)}),
        (other, {"42": _summary(0.40, 0.60, 1, 0), "0": _summary(0.60, 0.60, 1, 0)}),
    ]


def test_archive_set_takes_labels_beside_the_archive_unless_given():
    assert parse_archive_set("dev=../shared/data/archive") == ArchiveSet(
        "dev", Path("../shared/data/archive"), Path("../shared/data/labels.csv"))
    assert parse_archive_set("b=/x/archive:/y/truth.csv").labels == Path("/y/truth.csv")
    with pytest.raises(ValueError, match="NAME=ARCHIVE_DIR"):
        parse_archive_set("/x/archive")


def test_seeds_parse_in_order_and_none_means_the_configured_ones():
    assert parse_seeds("42,0,1") == [42, 0, 1]
    assert parse_seeds(None) == [None]
    with pytest.raises(ValueError, match="repeated"):
        parse_seeds("1,1")


def test_results_for_two_archives_give_tables_per_archive_seeds_incidents_and_a_summary(two_archives):
    command = "python -m bench.results --archive-set dev=../shared/data/archive --seeds 42,0"
    text = results_document(two_archives, command, "2026-12-04 10:00 UTC")
    assert f"Regenerate with `{command}`." in text
    dev = text[text.index("## dev"):text.index("## other")]
    other = text[text.index("## other"):text.index("## Across archives")]
    # the first seed's table: the verdict first, then the models, the stage, the baselines
    rows = [line.split(" | ")[0] for line in dev.splitlines() if line.startswith("| ") and " | model" in line
            or line.startswith("| ") and " | baseline |" in line]
    assert rows == ["| verdict", "| a2gnn", "| rearview", "| rearview (screening only)", "| isolation_forest",
                    "| novelty_lookup"]
    assert "| verdict | model | 10 | 0.800 | 0.800 | 0.800 | 0.900 | 0.500 | 0.010 |" in dev
    # per-seed block and its mean (verdict F1 0.80, 0.70 -> 0.75; caught 2 and 1 of 2)
    assert "| 42 | 0.800 | 0.010 | 0.500 | 0.020 | 0.250 | 0.030 | 0.500 | 0.070 | 2/2 | 1 |" in dev
    assert "| 0 | 0.700 | 0.010 |" in dev
    assert "| **mean** | 0.750 | 0.010 | 0.500 | 0.020 | 0.250 | 0.030 | 0.500 | 0.070 | 1.5 | 2.0 |" in dev
    # incidents at the first seed: both attacks caught on dev, the flood missed on other
    assert "Attacks caught: 2 of 2; benign incidents: 1 of 3." in dev
    assert "| 3 | dos | 58.1.1.0/24 | 10.0.0.80 | 8 | **missed** | 0 | – |" in other
    assert "| 2 | scan | 10.0.0.66/32 | * | 5 | yes | 5 | 2026-01-03-0001 |" in other
    # across archives: mean verdict F1, novelty F1, their ratio, FPR, caught and benign spans
    assert "| dev | 2 | 0.750 | 0.500 | 1.50 | 0.0100 | 1-2/2 | 1-3 |" in text
    assert "| other | 2 | 0.500 | 0.600 | 0.83 | 0.0100 | 1/2 | 0 |" in text


def test_a_summary_without_verdict_reads_not_available_not_an_error(two_archives):
    archive_set, summaries = two_archives[0]
    bare = {label: {**s, "incidents": None,
                    "detectors": {n: e for n, e in s["detectors"].items() if n != "verdict"}}
            for label, s in summaries.items()}
    text = results_document([(archive_set, bare)], "cmd", "now")
    assert "| 42 | n/a | n/a | 0.500 | 0.020 |" in seed_table(bare)
    assert "| dev | 2 | n/a | 0.500 | n/a | n/a | n/a | n/a |" in text


def test_hand_written_notes_after_the_marker_are_kept():
    existing = "# old table\n\n" + NOTES_MARKER + "\n\n## Reading the table\nkept as is\n"
    assert with_notes("# new table\n", existing) == "# new table\n\n" + NOTES_MARKER + "\n\n## Reading the table\nkept as is\n"
    assert with_notes("# new\n", "") == "# new\n\n" + NOTES_MARKER + "\n"
