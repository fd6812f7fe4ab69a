"""ScoreVerdictTask: both detectors' evidence + relationship history -> one calibrated
verdict per flow (``flow_scores``, ``model = verdict``) and the night's ``incidents``."""
from __future__ import annotations

import datetime as dt

import luigi

from jobs.config import config_as_dict, config_class, dataclass_of
from jobs.relationships import RelationshipsTask, history_dates, relationships
from jobs.scoring import SCORE_TASKS, ScoredNightTask
from jobs.targets import PartitionTarget
from pipeline.store import model_store
from pipeline.verdict import VerdictConfig

verdict = config_class("verdict", VerdictConfig)


class ScoreVerdictTask(ScoredNightTask):
    """The verdict of one night, from the detectors in ``model_versions`` (the others'
    evidence is stated as lacking, never scored as benign).

    Calibration (``pipeline.verdict``): every piece of evidence is a tail probability on
    benign flows of the *validation nights* (the nights the detectors' versions were
    trained on, each with its own history as of its night, scored by the same versions);
    the alarm threshold follows ``[verdict] threshold_rule`` (by default the night's own
    bulk sets it, ``pipeline.verdict.combine``). The version names the detectors' versions, the
    ``[verdict]`` settings, the history window and the validation nights, so a pinned
    reprocessing run gives identical rows, and another configuration writes another
    partition instead of overwriting this one.
    """

    def score_versions(self) -> dict[str, str]:
        return {model: task.resolved_version() for model, task in self.score_tasks().items()}

    def validation_dates(self) -> list[str]:
        """Training nights of the scoring versions (manifest for a pinned one), before the night."""
        dates: set[str] = set()
        for task in self.score_tasks().values():
            dates |= set(task.model_train_dates() if task.model_version else task.trainer().train_dates())
        return sorted(d for d in dates if d < self.day)

    def history(self, day: str) -> list[str]:
        return history_dates(self.archive_path, day, relationships().history_days)

    def config_dict(self) -> dict:
        return {"inputs": self.score_versions(), **config_as_dict(dataclass_of(verdict())),
                "history_days": relationships().history_days}

    def version(self) -> str:
        return model_store.model_version("verdict", self.validation_dates() or [self.day], self.config_dict())

    def resolved_version(self) -> str:
        return self.version()

    def requires(self):
        nights = {self.day, *self.history(self.day)}
        for day in self.validation_dates():
            nights |= {day, *self.history(day)}
        return {"scores": self.score_tasks(),
                "relationships": [RelationshipsTask(date=dt.date.fromisoformat(d), **self.night())
                                  for d in sorted(nights)]}

    def output(self):
        return PartitionTarget(self.warehouse_path, "flow_scores", date=self.day, model="verdict",
                               model_version=self.version())

    def validation_score_tasks(self) -> list:
        """The detectors' scores of each validation night by the same versions."""
        return [SCORE_TASKS[model](date=dt.date.fromisoformat(day), train_days=self.train_days,
                                   model_version=version, **self.night())
                for day in self.validation_dates() for model, version in self.score_versions().items()]

    def run(self):
        from pipeline.verdict import fit_reference, score_night
        from pipeline.verdict.tables import a2gnn_calibration, night_frame, rearview_calibration, write_verdict

        yield self.validation_score_tasks()  # dynamic: the versions exist only once trained
        spark, config, versions = self.spark(), dataclass_of(verdict()), self.score_versions()
        tasks = self.score_tasks()
        calibration = {
            "a2gnn": a2gnn_calibration(tasks["a2gnn"].artifact_dir()) if "a2gnn" in tasks else None,
            "rearview": rearview_calibration(tasks["rearview"].artifact_dir()) if "rearview" in tasks else None,
        }
        validation, version, history = self.validation_dates(), self.version(), self.history(self.day)
        self.progress(10, f"verdict {version}: calibrating on {validation}")
        frames = [night_frame(spark, self.warehouse_path, day, self.history(day), versions) for day in validation]
        reference = fit_reference(frames, calibration["a2gnn"], calibration["rearview"], config, tuple(versions))
        night = night_frame(spark, self.warehouse_path, self.day, history, versions)
        self.progress(60, f"verdict of {self.day}: scoring {len(night)} flows")
        scores, incidents = score_night(night, reference, config, tuple(versions), self.day, version)
        write_verdict(spark, self.warehouse_path, self.day, version, scores, incidents, {
            **self.config_dict(), "validation_dates": validation, "history_dates": history,
            "calibration": reference.summary()})
        threshold = float(scores["threshold"].iloc[0]) if len(scores) else reference.threshold
        self.progress(100, f"verdict {version} of {self.day}: {int(scores['is_anomaly'].sum())} of "
                           f"{len(scores)} flows flagged above {threshold:.2f}, {len(incidents)} incidents")


class JudgedNightTask(ScoredNightTask):
    """A task downstream of the verdict: it needs the night scored by every detector in
    ``model_versions`` and judged by the verdict built on them."""

    def verdict_task(self) -> luigi.Task:
        """The verdict of the night from these detectors' scores."""
        return ScoreVerdictTask(date=self.date, train_days=self.train_days,
                                model_versions=self.model_versions, **self.night())

    def scored_tasks(self) -> dict[str, luigi.Task]:
        """Every scorer of the night: the detectors and the verdict built on them."""
        return {**self.score_tasks(), "verdict": self.verdict_task()}

    def versions_tag(self) -> str:
        """``a2gnn@<version>+rearview@<version>+verdict@<version>``: names outputs per set of versions."""
        return "+".join(f"{m}@{t.resolved_version()}" for m, t in self.scored_tasks().items())
