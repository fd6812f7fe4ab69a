"""ReportTask: the night's evaluation summary and self-contained HTML report."""
from __future__ import annotations

import luigi

from jobs.targets import MarkerTarget
from jobs.verdict import JudgedNightTask


class ReportTask(JudgedNightTask):
    """``reports/date=D/<versions>/report.html`` + ``summary.json``; with ``--labels`` the
    report adds precision/recall/F1/ROC AUC per model and attack kind (evaluation only)."""

    labels = luigi.Parameter(config_path={"section": "pipeline", "name": "labels"},
                             description="labels.csv for evaluation ('' = none)")

    def requires(self):
        return self.scored_tasks()

    def report_dir(self):
        return self.warehouse_path / "reports" / f"date={self.day}" / self.versions_tag()

    def output(self):
        return MarkerTarget(str(self.report_dir() / "report.html"))

    def run(self):
        from pathlib import Path

        from pipeline.evaluation.night import evaluate_night
        from pipeline.report import write_report

        spark = self.spark()
        # Baselines and the header use the nights the scoring models were trained on (a
        # reused or pinned version's, not this night's window), all of them when two
        # versions were trained on different windows.
        train = sorted({d for task in self.score_tasks().values() for d in task.model_train_dates()})
        # the verdict is evaluated like a detector (its rows are in flow_scores, model = verdict)
        self.progress(10, f"evaluating {self.day} (labels: {self.labels or 'none'})")
        versions = {model: task.resolved_version() for model, task in self.scored_tasks().items()}
        summary = evaluate_night(spark, self.warehouse_path, self.day, train,
                                 Path(self.labels) if self.labels else None, sorted(versions),
                                 versions=versions)
        path = write_report(spark, self.warehouse_path, self.day, summary, self.report_dir())
        self.progress(100, f"report written to {path}")
