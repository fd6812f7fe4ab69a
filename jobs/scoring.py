"""Which scoring task serves which detector, and the mixin for tasks downstream of scores
(``jobs.verdict.JudgedNightTask`` for those downstream of the verdict too)."""
from __future__ import annotations

import luigi

from jobs.a2gnn import ScoreA2GNNTask
from jobs.config import TrainingWindowTask
from jobs.rearview import ScoreRearViewTask

SCORE_TASKS = {"a2gnn": ScoreA2GNNTask, "rearview": ScoreRearViewTask}


def parse_models(text: str) -> list[str]:
    """``"a2gnn,rearview"`` -> ``["a2gnn", "rearview"]``; ``ValueError`` naming unknown ones."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(models) - set(SCORE_TASKS))
    if unknown or not models:
        raise ValueError(f"unknown or no models {unknown or text!r}; choose from {sorted(SCORE_TASKS)}")
    return models


class ScoredNightTask(TrainingWindowTask):
    """A task that needs the night scored by ``model_versions`` (model -> version, '' = train)."""

    model_versions = luigi.DictParameter(description='e.g. {"a2gnn": "", "rearview": "2026-01-02-ab12cd34ef"}')

    def score_tasks(self) -> dict[str, luigi.Task]:
        return {
            model: SCORE_TASKS[model](date=self.date, train_days=self.train_days,
                                      model_version=version, **self.night())
            for model, version in sorted(self.model_versions.items())
        }
