"""``docs/results.md``: both detectors and the baselines on a labelled archive, one command.

``python -m pipeline.results --archive ../shared/data/archive --labels ../shared/data/labels.csv
--warehouse .bench/dev-warehouse --out docs/results.md`` runs DetectTask (production
configuration from ``conf/luigi.cfg``) on the archive's last night, trained on the nights
before it, then writes the evaluation table. Labels are read by the evaluation only.

Besides the detectors' own decisions, the table shows RearView's first stage alone
(``screening_probability`` above the configured alarm level) so the refinement's
contribution is visible.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def screening_only_entry(spark, warehouse: Path, date: str, version: str, labels: Path, alarm_p: float) -> dict:
    """RearView stage 1 alone: score = screening probability, flagged when p > ``alarm_p``."""
    from pipeline import metrics
    from pipeline.evaluate import read_flows
    from pipeline.labels import BENIGN, label_flows, read_labels
    from pipeline.warehouse import read_partition

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--date", default=None, help="scored night (default: the archive's last)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import luigi

    import jobs
    from jobs.rearview import rearview
    from jobs.config import dataclass_of
    from pipeline.evaluate import results_markdown

    nights = sorted(p.name for p in args.archive.iterdir() if p.is_dir())
    date = dt.date.fromisoformat(args.date or nights[-1])
    luigi.configuration.get_config().set("ReportTask", "labels", str(args.labels.resolve()))
    task = jobs.DetectTask(date=date, archive=str(args.archive.resolve()), warehouse=str(args.warehouse.resolve()))
    if not luigi.build([task], local_scheduler=True, log_level="WARNING"):
        log.error("DetectTask failed; see the log above")
        return 1
    report_dir = Path(task.input()["report"].path).parent
    summary = json.loads((report_dir / "summary.json").read_text())
    from pipeline.spark import get_spark

    spark = get_spark(args.warehouse.resolve())
    rearview_version = summary["detectors"].get("rearview", {}).get("model_version")
    if rearview_version:
        alarm = dataclass_of(rearview()).screening_alarm_p
        entry = screening_only_entry(spark, args.warehouse.resolve(), date.isoformat(), rearview_version,
                                     args.labels, alarm)
        summary["detectors"] = {"rearview (screening only)": entry, **summary["detectors"]}
    text = "\n".join([
        "# Detection quality on the shared dev archive", "",
        f"Regenerate with `make results` (= `python -m pipeline.results --archive {args.archive} "
        f"--labels {args.labels} --warehouse {args.warehouse}`). Generated "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Production configuration "
        "(`conf/luigi.cfg`); every threshold comes from the training nights, labels are used "
        "only here. Flow-level metrics; a flow is an attack flow when a row of the labels file "
        "matches it (`pipeline/labels.py`).", "",
        "Model versions: " + ", ".join(f"{m} `{e.get('model_version')}`" for m, e in summary["detectors"].items()
                                       if e.get("model_version")) + ".", "",
        results_markdown(summary),
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = args.out.read_text() if args.out.exists() else ""
    notes = existing.split("<!-- notes -->", 1)[1] if "<!-- notes -->" in existing else "\n"
    args.out.write_text(text.rstrip() + "\n\n<!-- notes -->" + notes)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
