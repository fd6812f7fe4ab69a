"""TrainA2GNNTask and ScoreA2GNNTask: Atomic-Anchor on the nights' atoms."""
from __future__ import annotations

from pathlib import Path

from jobs.config import config_class, dataclass_of
from jobs.graph import PartitionTask, graph, partition
from jobs.ingest import ExtractFlowsTask
from jobs.modeling import ScoreModelTask, TrainModelTask, config_as_dict
from models.a2gnn_config import A2GNNConfig

a2gnn = config_class("a2gnn", A2GNNConfig)


def _night_frames(spark, warehouse: Path, day: str) -> dict:
    from pipeline import warehouse as wh

    return {
        "date": day,
        "flows": wh.read_partition(spark, warehouse, "flows", date=day),
        "atoms": wh.read_partition(spark, warehouse, "atoms", date=day),
        "edges": wh.read_partition(spark, warehouse, "graph_edges", date=day),
    }


class TrainA2GNNTask(TrainModelTask):
    model_name = "a2gnn"

    def requires(self):
        import datetime as dt

        return [
            PartitionTask(date=dt.date.fromisoformat(d), train_days=self.train_days, **self.night())
            for d in self.train_dates()
        ]

    def config_dict(self) -> dict:
        return config_as_dict(dataclass_of(a2gnn()), dataclass_of(graph()), dataclass_of(partition()))

    def train(self, spark, dates, out_dir):
        from pipeline.a2gnn_stage import train_a2gnn

        nights = [_night_frames(spark, self.warehouse_path, d) for d in dates]
        return train_a2gnn(spark, nights, dataclass_of(a2gnn()), out_dir)


class ScoreA2GNNTask(ScoreModelTask):
    model_name = "a2gnn"
    train_task = TrainA2GNNTask

    def requires(self):
        required = {
            "flows": ExtractFlowsTask(date=self.date, **self.night()),
            "atoms": PartitionTask(date=self.date, train_days=self.train_days, **self.night()),
        }
        if not self.model_version:
            required["model"] = self.trainer()
        return required

    def run(self):
        from pipeline.a2gnn_stage import score_a2gnn

        spark = self.spark()
        frames = _night_frames(spark, self.warehouse_path, self.day)
        self.progress(10, f"scoring {self.day} with a2gnn {self.resolved_version()}")
        scores = score_a2gnn(spark, frames["flows"], frames["atoms"], frames["edges"],
                             self.artifact_dir(), self.resolved_version())
        self.write_scores(scores)
