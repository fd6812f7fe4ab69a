"""A warehouse written before pipeline/ was laid out by stage still reads and scores the same.

``tests/data/warehouse_before_layout/`` was written by commit f3f8e87 (the flat pipeline/
of December 2026): ``luigi --module jobs DetectTask --date 2026-01-03 --archive
sample/archive`` with tests/conf/tiny.cfg. Kept: the night's tables the detectors read
(flows, ingest_stats, ingest_errors, atoms, graph_edges), both detectors' artifacts and
the scores they gave that night.
"""
from __future__ import annotations

import datetime as dt
import shutil

import luigi
import pytest

import jobs
from pipeline.store import model_store, warehouse
from tests.pipeline_runs import REPO_ROOT, SAMPLE_ARCHIVE, table_rows

pytestmark = pytest.mark.slow
BEFORE_LAYOUT = REPO_ROOT / "tests" / "data" / "warehouse_before_layout"
NIGHT = "2026-01-03"


def test_a_warehouse_written_before_the_layout_moved_reads_and_rescores_identically(spark, tmp_path):
    root = shutil.copytree(BEFORE_LAYOUT, tmp_path / "warehouse")
    flows = warehouse.read_partition(spark, root, "flows", date=NIGHT).count()
    tasks, before = [], {}
    for model, task in (("a2gnn", jobs.ScoreA2GNNTask), ("rearview", jobs.ScoreRearViewTask)):
        (version,) = [manifest["version"] for manifest in model_store.list_versions(root, model)]
        partition = warehouse.partition_path(root, "flow_scores", date=NIGHT, model=model, model_version=version)
        before[model] = table_rows(partition.parent, partition.name, ["flow_id"])
        shutil.rmtree(partition)
        tasks.append(task(date=dt.date.fromisoformat(NIGHT), archive=str(SAMPLE_ARCHIVE), warehouse=str(root),
                          model_version=version))
    result = luigi.build(tasks, local_scheduler=True, detailed_summary=True, log_level="WARNING")
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    for model, rows in before.items():
        partition = warehouse.complete_partitions(root, "flow_scores", date=NIGHT, model=model)[0]
        after = table_rows(partition.parent, partition.name, ["flow_id"])
        assert len(rows) == flows and [{column: row[column] for column in rows[0]} for row in after] == rows
