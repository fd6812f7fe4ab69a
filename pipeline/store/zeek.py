"""Zeek logs (TSV format) as Spark DataFrames, for joins on ``community_id``.

Zeek's ASCII logs start with ``#separator``, ``#fields`` and ``#types`` header lines; a
``-`` is an unset value and ``(empty)`` an empty set. ``conn.log`` carries
``community_id`` when Zeek runs the community-id package (Suricata's eve.json does too),
which is the same Community ID v1 string as our ``flows.community_id``.
"""
from __future__ import annotations

import os

_ZEEK_TO_SPARK = {
    "time": "double", "interval": "double", "double": "double", "count": "bigint",
    "int": "bigint", "port": "int", "bool": "boolean",
}


def read_header(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(fields, types)`` from a Zeek log's ``#fields`` / ``#types`` lines.

    Raises ``ValueError`` naming the file when either line is missing.
    """
    fields = types = None
    with open(path) as handle:
        for line in handle:
            if not line.startswith("#"):
                break
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "#fields":
                fields = parts[1:]
            elif parts[0] == "#types":
                types = parts[1:]
    if fields is None or types is None or len(fields) != len(types):
        raise ValueError(f"{path}: not a Zeek TSV log (missing or inconsistent #fields/#types)")
    return fields, types


def read_zeek_log(spark, path: str | os.PathLike):
    """A DataFrame with one column per Zeek field, typed (``-`` becomes null)."""
    from pyspark.sql import functions as F

    fields, types = read_header(path)
    raw = (spark.read.option("sep", "\t").option("comment", "#").option("header", "false")
           .option("nullValue", "-").csv(str(path)))
    columns = []
    for index, (name, zeek_type) in enumerate(zip(fields, types)):
        column = F.col(f"_c{index}")
        spark_type = _ZEEK_TO_SPARK.get(zeek_type)
        columns.append((column.cast(spark_type) if spark_type else column).alias(name.replace(".", "_")))
    return raw.select(*columns)
