"""Publishing warehouse partitions as Spark SQL tables in a persistent metastore.

Tables live in database ``traffic`` (configurable) as external Parquet tables whose
locations are the warehouse's table folders; each night's partitions are added
explicitly (``ALTER TABLE ... ADD IF NOT EXISTS PARTITION``), so a fresh ``spark-sql``
session sees them with no ``MSCK REPAIR``. The metastore is embedded Derby under
``<warehouse>/metastore_db`` by default (one process at a time), or a shared Hive
metastore (``hive.metastore.uris`` in ``conf/spark.conf``).

``flow_scores_latest`` is a view over ``flow_scores`` that keeps, per night and model,
only the greatest ``model_version`` (versions start with their last training night, so
this is the newest model); every version stays queryable in ``flow_scores``.
``incidents_latest`` keeps the incidents of the verdict version ``flow_scores_latest``
shows (chosen from ``flow_scores``: a version that flagged nothing has no incident rows).
``relationships`` is a view over ``relationship_nights``: per (kind, entity) its first and
last night, nights seen and flows over every published night (``pipeline.relationships``).

Tables created by older code keep working: ``ensure_database`` adds every schema column
an existing table lacks (``ALTER TABLE ... ADD COLUMNS``); its old partitions read the new
columns as null.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from pipeline.store import schema, warehouse

log = logging.getLogger(__name__)

PUBLISHED_TABLES = ("flows", "ingest_stats", "ingest_errors", "graph_vertices", "graph_edges",
                    "atoms", "flow_scores", "relationship_nights", "incidents")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _quote_identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a valid SQL identifier: {name!r}")
    return f"`{name}`"


def _quote_literal(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def table_ddl(database: str, table: str, location: Path) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for one warehouse table (external Parquet)."""
    struct = schema.spark_schema(table)
    partitions = schema.PARTITION_COLUMNS[table]
    columns = [f"`{f.name}` {f.dataType.simpleString()}" for f in struct.fields]
    columns += [f"`{p}` string" for p in partitions]
    return (
        f"CREATE TABLE IF NOT EXISTS {_quote_identifier(database)}.{_quote_identifier(table)} "
        f"({', '.join(columns)}) USING parquet "
        f"PARTITIONED BY ({', '.join(f'`{p}`' for p in partitions)}) "
        f"LOCATION {_quote_literal(str(location))}"
    )


def missing_columns_ddl(spark, database: str, table: str) -> str | None:
    """``ALTER TABLE ... ADD COLUMNS`` for the schema columns the existing metastore table
    lacks (created by older code), in schema order; ``None`` when it has them all."""
    name = f"{_quote_identifier(database)}.{_quote_identifier(table)}"
    existing = {column.lower() for column in spark.table(name).columns}
    missing = [f"`{f.name}` {f.dataType.simpleString()}" for f in schema.spark_schema(table).fields
               if f.name.lower() not in existing]
    if not missing:
        return None
    return f"ALTER TABLE {name} ADD COLUMNS ({', '.join(missing)})"


def ensure_database(spark, database: str, warehouse_root: Path) -> None:
    """Create the database, every table and the views when missing; add to a table created
    by older code the columns its schema gained since (before the views are rebuilt)."""
    db = _quote_identifier(database)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db} LOCATION {_quote_literal(str(Path(warehouse_root) / 'sql' / database))}")
    for table in PUBLISHED_TABLES:
        spark.sql(table_ddl(database, table, Path(warehouse_root).resolve() / table))
        upgrade = missing_columns_ddl(spark, database, table)
        if upgrade is not None:
            log.info("metastore table %s.%s gains columns: %s", database, table, upgrade)
            spark.sql(upgrade)
    spark.sql(
        f"CREATE OR REPLACE VIEW {db}.flow_scores_latest AS "
        f"SELECT s.* FROM {db}.flow_scores s JOIN ("
        f"  SELECT `date`, model, max(model_version) AS model_version FROM {db}.flow_scores "
        f"  GROUP BY `date`, model) newest "
        f"ON s.`date` = newest.`date` AND s.model = newest.model AND s.model_version = newest.model_version"
    )
    spark.sql(
        f"CREATE OR REPLACE VIEW {db}.incidents_latest AS "
        f"SELECT i.* FROM {db}.incidents i JOIN ("
        f"  SELECT `date`, max(model_version) AS model_version FROM {db}.flow_scores WHERE model = 'verdict' "
        f"  GROUP BY `date`) newest "
        f"ON i.`date` = newest.`date` AND i.model_version = newest.model_version"
    )
    aggregates = ", ".join(f"{expression} AS {name}" for name, expression in schema.RELATIONSHIPS_SUMMARY)
    spark.sql(
        f"CREATE OR REPLACE VIEW {db}.relationships AS "
        f"SELECT kind, entity, {aggregates} FROM {db}.relationship_nights GROUP BY kind, entity"
    )


def publish_night(spark, database: str, warehouse_root: Path, date: str) -> dict[str, int]:
    """Register every complete partition of ``date`` in the metastore; idempotent.

    Returns the number of partitions registered per table (0 where the stage did not run).
    """
    warehouse_root = Path(warehouse_root).resolve()
    ensure_database(spark, database, warehouse_root)
    registered = {}
    for table in PUBLISHED_TABLES:
        leaves = warehouse.complete_partitions(warehouse_root, table, date=date)
        for leaf in leaves:
            values = dict(part.split("=", 1) for part in leaf.relative_to(warehouse_root / table).parts)
            spec = ", ".join(f"`{k}` = {_quote_literal(v)}" for k, v in values.items())
            spark.sql(
                f"ALTER TABLE {_quote_identifier(database)}.{_quote_identifier(table)} "
                f"ADD IF NOT EXISTS PARTITION ({spec}) LOCATION {_quote_literal(str(leaf))}"
            )
        spark.sql(f"REFRESH TABLE {_quote_identifier(database)}.{_quote_identifier(table)}")
        registered[table] = len(leaves)
    log.info("published %s into database %s: %s", date, database, registered)
    return registered


def sql_session_settings(warehouse_root: str | os.PathLike) -> dict[str, str]:
    """Settings an analyst's fresh session needs to open this warehouse's metastore."""
    from pipeline.spark import session_settings

    return session_settings(warehouse_root)
