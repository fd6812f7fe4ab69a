"""Graph stages: signature statistics, the interaction graph, Leiden atoms."""
from __future__ import annotations

import json

import luigi

from jobs.config import TrainingWindowTask, config_as_dict, config_class, dataclass_of, training_dates
from jobs.ingest import ExtractFlowsTask
from jobs.targets import MarkerTarget, PartitionTarget
from pipeline.graph.build import GraphConfig
from pipeline.graph.partition import PartitionConfig

graph = config_class("graph", GraphConfig)
partition = config_class("partition", PartitionConfig)


class _WindowFlowsTask(TrainingWindowTask):
    """A statistic of the night's training window (never of the night itself unless no
    earlier night exists): requires the window's flows and reads them as one frame."""

    def requires(self):
        return [ExtractFlowsTask(date=d, **self.night()) for d in self._window_dates()]

    def _window_dates(self):
        import datetime as dt

        return [dt.date.fromisoformat(d) for d in training_dates(self.archive_path, self.date, self.train_days)]

    def window_flows(self, spark):
        """``(dates, flows DataFrame of every night in the window)``."""
        from pipeline.store import warehouse

        dates = [d.isoformat() for d in self._window_dates()]
        frames = [warehouse.read_partition(spark, self.warehouse_path, "flows", date=d) for d in dates]
        train = frames[0]
        for frame in frames[1:]:
            train = train.unionByName(frame)
        return dates, train


class SignatureStatsTask(_WindowFlowsTask):
    """Normalisation of packet-length signatures, fitted on the night's training window."""

    def output(self):
        return MarkerTarget(str(self.warehouse_path / "graph_stats" / f"date={self.day}" / "signature_stats.json"))

    def run(self):
        from pipeline.graph.signatures import fit_signature_normalisation

        dates, train = self.window_flows(self.spark())
        stats = fit_signature_normalisation(train)
        with self.output().open("w") as handle:
            json.dump({"train_dates": dates, "stats": stats}, handle, indent=2, default=float)


class FaninHistoryTask(_WindowFlowsTask):
    """Services that had fan-in on the night's training window (``graph_fanin_services``,
    partition = this night): with ``[graph] fanin_scope = no_training_fanin`` the night's
    graph adds fan-in edges only at the other services."""

    def build(self) -> dict:
        """What the history depends on besides the window's flows: the fan-in window."""
        return {"fanin_window_s": dataclass_of(graph()).fanin_window_s}

    def output(self):
        return PartitionTarget(self.warehouse_path, "graph_fanin_services", build=self.build(), date=self.day)

    def run(self):
        from pipeline.graph.build import fanin_services
        from pipeline.store import warehouse

        dates, train = self.window_flows(self.spark())
        services = fanin_services(train, dataclass_of(graph()))
        warehouse.write_spark_partition(services, self.warehouse_path, "graph_fanin_services",
                                        build=self.build(), date=self.day)
        self.progress(100, f"fan-in services of {self.day}'s training window {dates}: "
                           f"{self.output().path}")


def graph_build(graph_config: GraphConfig) -> dict:
    """The ``[graph]`` settings a night's graph is built with (execution-only fields left
    out, fan-in's moot when it is off): recorded in its partitions, which are rebuilt when
    the settings change."""
    return config_as_dict(graph_config.effective())


def atoms_build(graph_config: GraphConfig, partition_config: PartitionConfig) -> dict:
    """What a night's atoms depend on: the graph's settings and ``[partition]``'s."""
    return {**graph_build(graph_config), **config_as_dict(partition_config)}


class BuildGraphTask(TrainingWindowTask):
    """Hosts and flows with physical and semantic edges, in GraphFrames' schema."""

    def requires(self):
        required = {
            "flows": ExtractFlowsTask(date=self.date, **self.night()),
            "stats": SignatureStatsTask(date=self.date, train_days=self.train_days, **self.night()),
        }
        if dataclass_of(graph()).scoped_fanin:
            required["fanin"] = FaninHistoryTask(date=self.date, train_days=self.train_days, **self.night())
        return required

    def output(self):
        build = graph_build(dataclass_of(graph()))
        return {
            table: PartitionTarget(self.warehouse_path, table, build=build, date=self.day)
            for table in ("graph_vertices", "graph_edges")
        }

    def run(self):
        from pipeline.graph.build import build_graph
        from pipeline.store import warehouse

        spark = self.spark()
        flows_df = warehouse.read_partition(spark, self.warehouse_path, "flows", date=self.day)
        with self.input()["stats"].open() as handle:
            stats = json.load(handle)["stats"]
        config = dataclass_of(graph())
        trained_fanin = (warehouse.read_partition(spark, self.warehouse_path, "graph_fanin_services", date=self.day)
                         if config.scoped_fanin else None)
        self.progress(10, f"building the interaction graph of {self.day}")
        vertices, edges = build_graph(flows_df, config, stats, trained_fanin)
        edges = edges.persist()
        for table, frame in (("graph_vertices", vertices), ("graph_edges", edges)):
            warehouse.write_spark_partition(frame, self.warehouse_path, table, build=graph_build(config),
                                            date=self.day)
        counts = {r["relationship"]: r["count"] for r in edges.groupBy("relationship").count().collect()}
        edges.unpersist()
        self.progress(100, f"graph of {self.day}: edges by relationship {counts}")


class PartitionTask(TrainingWindowTask):
    """Leiden atoms per weakly connected component of the flow graph."""

    def requires(self):
        return BuildGraphTask(date=self.date, train_days=self.train_days, **self.night())

    def build(self) -> dict:
        return atoms_build(dataclass_of(graph()), dataclass_of(partition()))

    def output(self):
        return PartitionTarget(self.warehouse_path, "atoms", build=self.build(), date=self.day)

    def run(self):
        from pyspark.sql import functions as F

        from pipeline.graph.partition import partition_flows
        from pipeline.store import warehouse

        spark = self.spark()
        vertices = warehouse.read_partition(spark, self.warehouse_path, "graph_vertices", date=self.day)
        edges = warehouse.read_partition(spark, self.warehouse_path, "graph_edges", date=self.day)
        flows = warehouse.read_partition(spark, self.warehouse_path, "flows", date=self.day)  # times, for slices
        self.progress(10, f"Leiden partitioning of {self.day}")
        atoms = partition_flows(spark, vertices, edges, dataclass_of(partition()), flows)
        path = warehouse.write_spark_partition(atoms, self.warehouse_path, "atoms", build=self.build(),
                                               date=self.day)
        written = warehouse.read_partition(spark, self.warehouse_path, "atoms", date=self.day).agg(
            F.countDistinct("atom_id").alias("atoms"), F.count("*").alias("flows")).first()
        self.progress(100, f"atoms of {self.day}: {written['atoms']} atoms over {written['flows']} flows -> {path}")
