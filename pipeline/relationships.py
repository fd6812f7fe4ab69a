"""Relationship history: which hosts, services and host pairs a night saw, and since when.

In the spirit of Zeek's ``known_hosts`` / ``known_services``: each night's flows are
reduced to one row per *entity* it saw (table ``relationship_nights``, partition
``date``), and a night's history is the aggregate of the nights before it, never of the
night itself or later ones, so nights can be processed in any order.

Entities (the one place their text forms are defined; ``src`` is the initiator):

* ``host``: an IP, every endpoint of a flow (src and dst);
* ``service``: ``dst_ip|dst_port|protocol``;
* ``host_pair``: ``ip_low|ip_high``, the two IPs ordered as strings (unordered pair);
* ``client_service``: ``src_ip>dst_ip|dst_port|protocol``.

A missing ``dst_port`` or ``protocol`` (non-TCP/UDP flows) is written ``-1``; an entity
with a missing IP is null and not counted. Dates are ``YYYY-MM-DD`` strings, times epoch
milliseconds (UTC).
"""
from __future__ import annotations

import datetime as dt

import pandas as pd

from pipeline.store import schema

KINDS = ("host", "service", "host_pair", "client_service")
"""The ``kind`` values of ``relationship_nights``."""

ENTITY_COLUMNS = ("service", "host_pair", "client_service")
"""Columns ``entity_columns`` / ``entity_frame`` add to a flows frame."""

HISTORY_KEYS = (
    ("service", "service", "service"),
    ("client_service", "client_service", "client_service"),
    ("host_pair", "host_pair", "host_pair"),
    ("src_host", "host", "src_ip"),
    ("dst_host", "host", "dst_ip"),
)
"""``flow_history``'s keys: (output prefix, ``kind`` looked up, flow column holding the entity)."""

_MISSING = -1
"""How a null ``dst_port`` / ``protocol`` is written in an entity."""


# ------------------------------------------------------------------------ entities
def entity_columns(flows_df):
    """``flows_df`` plus string columns ``service``, ``host_pair``, ``client_service``.

    ``flows_df``: any frame with ``src_ip``, ``dst_ip`` (strings), ``dst_port``,
    ``protocol`` (integers, may be null). An entity is null when an IP it needs is null.
    ``entity_frame`` is the pandas twin.
    """
    from pyspark.sql import functions as F

    src, dst = F.col("src_ip"), F.col("dst_ip")

    def number(column: str):
        return F.coalesce(F.col(column).cast("int"), F.lit(_MISSING)).cast("string")

    service = F.concat(dst, F.lit("|"), number("dst_port"), F.lit("|"), number("protocol"))
    pair = F.when(src.isNotNull() & dst.isNotNull(),
                  F.concat(F.least(src, dst), F.lit("|"), F.greatest(src, dst)))
    return (flows_df
            .withColumn("service", service)
            .withColumn("host_pair", pair)
            .withColumn("client_service", F.concat(src, F.lit(">"), service)))


def entity_frame(flows_pdf: pd.DataFrame) -> pd.DataFrame:
    """Pandas twin of ``entity_columns``: a copy of ``flows_pdf`` with the same three
    columns, computed identically (object dtype, ``None`` where null).

    Ports and protocols may arrive as floats with NaN (Arrow ints with nulls in pandas).
    """
    out = flows_pdf.copy()
    src = flows_pdf["src_ip"].astype("string")
    dst = flows_pdf["dst_ip"].astype("string")

    def number(column: str) -> pd.Series:
        return pd.to_numeric(flows_pdf[column]).fillna(_MISSING).astype("int64").astype("string")

    service = dst + "|" + number("dst_port") + "|" + number("protocol")
    ordered = (src <= dst).fillna(False)
    low, high = src.where(ordered, dst), dst.where(ordered, src)
    columns = {"service": service, "host_pair": low + "|" + high, "client_service": src + ">" + service}
    for name, values in columns.items():
        out[name] = values.astype(object).where(values.notna(), None)
    return out


# ------------------------------------------------------------------ one night's rows
def night_relationships(flows_df):
    """One night's ``relationship_nights`` rows: per (kind, entity) the night's ``flows``,
    ``first_seen_ms`` = min of their ``first_seen_ms``, ``last_seen_ms`` = max of their
    ``last_seen_ms``.

    ``flows_df``: one night's flows (``src_ip``, ``dst_ip``, ``dst_port``, ``protocol``,
    ``first_seen_ms``, ``last_seen_ms``). A flow counts once for each distinct endpoint
    (``src_ip == dst_ip`` counts once). Null entities are dropped. Depends on nothing but
    ``flows_df``, so a night's rows are the same whenever it is processed.
    """
    from pyspark.sql import functions as F

    flows = entity_columns(flows_df)
    times = [F.col("first_seen_ms"), F.col("last_seen_ms")]
    hosts = flows.select(
        F.lit("host").alias("kind"),
        F.explode(F.array_distinct(F.array("src_ip", "dst_ip"))).alias("entity"), *times)
    parts = [hosts] + [flows.select(F.lit(kind).alias("kind"), F.col(kind).alias("entity"), *times)
                       for kind in ENTITY_COLUMNS]
    entities = parts[0]
    for part in parts[1:]:
        entities = entities.unionByName(part)
    return (entities.where(F.col("entity").isNotNull())
            .groupBy("kind", "entity")
            .agg(F.count("*").cast("long").alias("flows"),
                 F.min("first_seen_ms").alias("first_seen_ms"),
                 F.max("last_seen_ms").alias("last_seen_ms")))


