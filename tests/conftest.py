"""Shared fixtures: one SparkSession for the whole test session, real data paths, and one
DetectTask run on the embedded sample archive that many tests read."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared dev archive (``../shared/data``); tests needing it skip when absent."""
    if not (SHARED_DATA / "archive").is_dir():
        pytest.skip(f"shared dev archive not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def spark_warehouse(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spark_warehouse")


@pytest.fixture(scope="session")
def spark(spark_warehouse):
    """One local SparkSession (Hive catalog on embedded Derby) shared by every test."""
    from pipeline.spark import get_spark

    session = get_spark(spark_warehouse, overrides={"spark.master": "local[2]"})
    yield session
    session.stop()


@dataclass(frozen=True)
class DetectRun:
    """The session's DetectTask run: ``root`` is its warehouse (tests/test_detect_task.py
    reruns stages there), ``pristine`` a copy taken as soon as it finished, for tests that
    start from its tables and trained models (copy it, never write into it)."""

    root: Path
    result: object  # luigi.execution_summary.LuigiRunResult
    pristine: Path


@pytest.fixture(scope="session")
def detect_run(spark, tmp_path_factory) -> DetectRun:
    """``DetectTask`` on the sample archive's third night (2026-01-03) in this process, with
    the tiny model sizes of tests/conf/tiny.cfg and the sample labels: both detectors trained
    on the two nights before, every stage of the night, the verdict, publication and report."""
    import datetime as dt

    import luigi
    from luigi.configuration.cfg_parser import LuigiConfigParser

    import jobs
    from tests.pipeline_runs import SAMPLE_ARCHIVE, SAMPLE_LABELS, TINY_CFG

    root = tmp_path_factory.mktemp("detect")
    luigi.configuration.get_config().set("ReportTask", "labels", str(SAMPLE_LABELS))
    LuigiConfigParser.add_config_path(str(TINY_CFG))
    LuigiConfigParser.reload()
    try:
        result = luigi.build([jobs.DetectTask(date=dt.date(2026, 1, 3), archive=str(SAMPLE_ARCHIVE),
                                              warehouse=str(root))],
                             local_scheduler=True, detailed_summary=True, log_level="WARNING")
    finally:
        LuigiConfigParser._config_paths.remove(str(TINY_CFG))
        LuigiConfigParser.reload()
    pristine = tmp_path_factory.mktemp("detect_pristine") / "warehouse"
    shutil.copytree(root, pristine)
    return DetectRun(root, result, pristine)


DETECT_RUN_MODULES = ("tests/test_detect_task.py", "tests/test_operations.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs two pytest-xdist workers (``-n 2 --dist loadfile``): each test module
    stays on one worker, so its module-scoped fixtures are built once, and the modules that
    read ``detect_run`` share one worker, so the session's DetectTask runs once. That group is
    the longest (about half the wall time), so it is handed out first: started last, it kept
    one worker busy for two minutes after the other had run out of work."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesSharingTheDetectRun(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "detect_run" if module in DETECT_RUN_MODULES else module

        def _assign_work_unit(self, node) -> None:
            if "detect_run" in self.workqueue:
                self.workqueue.move_to_end("detect_run", last=False)
            super()._assign_work_unit(node)

    return ModulesSharingTheDetectRun(config, log)
