"""Shared fixtures: one SparkSession for the whole test session, real data paths."""
from __future__ import annotations

import os
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
