"""Helpers for end-to-end tests: run Luigi in this process or as a real command line."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import luigi
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_ARCHIVE = REPO_ROOT / "sample" / "archive"
SAMPLE_LABELS = REPO_ROOT / "sample" / "labels.csv"
TINY_CFG = REPO_ROOT / "tests" / "conf" / "tiny.cfg"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def luigi_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, LUIGI_CONFIG_PATH=str(TINY_CFG), PYSPARK_PYTHON=sys.executable,
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def luigi_command(task: str, *args: str) -> list[str]:
    return [str(VENV_BIN / "luigi"), "--module", "jobs", task, *args]


def run_luigi(task: str, *args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``luigi --module jobs TASK ARGS`` as a real process from the repo root."""
    return subprocess.run(luigi_command(task, *args), cwd=REPO_ROOT, env=env or luigi_env(),
                          capture_output=True, text=True, timeout=timeout)


def table_rows(warehouse: Path, table: str, sort_by: list[str]) -> list[dict]:
    """Every row of a table (all partitions) as sorted dicts, for whole-table comparison."""
    root = Path(warehouse) / table
    files = sorted(f for f in root.rglob("*.parquet")
                   if not any(part.startswith((".", "_")) for part in f.relative_to(root).parts))
    rows = []
    for file in files:
        partition = {p.split("=", 1)[0]: p.split("=", 1)[1] for p in file.relative_to(root).parts[:-1]}
        for row in pq.read_table(file).to_pylist():
            rows.append({**row, **partition})
    return sorted(rows, key=lambda r: tuple(str(r.get(c)) for c in sort_by))


def without_night(warehouse: Path, night: str, target: Path) -> Path:
    """A copy of ``warehouse`` at ``target`` without any output of ``night`` (every
    ``date=<night>`` partition, its report and publication): a DetectTask of that night on it
    redoes every stage of the night, with the models (and the other nights) already there."""
    shutil.copytree(warehouse, target, ignore=shutil.ignore_patterns(f"date={night}", "metastore_db"))
    return target


def copy_archive(nights: list[str], target: Path) -> Path:
    for night in nights:
        shutil.copytree(SAMPLE_ARCHIVE / night, target / night)
    return target


@contextlib.contextmanager
def settings(section: str, **values: str):
    """Luigi config values for the block; the previous ones come back afterwards."""
    config = luigi.configuration.get_config()
    before = {key: config.get(section, key, None) for key in values}
    for key, value in values.items():
        config.set(section, key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                config.remove_option(section, key)
            else:
                config.set(section, key, value)
