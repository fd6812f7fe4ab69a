"""DetectTask: the whole night, and BackfillTask: a date range of nights."""
from __future__ import annotations

import datetime as dt
import logging

import luigi

from jobs.config import TrainingWindowTask
from jobs.modeling import reusable_version
from jobs.publish import PublishTablesTask
from jobs.report import ReportTask
from jobs.scoring import SCORE_TASKS, parse_models

log = logging.getLogger("luigi-interface")


def parse_pins(text: str, models: list[str]) -> dict[str, str]:
    """``--model-version`` as ``V`` (one model) or ``a2gnn=V1,rearview=V2``."""
    if not text:
        return {}
    if "=" not in text:
        if len(models) != 1:
            raise ValueError("with several models, pin versions as a2gnn=V1,rearview=V2")
        return {models[0]: text}
    pins = dict(part.split("=", 1) for part in text.split(",") if part)
    unknown = sorted(set(pins) - set(models))
    if unknown:
        raise ValueError(f"pinned versions for models not run: {unknown}")
    return pins


class DetectTask(TrainingWindowTask):
    """Extract, graph, partition, train or reuse, score, publish, report: one night.

    Model policy per detector: a pinned ``--model-version`` is used as is (reprocessing);
    otherwise the newest version trained before this night with the current
    configuration is reused while its last training night is at most
    ``retrain_after_days`` old; otherwise a new version is trained on the night's window.
    """

    models = luigi.Parameter(config_path={"section": "pipeline", "name": "models"},
                             description="comma-separated: a2gnn, rearview")
    model_version = luigi.Parameter(default="", description="pin: V (one model) or a2gnn=V1,rearview=V2")
    retrain_after_days = luigi.IntParameter(config_path={"section": "pipeline", "name": "retrain_after_days"})

    def model_versions(self) -> dict[str, str]:
        models = parse_models(self.models)
        pins = parse_pins(self.model_version, models)
        versions = {}
        for model in models:
            if model in pins:
                versions[model] = pins[model]
                continue
            trainer = SCORE_TASKS[model].train_task(date=self.date, train_days=self.train_days, **self.night())
            reuse = reusable_version(self.warehouse_path, model, self.date, trainer.config_dict(),
                                     self.retrain_after_days)
            versions[model] = reuse or ""
        return versions

    def requires(self):
        if not (self.archive_path / self.day).is_dir():
            raise FileNotFoundError(f"no night {self.day} in archive {self.archive_path}")
        common = dict(date=self.date, train_days=self.train_days, model_versions=self.model_versions(),
                      **self.night())
        return {"publish": PublishTablesTask(**common), "report": ReportTask(**common)}

    def complete(self):
        try:
            return all(task.complete() for task in luigi.task.flatten(self.requires()))
        except FileNotFoundError:
            return False

    def run(self):
        report = self.input()["report"].path
        log.info("DetectTask %s done: tables in %s (database published), report %s",
                 self.day, self.warehouse_path, report)


class BackfillTask(luigi.WrapperTask):
    """DetectTask for every night in ``[start, stop)`` that exists in the archive.

    ``luigi --module jobs BackfillTask --start 2026-01-01 --stop 2026-02-01``; add
    ``--model-version`` to reprocess with a pinned model (forensics). Nights missing from
    the archive are skipped and logged; existing outputs are not recomputed.
    """

    start = luigi.DateParameter()
    stop = luigi.DateParameter()
    archive = luigi.Parameter(config_path={"section": "pipeline", "name": "archive"})
    warehouse = luigi.Parameter(config_path={"section": "pipeline", "name": "warehouse"})
    models = luigi.Parameter(config_path={"section": "pipeline", "name": "models"})
    model_version = luigi.Parameter(default="")

    def requires(self):
        from pathlib import Path

        day, tasks = self.start, []
        while day < self.stop:
            if (Path(self.archive) / day.isoformat()).is_dir():
                tasks.append(DetectTask(date=day, archive=self.archive, warehouse=self.warehouse,
                                        models=self.models, model_version=self.model_version))
            else:
                log.info("backfill: no night %s in %s, skipped", day, self.archive)
            day += dt.timedelta(days=1)
        return tasks