# ------------------------------------------------------------------------- history
def relationships_summary(nights_df):
    """Per (kind, entity): ``first_night``, ``last_night`` (``YYYY-MM-DD``), ``nights_seen``
    (distinct nights), ``flows`` (sum over those nights).

    ``nights_df``: ``relationship_nights`` rows plus ``date`` (string or date type).
    """
    from pyspark.sql import functions as F

    return (nights_df.withColumn("date", F.col("date").cast("string"))
            .groupBy("kind", "entity")
            .agg(*[F.expr(expression).alias(name) for name, expression in schema.RELATIONSHIPS_SUMMARY]))


def _night(date: str) -> str:
    try:
        return dt.date.fromisoformat(str(date)).isoformat()
    except ValueError as error:
        raise ValueError(f"history date must be YYYY-MM-DD, got {date!r}") from error


def _before(nights_df, date: str):
    from pyspark.sql import functions as F

    return nights_df.where(F.col("date").cast("string") < F.lit(_night(date)))


def history_as_of(nights_df, date: str):
    """``relationships_summary`` of the nights strictly before ``date`` (``YYYY-MM-DD``):
    what was known when night ``date`` began, whichever nights ``nights_df`` also holds."""
    return relationships_summary(_before(nights_df, date))


def flow_history(flows_df, history_df, date: str):
    """Each flow's relationships as known before its night ``date``: one row per ``flow_id``.

    ``history_df``: *raw* ``relationship_nights`` rows plus ``date`` (not a summary), so the
    cut at ``date`` is made here and the night itself and later nights never leak in.
    Columns: ``flow_id``; for each key ``k`` of ``HISTORY_KEYS`` (``service``,
    ``client_service``, ``host_pair``, ``src_host``, ``dst_host``; the hosts look up kind
    ``host``) ``{k}_nights_seen`` (int, 0 when never seen before ``date``) and
    ``{k}_days_since_first`` (int days from its first night to ``date``, null when never
    seen); and ``history_nights`` (int, distinct nights in ``history_df`` before ``date``).
    """
    from pyspark.sql import functions as F

    night = _night(date)
    earlier = _before(history_df, night)
    summary = relationships_summary(earlier).select("kind", "entity", "first_night", "nights_seen")
    flows = entity_columns(flows_df)
    keys = flows.select("flow_id", F.explode(F.array(*[
        F.struct(F.lit(key).alias("key"), F.lit(kind).alias("kind"), F.col(column).alias("entity"))
        for key, kind, column in HISTORY_KEYS])).alias("k")).select("flow_id", "k.*")
    known = keys.join(summary, ["kind", "entity"], "left")
    columns = []
    for key, _, _ in HISTORY_KEYS:
        mine = F.col("key") == key
        columns.append(F.coalesce(F.max(F.when(mine, F.col("nights_seen"))), F.lit(0))
                       .cast("int").alias(f"{key}_nights_seen"))
        columns.append(F.datediff(F.to_date(F.lit(night)), F.to_date(F.min(F.when(mine, F.col("first_night")))))
                       .cast("int").alias(f"{key}_days_since_first"))
    nights = earlier.agg(F.countDistinct(F.col("date").cast("string")).cast("int").alias("history_nights"))
    return known.groupBy("flow_id").agg(*columns).crossJoin(nights)


# ----------------------------------------------------------------------- reading
def read_nights(spark, warehouse_root, dates: list[str]):
    """``relationship_nights`` of ``dates`` as one frame with a string ``date`` column (the
    ``history_df`` of ``flow_history``; no dates, e.g. a first night: no rows). Raises
    ``FileNotFoundError`` (with the path) when a night's partition is missing or incomplete."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    from pipeline.store import warehouse

    if not dates:
        struct = schema.spark_schema("relationship_nights")
        return spark.createDataFrame([], StructType(struct.fields + [StructField("date", StringType())]))
    frames = [warehouse.read_partition(spark, warehouse_root, "relationship_nights", date=d)
              .withColumn("date", F.lit(_night(d))) for d in dates]
    nights = frames[0]
    for frame in frames[1:]:
        nights = nights.unionByName(frame)
    return nights
