"""Every finished pipeline task leaves its run time in the log (the stage timings of a night)."""
from __future__ import annotations

import datetime
import logging

import luigi

import jobs  # noqa: F401  (registers the tasks and their event handlers)
from jobs.ingest import ExtractFlowsTask


def test_a_finished_task_logs_its_run_time(caplog, tmp_path):
    task = ExtractFlowsTask(date=datetime.date(2026, 1, 3), archive=str(tmp_path), warehouse=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="luigi-interface"):
        task.trigger_event(luigi.Event.PROCESSING_TIME, task, 12.34)
    assert f"{task.task_id} ran in 12.3 s" in caplog.text
