"""The one place a SparkSession is built, from ``conf/spark.conf``.

``local[2]`` by default; a cluster master (``spark://...``, ``yarn``) by configuration
only. The Hive catalog with an embedded Derby metastore is the default persistent
metastore; ``hive.metastore.uris`` in the conf (or ``TRAFFIC_METASTORE_URIS``) points it
at a shared Hive metastore instead.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF = REPO_ROOT / "conf" / "spark.conf"


def read_spark_conf(path: str | os.PathLike = DEFAULT_CONF) -> dict[str, str]:
    """Parse a ``key value`` per line file (``#`` starts a comment) into a dict."""
    settings: dict[str, str] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'key value', got {line!r}")
        settings[parts[0]] = parts[1].strip()
    return settings


def session_settings(
    warehouse: str | os.PathLike,
    conf_path: str | os.PathLike = DEFAULT_CONF,
    overrides: dict[str, str] | None = None,
) -> dict[str, str]:
    """All settings for a session whose metastore and SQL warehouse live under ``warehouse``.

    Order of precedence: ``overrides`` > environment (``SPARK_MASTER``,
    ``TRAFFIC_METASTORE_URIS``) > ``conf_path`` > built-in defaults.
    """
    warehouse = Path(warehouse).resolve()
    settings = {
        "spark.sql.warehouse.dir": str(warehouse / "sql"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={warehouse / 'metastore_db'};create=true"
        ),
        "spark.checkpoint.dir": str(warehouse / "_checkpoints"),
    }
    settings.update(read_spark_conf(conf_path))
    if os.environ.get("SPARK_MASTER"):
        settings["spark.master"] = os.environ["SPARK_MASTER"]
    if os.environ.get("TRAFFIC_METASTORE_URIS"):
        settings["hive.metastore.uris"] = os.environ["TRAFFIC_METASTORE_URIS"]
    if settings.get("hive.metastore.uris"):
        settings["spark.hadoop.hive.metastore.uris"] = settings["hive.metastore.uris"]
    settings.update(overrides or {})
    return with_fixed_driver_heap(settings)


FIXED_HEAP_KEY = "pipeline.driver.fixedHeap"
"""``true``: the driver JVM's heap is ``spark.driver.memory`` from the start (``-Xms``)
and touched at start-up (``-XX:+AlwaysPreTouch``), so its footprint does not depend on
the night (``conf/spark.conf`` says why). Read here, never passed to Spark."""


def with_fixed_driver_heap(settings: dict[str, str]) -> dict[str, str]:
    """``settings`` without ``FIXED_HEAP_KEY``; when it is ``true`` the driver's Java
    options gain ``-Xms<spark.driver.memory> -XX:+AlwaysPreTouch`` (the one heap size
    stays in ``spark.driver.memory``)."""
    settings = dict(settings)
    fixed = settings.pop(FIXED_HEAP_KEY, "false").strip().lower() == "true"
    memory = settings.get("spark.driver.memory")
    if fixed and memory:
        options = settings.get("spark.driver.extraJavaOptions", "")
        settings["spark.driver.extraJavaOptions"] = f"{options} -Xms{memory} -XX:+AlwaysPreTouch".strip()
    return settings


def get_spark(
    warehouse: str | os.PathLike,
    conf_path: str | os.PathLike = DEFAULT_CONF,
    overrides: dict[str, str] | None = None,
):
    """Return the process's SparkSession, creating it from conf if there is none.

    Python workers use this interpreter (``PYSPARK_PYTHON``), so the venv's packages are
    what the executors import. A session that already exists is returned as is (Spark
    allows one per JVM); its master is logged so a mismatch is visible.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    settings = session_settings(warehouse, conf_path, overrides)
    builder = SparkSession.builder
    for key, value in settings.items():
        if key == "spark.sql.catalogImplementation" and value == "hive":
            builder = builder.enableHiveSupport()
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    spark.sparkContext.setCheckpointDir(settings["spark.checkpoint.dir"])
    log.info("Spark session: master=%s warehouse=%s", spark.sparkContext.master, warehouse)
    return spark
