"""Evaluate one night from the command line: the summary table and the report.

``python -m pipeline.evaluate --warehouse W --date D --train-dates D1,D2
[--labels labels.csv] [--models a2gnn,rearview] --out DIR`` writes ``DIR/summary.json``,
``DIR/results.md`` (the table) and ``DIR/report.html`` (``pipeline.report``).

The evaluation itself is ``pipeline.evaluation.night``; ``jobs.report.ReportTask`` does the
same inside the pipeline.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline.evaluation.night import DEFAULT_MODELS, EvaluationConfig, evaluate_night, results_markdown

log = logging.getLogger(__name__)


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--date", required=True, help="the scored night, YYYY-MM-DD")
    parser.add_argument("--train-dates", required=True, help="comma-separated training nights")
    parser.add_argument("--labels", type=Path, default=None, help="labels.csv (optional)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=EvaluationConfig.seed)
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipeline.report import write_report
    from pipeline.spark import get_spark

    spark = get_spark(args.warehouse)
    models = [m for m in args.models.split(",") if m]
    train_dates = [d for d in args.train_dates.split(",") if d]
    summary = evaluate_night(
        spark, args.warehouse, args.date, train_dates, args.labels, models, EvaluationConfig(seed=args.seed)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    _write_text_atomically(args.out / "results.md", results_markdown(summary))
    if args.no_report:
        _write_text_atomically(args.out / "summary.json", json.dumps(summary, indent=1))
    else:
        html = write_report(spark, args.warehouse, args.date, summary, args.out)
        log.info("report: %s", html)
    sys.stdout.write(results_markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
