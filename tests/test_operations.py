"""Operating the pipeline as data engineers do: real luigid, real kills, real Spark master.

Each test runs ``luigi --module jobs DetectTask`` as a separate process (its own JVM and
metastore) on the third sample night, with the tiny model sizes of tests/conf/tiny.cfg. Each
starts from a copy of the session's DetectTask warehouse (tests/conftest.py ``detect_run``)
without that night's outputs: it redoes every stage of the night, with the models already
trained on the nights before, and must give the tables that in-process run gave.

The night a data engineer schedules, through a central ``luigid`` onto a Spark standalone
master, is one run (``cluster_run``) that both the scheduler test and the cluster test read:
every full run of the night costs about a minute. That run also re-extracts the second
night, whose 1.5 MB capture it reads as byte ranges of 256 KiB on the cluster's executors.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline.store import warehouse
from tests.pipeline_runs import (
    REPO_ROOT, SAMPLE_ARCHIVE, TINY_CFG, VENV_BIN, free_port, luigi_command, luigi_env, run_luigi,
    table_rows, without_night,
)

pytestmark = pytest.mark.slow
NIGHT = "2026-01-03"
SPLIT_NIGHT = "2026-01-02"
"""An uncompressed night of the sample (the third is gzip, which cannot be split)."""
SPLIT_BYTES = 256 * 1024
TABLE_KEYS = {
    "flows": ["flow_id"], "ingest_stats": ["capture_file"], "atoms": ["flow_id"],
    "graph_edges": ["src", "dst", "relationship"], "flow_scores": ["model", "flow_id"],
    "graph_fanin_services": ["dst_ip", "dst_port", "protocol"],
}


def _detect_args(warehouse_root: Path, *extra: str) -> list[str]:
    # --retrain-after-days 0: the night takes its models from its training tasks (complete in
    # the copied warehouse), as a night that trains does, instead of reusing them by age
    return ["--date", NIGHT, "--archive", str(SAMPLE_ARCHIVE), "--warehouse", str(warehouse_root),
            "--retrain-after-days", "0", *extra]


def _wait_for_port(port: int, timeout_s: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@pytest.fixture(scope="module")
def luigid(tmp_path_factory):
    """A real central scheduler on a loopback port."""
    state = tmp_path_factory.mktemp("luigid")
    port = free_port()
    process = subprocess.Popen(
        [str(VENV_BIN / "luigid"), "--address", "127.0.0.1", "--port", str(port),
         "--logdir", str(state), "--state-path", str(state / "state.pickle")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait_for_port(port)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def reference_tables(detect_run):
    """The third night's tables of the session's uninterrupted in-process DetectTask: the
    tables every command-line run here must equal."""
    return _tables(detect_run.pristine)


@pytest.fixture(scope="module")
def cluster_run(luigid, detect_run, tmp_path_factory):
    """DetectTask as a nightly schedule runs it: scheduled by ``luigid``, on a standalone
    Spark master with one worker on loopback. ``(root, result, master_url)``."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    spark_class = Path(__import__("pyspark").__file__).parent / "bin" / "spark-class"
    master_port, env = free_port(), dict(os.environ, SPARK_LOCAL_IP="127.0.0.1",
                                         PYSPARK_PYTHON=str(VENV_BIN / "python"))
    processes = [subprocess.Popen(
        [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(master_port), "--webui-port", str(free_port())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        _wait_for_port(master_port)
        processes.append(subprocess.Popen(
            [str(spark_class), "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{master_port}",
             "--host", "127.0.0.1", "--cores", "2", "--memory", "3g", "--webui-port", str(free_port()),
             "--work-dir", str(tmp_path / "work")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        cluster_cfg = tmp_path / "cluster.cfg"
        cluster_cfg.write_text(TINY_CFG.read_text() + f"\n[spark]\nmaster = spark://127.0.0.1:{master_port}\n"
                               "driver.host = 127.0.0.1\nexecutor.memory = 2g\n"
                               f"\n[flows]\nsplit_bytes = {SPLIT_BYTES}\n")
        root = without_night(detect_run.pristine, NIGHT, tmp_path / "warehouse")
        for table in ("flows", "ingest_stats", "ingest_errors"):   # extracted again, split
            shutil.rmtree(warehouse.partition_path(root, table, date=SPLIT_NIGHT))
        result = run_luigi("DetectTask", *_detect_args(root), "--scheduler-host", "127.0.0.1",
                           "--scheduler-port", str(luigid),
                           env=luigi_env(LUIGI_CONFIG_PATH=str(cluster_cfg), SPARK_LOCAL_IP="127.0.0.1"))
        yield root, result, f"spark://127.0.0.1:{master_port}"
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def _tables(root: Path) -> dict[str, list[dict]]:
    return {table: table_rows(root, table, keys) for table, keys in TABLE_KEYS.items()}


def test_detect_through_luigid_registers_every_stage_as_done(cluster_run, luigid):
    _, result, _ = cluster_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    query = urllib.parse.quote(json.dumps({"status": "DONE", "upstream_status": "", "search": ""}))
    with urllib.request.urlopen(f"http://127.0.0.1:{luigid}/api/task_list?data={query}", timeout=30) as reply:
        done = json.load(reply)["response"]
    families = {task["name"] for task in done.values()}
    assert {"ExtractFlowsTask", "SignatureStatsTask", "FaninHistoryTask", "BuildGraphTask", "PartitionTask",
            "TrainA2GNNTask", "ScoreA2GNNTask",
            "TrainRearViewTask", "ScoreRearViewTask", "PublishTablesTask", "ReportTask",
            "DetectTask"} <= families


def test_failed_task_makes_luigi_exit_non_zero(tmp_path):
    result = run_luigi("DetectTask", "--date", "2031-05-05", "--archive", str(SAMPLE_ARCHIVE),
                       "--warehouse", str(tmp_path), "--local-scheduler")
    assert result.returncode != 0
    assert "no night 2031-05-05" in result.stdout + result.stderr


def test_killed_run_resumes_to_the_same_tables(reference_tables, detect_run, tmp_path):
    root = without_night(detect_run.pristine, NIGHT, tmp_path / "killed")
    process = subprocess.Popen(luigi_command("DetectTask", *_detect_args(root), "--local-scheduler"),
                               cwd=REPO_ROOT, env=luigi_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    graph = warehouse.partition_path(root, "graph_edges", date=NIGHT)
    deadline = time.monotonic() + 600
    while not warehouse.is_complete(graph) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed mid-way"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not list(root.glob("reports/date=*/*/report.html")), "killed too late: nothing left to resume"

    result = run_luigi("DetectTask", *_detect_args(root), "--local-scheduler")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert _tables(root) == reference_tables


def test_new_partitions_are_visible_to_a_fresh_spark_sql_session(cluster_run):
    from pipeline.spark import session_settings

    reference_run = cluster_run[0]
    settings = session_settings(reference_run, overrides={"spark.master": "local[1]"})
    confs = [arg for key, value in settings.items() if key.startswith(("spark.", "javax.", "hive."))
             for arg in ("--conf", f"{key if key.startswith('spark.') else 'spark.hadoop.' + key}={value}")]
    spark_sql = Path(__import__("pyspark").__file__).parent / "bin" / "spark-sql"
    result = subprocess.run(
        [str(spark_sql), *confs, "-S", "-e",
         f"SELECT count(*) FROM traffic.flows WHERE `date` = '{NIGHT}';"
         f"SELECT count(*) FROM traffic.flow_scores WHERE `date` = '{NIGHT}' AND model = 'rearview';"],
        cwd=reference_run, env=dict(os.environ, PYSPARK_PYTHON=str(VENV_BIN / "python")),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    counts = [int(line) for line in result.stdout.split() if line.strip().isdigit()]
    flows = len(table_rows(reference_run / "flows", f"date={NIGHT}", ["flow_id"]))
    assert counts == [flows, flows]


def test_standalone_spark_master_gives_the_same_tables(cluster_run, reference_tables):
    root, result, master = cluster_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"master={master}" in result.stdout + result.stderr
    split = re.search(rf"extract {SPLIT_NIGHT}: 1 files split into (\d+) byte ranges", result.stdout + result.stderr)
    assert split and int(split.group(1)) >= 5            # 1,481,086 bytes in ranges of 256 KiB
    assert _tables(root) == reference_tables
