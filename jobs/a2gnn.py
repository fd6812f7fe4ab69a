"""TrainA2GNNTask and ScoreA2GNNTask: Atomic-Anchor on the nights' atoms."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from jobs.config import config_as_dict, config_class, dataclass_of
from jobs.graph import PartitionTask, atoms_build, graph, partition
from jobs.ingest import ExtractFlowsTask
from jobs.modeling import ScoreModelTask, TrainModelTask
from models.a2gnn_config import A2GNNConfig
from pipeline.graph.build import GraphConfig
from pipeline.graph.partition import PartitionConfig
from pipeline.store import model_store

a2gnn = config_class("a2gnn", A2GNNConfig)


def _night_frames(spark, warehouse: Path, day: str) -> dict:
    from pipeline.store import warehouse as wh

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
        from pipeline.detectors.a2gnn import train_a2gnn

        nights = [_night_frames(spark, self.warehouse_path, d) for d in dates]
        return train_a2gnn(spark, nights, dataclass_of(a2gnn()), out_dir)


class ScoreA2GNNTask(ScoreModelTask):
    model_name = "a2gnn"
    train_task = TrainA2GNNTask

    def requires(self):
        if self.model_version:
            self.check_graph_settings()
        required = {
            "flows": ExtractFlowsTask(date=self.date, **self.night()),
            "atoms": PartitionTask(date=self.date, train_days=self.train_days, **self.night()),
        }
        if not self.model_version:
            required["model"] = self.trainer()
        return required

    def check_graph_settings(self) -> None:
        """A pinned version scores atoms built with today's ``[graph]`` and ``[partition]``
        settings; when the version was trained on atoms built with others its scores would
        not be the ones it gave then. Refused (before any atom is rebuilt) with the
        differences: the version's settings and today's are compared as the atoms' build
        records (``jobs.graph.atoms_build``).

        A setting missing from an older manifest is taken at its dataclass default: a
        field is added with the default that keeps the earlier behaviour.
        """
        manifest = model_store.load_json(self.artifact_dir() / model_store.MANIFEST)
        trained = manifest.get("config", {})

        def recorded(kind):
            known = {f.name for f in dataclasses.fields(kind)}
            return kind(**{k: v for k, v in trained.get(kind.__name__, {}).items() if k in known})

        then = atoms_build(recorded(GraphConfig), recorded(PartitionConfig))
        now = atoms_build(dataclass_of(graph()), dataclass_of(partition()))
        differences = [f"{name}.{key}: trained {then[name][key]!r}, now {value!r}"
                       for name, fields in now.items() for key, value in fields.items()
                       if then[name][key] != value]
        if differences:
            raise ValueError(
                f"a2gnn {self.model_version} was trained on atoms built with other settings than "
                f"today's conf ({'; '.join(differences)}); score it with those settings (e.g. "
                f"--graph-<field> / --partition-<field>, or a LUIGI_CONFIG_PATH file): the night's graph "
                f"and atoms are then rebuilt with them")

    def run(self):
        from pipeline.detectors.a2gnn import score_a2gnn

        spark = self.spark()
        frames = _night_frames(spark, self.warehouse_path, self.day)
        self.progress(10, f"scoring {self.day} with a2gnn {self.resolved_version()}")
        scores = score_a2gnn(spark, frames["flows"], frames["atoms"], frames["edges"],
                             self.artifact_dir(), self.resolved_version())
        self.write_scores(scores)
