"""``docs/results.md``: the verdict, both detectors and the baselines on labelled archives,
over several training seeds, one command.

``python -m bench.results --archive-set dev=../shared/data/archive
--archive-set other=/data/other/archive:/data/other/labels.csv --seeds 42,0,1
--warehouse .bench/results --out docs/results.md`` runs DetectTask (production
configuration from ``conf/luigi.cfg``) on each archive's last night, trained on the nights
before it, once per seed (``[a2gnn] seed`` and ``[rearview] seed``; model versions differ
by seed, so every seed's scores live side by side in the archive's warehouse
``--warehouse/<NAME>``), then writes per archive: the quality table at the first seed, F1
and false-alarm rate per seed with their mean, each attack caught or missed by the
verdict's incidents; and a summary across archives. Labels (``ARCHIVE:LABELS``; default
``ARCHIVE/../labels.csv``) are read by the evaluation only.

The single-archive form ``--archive A --labels L --warehouse W`` still works (warehouse
``W`` itself, the configured seeds unless ``--seeds`` is given).

Besides the detectors' own decisions, the table shows RearView's first stage alone
(``screening_probability`` above the configured alarm level) so the refinement's
contribution is visible. Text after ``<!-- notes -->`` in the output file is kept.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import logging
import multiprocessing
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

NOTES_MARKER = "<!-- notes -->"
SCREENING_ONLY = "rearview (screening only)"
DETECTOR_ORDER = ("verdict", "a2gnn", "rearview", SCREENING_ONLY)
"""Models first in every table, in this order; the baselines follow."""
SEED_COLUMNS = ("verdict", "a2gnn", "rearview", "novelty_lookup")
"""Detectors whose F1 and benign false-alarm rate are listed per seed."""
CONFIGURED = "luigi.cfg"
"""The seed label of a run that keeps the configured seeds (no ``--seeds``)."""


@dataclass(frozen=True)
class ArchiveSet:
    """A labelled archive: ``name`` (its section and warehouse folder), the ``archive``
    folder holding ``<YYYY-MM-DD>/`` nights, and its ``labels`` file."""

    name: str
    archive: Path
    labels: Path


def parse_archive_set(text: str) -> ArchiveSet:
    """``NAME=ARCHIVE_DIR[:LABELS]``; labels default to ``ARCHIVE_DIR/../labels.csv``.

    Raises ``ValueError`` naming the malformed argument.
    """
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest or "/" in name:
        raise ValueError(f"--archive-set {text!r}: expected NAME=ARCHIVE_DIR[:LABELS]")
    archive, _, labels = rest.partition(":")
    archive_path = Path(archive)
    return ArchiveSet(name.strip(), archive_path, Path(labels) if labels else archive_path.parent / "labels.csv")


def parse_seeds(text: str | None) -> list[int | None]:
    """``"42,0,1"`` -> ``[42, 0, 1]``; ``None`` / empty -> ``[None]`` (configured seeds)."""
    if not text:
        return [None]
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers") from error
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed is repeated")
    return seeds or [None]


def seed_label(seed: int | None) -> str:
    return CONFIGURED if seed is None else str(seed)


def configured_seed_label(config) -> str:
    """The label of a run at the configured seeds: the seed when ``[a2gnn]`` and
    ``[rearview]`` agree, else both (``config``: Luigi's configuration parser)."""
    seeds = {section: config.get(section, "seed", CONFIGURED) for section in ("a2gnn", "rearview")}
    return seeds["a2gnn"] if len(set(seeds.values())) == 1 else f"a2gnn {seeds['a2gnn']} / rearview {seeds['rearview']}"


# ------------------------------------------------------------------ running one archive
def screening_only_entry(spark, warehouse: Path, date: str, version: str, labels: Path, alarm_p: float) -> dict:
    """RearView stage 1 alone: score = screening probability, flagged when p > ``alarm_p``."""
    from pipeline.evaluation import metrics
    from pipeline.evaluation.labels import BENIGN, label_flows, read_labels
    from pipeline.evaluation.night import read_flows
    from pipeline.store.warehouse import read_partition

    flows = read_flows(spark, warehouse, date)
    scores = read_partition(spark, warehouse, "flow_scores", date=date, model="rearview",
                            model_version=version).select("flow_id", "screening_probability").toPandas()
    aligned = scores.drop_duplicates("flow_id").set_index("flow_id").reindex(flows["flow_id"])
    probability = aligned["screening_probability"].to_numpy(dtype=np.float64, na_value=np.nan)
    flagged = np.nan_to_num(probability, nan=0.0) > alarm_p
    kinds = label_flows(flows, read_labels(labels)).to_numpy(dtype=object)
    return {
        "family": "model stage",
        "available": True,
        "scored_flows": int(np.isfinite(probability).sum()),
        "flagged": int(flagged.sum()),
        "threshold": alarm_p,
        "metrics": metrics.binary_metrics(kinds != BENIGN, probability, flagged),
        "per_kind": metrics.per_kind_detection(kinds, flagged),
    }


def run_archive(archive_set: ArchiveSet, seeds: list[int | None], warehouse: Path, date: str | None,
                log_level: int = logging.INFO) -> dict[str, dict]:
    """DetectTask on the archive's night once per seed; ``{seed label: night summary}``
    (``pipeline.evaluation.night.evaluate_night``'s, plus the screening-only entry).

    Sets ``[a2gnn] seed`` and ``[rearview] seed`` in Luigi's configuration before each
    run. Meant to run in a process of its own (``main`` starts one per archive), so each
    archive gets a fresh Spark session with its own warehouse and metastore. Raises
    ``RuntimeError`` when DetectTask fails.
    """
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import luigi

    import jobs
    from jobs.config import dataclass_of
    from jobs.rearview import rearview
    from pipeline.spark import get_spark

    archive, labels, warehouse = archive_set.archive.resolve(), archive_set.labels.resolve(), warehouse.resolve()
    nights = sorted(p.name for p in archive.iterdir() if p.is_dir()) if archive.is_dir() else []
    if not nights and date is None:
        raise FileNotFoundError(f"archive set {archive_set.name}: no <YYYY-MM-DD>/ night under {archive}")
    day = dt.date.fromisoformat(date or nights[-1])
    config = luigi.configuration.get_config()
    config.set("ReportTask", "labels", str(labels))
    summaries: dict[str, dict] = {}
    for seed in seeds:
        if seed is not None:
            for section in ("a2gnn", "rearview"):
                config.set(section, "seed", str(seed))
        log.info("%s: DetectTask %s, seed %s", archive_set.name, day, seed_label(seed))
        task = jobs.DetectTask(date=day, archive=str(archive), warehouse=str(warehouse))
        if not luigi.build([task], local_scheduler=True, log_level="WARNING"):
            raise RuntimeError(f"DetectTask failed on {archive} {day} (seed {seed_label(seed)}); see the log")
        summary = json.loads((Path(task.input()["report"].path).parent / "summary.json").read_text())
        version = summary["detectors"].get("rearview", {}).get("model_version")
        if version:
            spark = get_spark(warehouse)
            entry = screening_only_entry(spark, warehouse, day.isoformat(), version, labels,
                                         dataclass_of(rearview()).screening_alarm_p)
            summary["detectors"] = {**summary["detectors"], SCREENING_ONLY: entry}
        summaries[seed_label(seed) if seed is not None else configured_seed_label(config)] = summary
    return summaries


# ------------------------------------------------------------------------ markdown
def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _metric(summary: dict, detector: str, name: str) -> float | None:
    """A detector's metric in a summary, ``None`` when absent or unavailable."""
    entry = summary["detectors"].get(detector) or {}
    return (entry.get("metrics") or {}).get(name) if entry.get("available") else None


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _span(values: list) -> str:
    """``"3"`` when every seed agrees, ``"2-4"`` (min-max) otherwise, ``"n/a"`` if none."""
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    low, high = min(present), max(present)
    return f"{low}" if low == high else f"{low}-{high}"


def ordered_detectors(summary: dict) -> dict:
    """``summary`` with its detectors reordered: ``DETECTOR_ORDER`` first, then the rest."""
    detectors = summary["detectors"]
    first = [n for n in DETECTOR_ORDER if n in detectors]
    return {**summary, "detectors": {**{n: detectors[n] for n in first},
                                     **{n: e for n, e in detectors.items() if n not in first}}}


def seed_table(summaries: dict[str, dict]) -> str:
    """Per seed: F1 and benign false-alarm rate of ``SEED_COLUMNS``, attacks caught and
    benign incidents of the verdict; then the mean over seeds."""
    header = ["seed"] + [f"{d} {m}" for d in SEED_COLUMNS for m in ("F1", "FPR")] + ["attacks caught",
                                                                                   "benign incidents"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    columns: dict[str, list] = {h: [] for h in header[1:]}
    for label, summary in summaries.items():
        cells = []
        for detector in SEED_COLUMNS:
            for metric, key in (("F1", "f1"), ("FPR", "false_positive_rate")):
                value = _metric(summary, detector, key)
                columns[f"{detector} {metric}"].append(value)
                cells.append(_fmt(value))
        incidents = summary.get("incidents") or {}
        caught, total, benign = (incidents.get("attacks_caught"), incidents.get("attacks_total"),
                                 incidents.get("benign_incidents"))
        columns["attacks caught"].append(caught)
        columns["benign incidents"].append(benign)
        cells += [f"{caught}/{total}" if caught is not None else "n/a",
                  _fmt(benign, 0) if benign is not None else "n/a"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    means = [_fmt(_mean(columns[h])) for h in header[1:-2]]
    means += [_fmt(_mean(columns["attacks caught"]), 1), _fmt(_mean(columns["benign incidents"]), 1)]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def archive_markdown(archive_set: ArchiveSet, summaries: dict[str, dict]) -> str:
    """One archive's section: the quality table (and incidents) at the first seed, then the
    per-seed block. ``summaries``: ``{seed label: summary}`` in run order."""
    from pipeline.evaluation.night import results_markdown

    first_label, first = next(iter(summaries.items()))
    versions = ", ".join(f"{m} `{e.get('model_version')}`" for m, e in ordered_detectors(first)["detectors"].items()
                         if e.get("model_version"))
    lines = [
        f"## {archive_set.name}", "",
        f"Archive `{archive_set.archive}`, labels `{archive_set.labels}`.", "",
        f"### Seed {first_label}", "",
        f"Model versions: {versions or 'none'}.", "",
        results_markdown(ordered_detectors(first)).rstrip(), "",
        f"### Over seeds ({', '.join(summaries)})", "",
        "F1 and benign false-alarm rate (FPR) per training seed; the baselines do not depend "
        "on it. Attacks caught / benign incidents: the verdict's incidents.", "",
        seed_table(summaries).rstrip(),
    ]
    return "\n".join(lines) + "\n"


def cross_archive_markdown(results: list[tuple[ArchiveSet, dict[str, dict]]]) -> str:
    """Across archives: mean verdict F1, mean novelty-lookup F1, their ratio, the verdict's
    mean benign false-alarm rate, attacks caught and benign incidents over seeds."""
    lines = [
        "## Across archives", "",
        "Means over seeds; attacks caught and benign incidents as min-max over seeds.", "",
        "| archive | seeds | verdict F1 | novelty F1 | ratio | verdict benign FPR | attacks caught | benign incidents |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for archive_set, summaries in results:
        runs = list(summaries.values())
        verdict = _mean([_metric(s, "verdict", "f1") for s in runs])
        novelty = _mean([_metric(s, "novelty_lookup", "f1") for s in runs])
        ratio = verdict / novelty if verdict is not None and novelty else None
        fpr = _mean([_metric(s, "verdict", "false_positive_rate") for s in runs])
        incidents = [s.get("incidents") or {} for s in runs]
        caught = _span([i.get("attacks_caught") for i in incidents])
        totals = {i.get("attacks_total") for i in incidents if i.get("attacks_total") is not None}
        total = "/" + "/".join(str(t) for t in sorted(totals)) if totals else ""
        benign = _span([i.get("benign_incidents") for i in incidents])
        lines.append(f"| {archive_set.name} | {len(runs)} | {_fmt(verdict)} | {_fmt(novelty)} | "
                     f"{_fmt(ratio, 2)} | {_fmt(fpr, 4)} | {caught}{total if caught != 'n/a' else ''} | {benign} |")
    return "\n".join(lines) + "\n"


def results_document(results: list[tuple[ArchiveSet, dict[str, dict]]], command: str, generated: str) -> str:
    """The whole ``docs/results.md`` above the notes marker (pure: summaries in, text out).

    ``results``: per archive, ``{seed label: evaluate_night summary}`` in run order;
    ``command``: the command line that regenerates the file; ``generated``: a timestamp.
    """
    names = ", ".join(archive_set.name for archive_set, _ in results)
    parts = [
        "# Detection quality on labelled archives", "",
        f"Regenerate with `{command}`. Generated {generated}. Archives: {names}. Production "
        "configuration (`conf/luigi.cfg`) except the training seeds; every threshold comes from "
        "the training nights, labels are used only here. Flow-level metrics; a flow is an attack "
        "flow when a row of the labels file matches it (`pipeline/evaluation/labels.py`); incident-level: an "
        "attack is caught when one of its flows is in a verdict incident, an incident is benign "
        "when none of its flagged flows is an attack flow.", "",
    ]
    for archive_set, summaries in results:
        parts += [archive_markdown(archive_set, summaries).rstrip(), ""]
    parts.append(cross_archive_markdown(results).rstrip())
    return "\n".join(parts) + "\n"


def with_notes(text: str, existing: str) -> str:
    """``text`` followed by the notes marker and whatever followed it in ``existing``."""
    notes = existing.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in existing else "\n"
    return text.rstrip() + "\n\n" + NOTES_MARKER + notes


# ---------------------------------------------------------------------------- command
def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive-set", action="append", default=[], metavar="NAME=ARCHIVE_DIR[:LABELS]",
                        help="a labelled archive (repeat for several)")
    parser.add_argument("--archive", type=Path, default=None, help="single archive (older form)")
    parser.add_argument("--labels", type=Path, default=None, help="its labels (with --archive)")
    parser.add_argument("--name", default="dev", help="the single archive's name (with --archive)")
    parser.add_argument("--seeds", default=None, help="training seeds, e.g. 42,0,1 (default: configured)")
    parser.add_argument("--warehouse", type=Path, required=True,
                        help="with --archive-set: one warehouse per archive under it (<W>/<NAME>)")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--date", default=None, help="scored night (default: each archive's last)")
    args = parser.parse_args(argv)
    if bool(args.archive_set) == (args.archive is not None):
        parser.error("give --archive-set NAME=DIR[:LABELS] (repeatable) or --archive with --labels")
    if args.archive is not None and args.labels is None:
        parser.error("--archive needs --labels")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    seeds = parse_seeds(args.seeds)
    if args.archive is not None:        # the older single-archive form: the warehouse itself
        plan = [(ArchiveSet(args.name, args.archive, args.labels), args.warehouse)]
    else:
        sets = [parse_archive_set(text) for text in args.archive_set]
        names = [s.name for s in sets]
        if len(set(names)) != len(names):
            raise SystemExit(f"archive set names must differ: {names}")
        plan = [(s, args.warehouse / s.name) for s in sets]

    from bench import results as this  # importable by name in the worker process

    results = []
    for archive_set, warehouse in plan:
        # a fresh process per archive: its own Spark session, warehouse and metastore
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                summaries = pool.submit(this.run_archive, archive_set, seeds, warehouse, args.date,
                                        logging.INFO).result()
            except (RuntimeError, FileNotFoundError) as error:
                log.error("%s: %s", archive_set.name, error)
                return 1
        results.append((archive_set, summaries))
    command = shlex.join(["python", "-m", "bench.results", *argv])
    generated = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    text = results_document(results, command, generated)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = args.out.read_text() if args.out.exists() else ""
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(with_notes(text, existing))
    tmp.replace(args.out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
