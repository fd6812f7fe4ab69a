"""Graph stages as Luigi tasks on the embedded sample archive: the fan-in scope's history."""
from __future__ import annotations

import datetime as dt
import json

import luigi
import pytest
from pyspark.sql import functions as F

import jobs
from pipeline.graph import build as graph
from pipeline.graph.build import GraphConfig
from pipeline.store import warehouse
from tests.pipeline_runs import SAMPLE_ARCHIVE, settings

pytestmark = pytest.mark.slow
SERVICE = list(graph.SERVICE_COLUMNS)


@pytest.fixture(scope="module")
def scoped_fanin():
    """``[graph]`` with scoped fan-in (production's setting, stated here so the tests do not
    depend on conf/luigi.cfg)."""
    with settings("graph", fanin_edges="true", fanin_scope="no_training_fanin"):
        yield


def _night(task, root, day=2):
    return task(date=dt.date(2026, 1, day), train_days=1, archive=str(SAMPLE_ARCHIVE), warehouse=str(root))


@pytest.fixture(scope="module")
def graphs(spark, scoped_fanin, tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    tasks = [_night(jobs.PartitionTask, root, day) for day in (1, 2)]
    result = luigi.build(tasks, local_scheduler=True, detailed_summary=True, log_level="WARNING")
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    return root


def _fanin_services_linked(spark, root, day, edges=None):
    """(dst_ip, dst_port, protocol) of the night's flows that have a fan-in edge."""
    if edges is None:
        edges = warehouse.read_partition(spark, root, "graph_edges", date=day)
    edges = edges.where(F.col("relationship") == "fanin")
    ends = edges.select(F.col("src").alias("v")).unionByName(edges.select(F.col("dst").alias("v")))
    flows = warehouse.read_partition(spark, root, "flows", date=day)
    linked = flows.join(ends.select(F.expr("substring(v, 6)").alias("flow_id")).distinct(), "flow_id")
    return linked.select("dst_ip", F.coalesce(F.col("dst_port"), F.lit(-1)).alias("dst_port"),
                         F.coalesce(F.col("protocol").cast("int"), F.lit(-1)).alias("protocol"))


def test_the_history_is_the_fan_in_of_the_nights_training_window(spark, graphs):
    history = warehouse.read_partition(spark, graphs, "graph_fanin_services", date="2026-01-02")
    previous_night = warehouse.read_partition(spark, graphs, "flows", date="2026-01-01")
    expected = graph.fanin_services(previous_night, GraphConfig())
    assert sorted(map(tuple, history.collect())) == sorted(map(tuple, expected.collect()))
    assert history.count() > 0  # the sample's first night has fan-in (its resolver, multicast)


def test_a_night_gets_fan_in_edges_only_at_services_quiet_on_its_training_window(spark, graphs):
    day = "2026-01-02"
    history = warehouse.read_partition(spark, graphs, "graph_fanin_services", date=day)
    assert _fanin_services_linked(spark, graphs, day).join(history, SERVICE).count() == 0
    # ... where fan-in at every service would link flows at a service of the history
    stats = json.loads((graphs / "graph_stats" / f"date={day}" / "signature_stats.json").read_text())["stats"]
    flows = warehouse.read_partition(spark, graphs, "flows", date=day)
    _, unscoped = graph.build_graph(flows, GraphConfig(fanin_edges=True), stats)
    assert _fanin_services_linked(spark, graphs, day, unscoped).join(history, SERVICE).count() > 0
    # the first night is its own window: all its fan-in is "seen in training"
    assert _fanin_services_linked(spark, graphs, "2026-01-01").count() == 0


def _complete(root) -> dict[str, bool]:
    return {task.__name__: _night(task, root).complete()
            for task in (jobs.FaninHistoryTask, jobs.BuildGraphTask, jobs.PartitionTask)}


def test_a_night_built_under_other_settings_is_rebuilt_not_reused(graphs):
    everything = {"FaninHistoryTask": True, "BuildGraphTask": True, "PartitionTask": True}
    assert _complete(graphs) == everything
    with settings("graph", max_semantic_edges_per_flow="5"):  # the graph and so its atoms
        assert _complete(graphs) == {**everything, "BuildGraphTask": False, "PartitionTask": False}
    with settings("graph", fanin_window_s="2.0"):  # the fan-in history too
        assert _complete(graphs) == {key: False for key in everything}
    with settings("partition", resolution="0.5"):  # the atoms only
        assert _complete(graphs) == {**everything, "PartitionTask": False}
    with settings("graph", incidences_per_task="7"):  # how, not what: nothing to rebuild
        assert _complete(graphs) == everything
    assert _complete(graphs) == everything


def test_a_partition_without_a_build_record_counts_as_built_under_unknown_settings(graphs):
    atoms = warehouse.partition_path(graphs, "atoms", date="2026-01-02")
    record = atoms / warehouse.BUILD_RECORD
    saved = record.read_bytes()
    record.unlink()  # as written by code older than the record
    try:
        assert not _night(jobs.PartitionTask, graphs).complete()
    finally:
        record.write_bytes(saved)
    assert _night(jobs.PartitionTask, graphs).complete()
