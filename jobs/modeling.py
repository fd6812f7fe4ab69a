"""What train and score tasks of both detectors share: versions, reuse policy, outputs."""
from __future__ import annotations

import abc
import datetime as dt
import logging
from pathlib import Path

import luigi

from jobs.config import TrainingWindowTask, training_dates
from jobs.targets import ArtifactTarget, PartitionTarget
from pipeline.store import model_store

log = logging.getLogger("luigi-interface")


def reusable_version(
    warehouse: Path, model: str, date: dt.date, config: dict, retrain_after_days: int
) -> str | None:
    """The newest version trained on nights before ``date`` with this ``config``, when its
    last training night is at most ``retrain_after_days`` before ``date``; else ``None``.

    Ages are counted in nights of data, not wall-clock time, so a backfill makes the same
    decision whenever it runs. Models trained on later nights are never used for an
    earlier night.
    """
    candidates = [
        m for m in model_store.list_versions(warehouse, model)
        if m.get("config") == config and max(m["train_dates"]) < date.isoformat()
    ]
    if not candidates:
        return None
    newest = max(candidates, key=lambda m: (max(m["train_dates"]), m["created_at"]))
    age = (date - dt.date.fromisoformat(max(newest["train_dates"]))).days
    if age > retrain_after_days:
        log.info("%s model %s is %d nights old (> %d): retraining", model, newest["version"], age, retrain_after_days)
        return None
    return newest["version"]


class TrainModelTask(TrainingWindowTask):
    """Train one detector on the training window of ``date``; output is a model version."""

    model_name: str = ""

    @abc.abstractmethod
    def config_dict(self) -> dict:
        """Everything that shapes the model (hashed into its version)."""

    @abc.abstractmethod
    def train(self, spark, dates: list[str], out_dir: Path) -> dict:
        """Train on ``dates`` and write the artifact files into ``out_dir``; return metrics."""

    def train_dates(self) -> list[str]:
        return training_dates(self.archive_path, self.date, self.train_days)

    def version(self) -> str:
        return model_store.model_version(self.model_name, self.train_dates(), self.config_dict())

    def output(self):
        return ArtifactTarget(self.warehouse_path, self.model_name, self.version())

    def run(self):
        dates = self.train_dates()
        self.progress(5, f"training {self.model_name} {self.version()} on {dates}")
        path = model_store.write_artifact(
            self.warehouse_path, self.model_name, self.version(),
            lambda out_dir: self.train(self.spark(), dates, out_dir),
            manifest_extra={"train_dates": dates, "config": self.config_dict()},
        )
        self.progress(100, f"{self.model_name} model written to {path}")


class ScoreModelTask(TrainingWindowTask):
    """Score one night with one detector version; ``model_version`` empty = train for it."""

    model_version = luigi.Parameter(default="", description="pinned model version ('' = train on the window)")
    model_name: str = ""
    train_task: type = TrainModelTask

    def trainer(self) -> TrainModelTask:
        return self.train_task(date=self.date, train_days=self.train_days, **self.night())

    def resolved_version(self) -> str:
        return self.model_version or self.trainer().version()

    def artifact_dir(self) -> Path:
        return model_store.require_version(self.warehouse_path, self.model_name, self.resolved_version())

    def model_train_dates(self) -> list[str]:
        """The nights the resolved version was trained on, from its manifest.

        Not this night's training window: a reused or pinned model was trained on an
        earlier window (or, in fully unsupervised mode, on its own night). Needs the
        artifact to exist.
        """
        manifest = model_store.load_json(self.artifact_dir() / model_store.MANIFEST)
        return list(manifest["train_dates"])

    def output(self):
        return PartitionTarget(
            self.warehouse_path, "flow_scores",
            date=self.day, model=self.model_name, model_version=self.resolved_version(),
        )

    def write_scores(self, scores_df) -> None:
        from pipeline.store import warehouse

        target = self.output()
        warehouse.write_spark_partition(
            scores_df, self.warehouse_path, "flow_scores",
            date=self.day, model=self.model_name, model_version=self.resolved_version(),
        )
        written = warehouse.read_partition(
            self.spark(), self.warehouse_path, "flow_scores",
            date=self.day, model=self.model_name, model_version=self.resolved_version(),
        )
        flagged = written.filter("is_anomaly").count()
        self.progress(100, f"{self.model_name} {self.resolved_version()}: {written.count()} flows scored, "
                           f"{flagged} anomalous -> {target.path}")
