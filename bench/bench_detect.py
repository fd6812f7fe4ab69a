"""DetectTask end to end on generated nights of about 0.25, 0.5 and 1 GB, next to NFStream.

The scored nights are the dev test night repeated with remapped addresses
(``bench/scaled_night.py``). Both models are trained once on the dev training nights
(timed apart: nightly runs reuse a model), then each big night runs the whole DetectTask
(extract, graph, Leiden, score with both models, publish, report) as a real ``luigi``
process. NFStream (statistical features, no DPI) extracts flows from the same file in the
same run: the ratio of the two times is the figure of merit (target <= 5x). Peak memory is
the RSS summed over the whole process tree (Python, JVM, Spark workers).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchlib import REPO_ROOT, replace_section, run_measured, stamp  # noqa: E402
from bench.scaled_night import write_scaled  # noqa: E402

VENV_BIN = Path(sys.executable).parent
NFSTREAM_SNIPPET = (
    "import sys; from nfstream import NFStreamer; "
    "n = sum(1 for _ in NFStreamer(source=sys.argv[1], statistical_analysis=True, n_dissections=0)); "
    "print('flows', n)"
)


def luigi(date: str, archive: Path, warehouse: Path, *extra: str) -> dict:
    command = [str(VENV_BIN / "luigi"), "--module", "jobs", "DetectTask", "--date", date,
               "--archive", str(archive), "--warehouse", str(warehouse), "--local-scheduler", *extra]
    result = run_measured(command, env=dict(os.environ, PYSPARK_PYTHON=sys.executable))
    if result["returncode"] != 0:
        log = warehouse.parent / f"detect-{date}.log"
        log.write_text(result["output"])
        summary = [line for line in result["output"].splitlines() if not line.lstrip().startswith("at ")]
        raise RuntimeError(f"DetectTask {date} failed (whole output in {log}):\n" + "\n".join(summary[-80:]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--sizes-gb", default="0.25,0.5,1.0")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / ".bench" / "detect")
    args = parser.parse_args()

    source_archive = args.shared_data / "archive"
    test_night = source_archive / "2026-01-03" / "lan-20260103.pcap"
    shutil.rmtree(args.work, ignore_errors=True)
    archive, warehouse = args.work / "archive", args.work / "warehouse"
    for night in ("2026-01-01", "2026-01-02", "2026-01-03"):
        shutil.copytree(source_archive / night, archive / night)
    training = luigi("2026-01-03", archive, warehouse)  # trains both models, scores the dev night

    rows = []
    for index, size in enumerate(float(s) for s in args.sizes_gb.split(",")):
        date = f"2026-01-{4 + index:02d}"
        copies = max(1, round(size * 2**30 / test_night.stat().st_size))
        night_file = archive / date / "scaled.pcap"
        generated = write_scaled(test_night, night_file, copies)
        nfstream = run_measured([sys.executable, "-c", NFSTREAM_SNIPPET, str(night_file)])
        detect = luigi(date, archive, warehouse)
        rows.append((size, generated, nfstream, detect))
        shutil.rmtree(archive / date)  # keep the disk footprint to one night at a time
        print(f"{size} GB: detect {detect['seconds']:.0f} s, nfstream {nfstream['seconds']:.0f} s", flush=True)
        write_section(rows, training)  # after every size, so a long run leaves what it measured


STAGES = (  # (column, task families), in pipeline order
    ("extract", ("ExtractFlowsTask",)),
    ("graph", ("SignatureStatsTask", "FaninHistoryTask", "BuildGraphTask")),
    ("Leiden", ("PartitionTask",)),
    ("A2GNN", ("TrainA2GNNTask", "ScoreA2GNNTask")),
    ("RearView", ("TrainRearViewTask", "ScoreRearViewTask")),
    ("publish", ("PublishTablesTask",)),
    ("report", ("ReportTask",)),
)
_TASK_TIME = re.compile(r"\b([A-Z]\w*?Task)_\S* ran in ([0-9.]+) s")


def stage_seconds(log_text: str) -> dict[str, float]:
    """Seconds per stage from a DetectTask log's ``<task_id> ran in <s> s`` lines
    (``jobs.config.log_processing_time``); stages that did not run are absent."""
    per_family: dict[str, float] = {}
    for family, seconds in _TASK_TIME.findall(log_text):
        per_family[family] = per_family.get(family, 0.0) + float(seconds)
    return {column: sum(per_family[f] for f in families if f in per_family)
            for column, families in STAGES if any(f in per_family for f in families)}


def role_peaks(result: dict) -> str:
    """``luigi / JVM / workers`` peaks (each its own maximum, so they need not sum to the total)."""
    roles = result.get("peak_rss_by_role_mib") or {}
    return " / ".join(f"{roles[k]:.0f}" if k in roles else "-" for k in ("driver", "jvm", "workers"))


def write_section(rows: list, training: dict) -> None:
    table = ["| night | packets | NFStream extraction (s) | DetectTask end to end (s) | ratio | "
             "DetectTask peak RSS (MiB) | of which luigi / JVM / Python workers (MiB) | NFStream peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    stages = ["| night | " + " | ".join(c for c, _ in STAGES) + " | other (JVM start, scheduling) |",
              "|---|" + "---:|" * (len(STAGES) + 1)]
    for size, generated, nfstream, detect in rows:
        night = f"{generated['bytes'] / 2**30:.2f} GB ({generated['copies']} copies)"
        table.append(
            f"| {night} | {generated['packets']:,} | "
            f"{nfstream['seconds']:.1f} | {detect['seconds']:.1f} | {detect['seconds'] / nfstream['seconds']:.2f}x | "
            f"{detect['peak_rss_mib']:.0f} | {role_peaks(detect)} | {nfstream['peak_rss_mib']:.0f} |")
        timed = stage_seconds(detect["output"])
        other = detect["seconds"] - sum(timed.values())
        stages.append(f"| {night} | " + " | ".join(f"{timed[c]:.1f}" if c in timed else "-" for c, _ in STAGES)
                      + f" | {other:.1f} |")
    body = "\n".join([
        stamp(), "",
        "Command: `python bench/bench_detect.py` (part of `make bench`). Both models were trained once on the "
        f"dev training nights ({training['seconds']:.0f} s including scoring the dev test night; peak RSS "
        f"{training['peak_rss_mib']:.0f} MiB); each big night then runs the whole DetectTask reusing them "
        "(extract, graph, Leiden, both detectors, publish, report). Target: <= 5x NFStream's extraction "
        "time on the same file; peak memory flat as the night grows.", "", *table, "",
        "Wall seconds per stage (each Luigi task's own run time, from the run's log):", "", *stages])
    replace_section("DetectTask end to end", body)


if __name__ == "__main__":
    main()
