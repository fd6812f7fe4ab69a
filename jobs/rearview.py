"""TrainRearViewTask and ScoreRearViewTask: two-stage screening + refinement on flows."""
from __future__ import annotations

import datetime as dt

from jobs.config import config_as_dict, config_class, dataclass_of
from jobs.ingest import ExtractFlowsTask
from jobs.modeling import ScoreModelTask, TrainModelTask
from pipeline.detectors.rearview import RearViewConfig

rearview = config_class("rearview", RearViewConfig)


class TrainRearViewTask(TrainModelTask):
    model_name = "rearview"

    def requires(self):
        return [ExtractFlowsTask(date=dt.date.fromisoformat(d), **self.night()) for d in self.train_dates()]

    def config_dict(self) -> dict:
        return config_as_dict(dataclass_of(rearview()))

    def train(self, spark, dates, out_dir):
        from pyspark.sql import functions as F

        from pipeline.detectors.rearview import train_rearview
        from pipeline.store import warehouse

        frames = [
            warehouse.read_partition(spark, self.warehouse_path, "flows", date=d).withColumn("date", F.lit(d))
            for d in dates
        ]
        train = frames[0]
        for frame in frames[1:]:
            train = train.unionByName(frame)
        return train_rearview(spark, train, dataclass_of(rearview()), out_dir)


class ScoreRearViewTask(ScoreModelTask):
    model_name = "rearview"
    train_task = TrainRearViewTask

    def requires(self):
        required = {"flows": ExtractFlowsTask(date=self.date, **self.night())}
        if not self.model_version:
            required["model"] = self.trainer()
        return required

    def run(self):
        from pipeline.detectors.rearview import score_rearview
        from pipeline.store import warehouse

        spark = self.spark()
        flows_df = warehouse.read_partition(spark, self.warehouse_path, "flows", date=self.day)
        self.progress(10, f"scoring {self.day} with rearview {self.resolved_version()}")
        self.write_scores(score_rearview(spark, flows_df, self.artifact_dir(), self.resolved_version()))
