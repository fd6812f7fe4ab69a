"""Warehouse layout and atomic, rerun-safe partition writes.

Layout: ``<warehouse>/<table>/date=YYYY-MM-DD[/model=NAME]/part-*.parquet`` plus a
``_SUCCESS`` marker. A partition is written to a temporary sibling directory first and
then swapped in with ``rename`` (atomic on a local or POSIX file system), so readers
and a crashed run never see half a partition, and rewriting a date replaces exactly that
date. On object stores (S3) rename is not atomic: there the ``_SUCCESS`` marker, written
last, is what marks a partition complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import schema

SUCCESS_MARKER = "_SUCCESS"
BUILD_RECORD = "_BUILD.json"
"""Inside a partition: the settings it was built with (``write_spark_partition(build=...)``),
so a task can tell a partition built under other settings from its own (``build_matches``)."""


def partition_path(warehouse: str | os.PathLike, table: str, **partition: str) -> Path:
    """``<warehouse>/<table>/k1=v1/k2=v2`` in the order of ``schema.PARTITION_COLUMNS``.

    Raises ``ValueError`` when a partition column of the table is missing.
    """
    path = Path(warehouse) / table
    for column in schema.PARTITION_COLUMNS.get(table, ("date",)):
        if column not in partition:
            raise ValueError(f"table {table!r} is partitioned by {column!r}: pass {column}=...")
        path = path / f"{column}={partition[column]}"
    return path


def is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` is a partition written to the end (its marker exists)."""
    return (Path(path) / SUCCESS_MARKER).is_file()


def _staging_dir(final: Path) -> Path:
    """A fresh staging directory beside ``final``; leftovers of a killed writer of the same
    partition are removed first (one writer per partition is the scheduler's job)."""
    if final.parent.is_dir():
        for stale in final.parent.glob(f".staging-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in final.parent.glob(f".trash-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    staging = final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    return staging


def _swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` by ``staging`` with renames; the old version is removed last."""
    (staging / SUCCESS_MARKER).touch()
    trash = None
    if final.exists():
        trash = final.parent / f".trash-{final.name}-{uuid.uuid4().hex[:12]}"
        os.rename(final, trash)
    os.rename(staging, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def staged_partition(warehouse: str | os.PathLike, table: str, **partition: str) -> Iterator[Path]:
    """A staging directory for one partition that several writers fill (Spark tasks writing
    their own files, then the driver); swapped in atomically when the block ends, removed
    when it raises. Yields the staging directory; writers must name their files uniquely.
    """
    final = partition_path(warehouse, table, **partition)
    staging = _staging_dir(final)
    try:
        yield staging
        _swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_parquet_parts(batches: Iterable[pa.RecordBatch], directory: str | os.PathLike, stem: str,
                        arrow_schema: pa.Schema, rows_per_file: int = 1_000_000) -> list[int]:
    """Stream ``batches`` into ``<directory>/<stem>-NNNNN.parquet`` files of at most
    ``rows_per_file`` rows (zstd); returns the rows of each file.

    Each file is written under a hidden temporary name (Spark and Arrow readers skip names
    starting with ``.``) and renamed when closed, so a process that dies leaves no readable
    half file, and a retried writer of the same ``stem`` replaces its predecessor's files.
    When ``batches`` raises, what was written is kept (closed and renamed), then it re-raises.
    """
    directory = Path(directory)
    counts: list[int] = []
    writer, temporary = None, None

    def close() -> None:
        writer.close()
        os.replace(temporary, directory / f"{stem}-{len(counts) - 1:05d}.parquet")

    try:
        for batch in batches:
            start = 0
            while start < batch.num_rows:
                if writer is None or counts[-1] >= rows_per_file:
                    if writer is not None:
                        close()
                    temporary = directory / f".{stem}-{len(counts):05d}-{uuid.uuid4().hex[:8]}.tmp"
                    writer = pq.ParquetWriter(temporary, arrow_schema, compression="zstd")
                    counts.append(0)
                take = min(batch.num_rows - start, rows_per_file - counts[-1])
                writer.write_batch(batch.slice(start, take))
                counts[-1] += take
                start += take
    finally:
        if writer is not None:
            close()
    return counts


def write_arrow_partition(
    data: pa.Table,
    warehouse: str | os.PathLike,
    table: str,
    *,
    rows_per_file: int = 1_000_000,
    **partition: str,
) -> Path:
    """Write an Arrow table (conformed to ``table``'s schema) as one partition, atomically.

    Zero rows still produce a readable partition (one empty file carrying the schema).
    Returns the final partition path.
    """
    data = schema.conform(table, data)
    with staged_partition(warehouse, table, **partition) as staging:
        if data.num_rows == 0:
            pq.write_table(data, staging / "part-00000.parquet", compression="zstd")
        write_parquet_parts(data.to_batches(), staging, "part", data.schema, rows_per_file)
    return partition_path(warehouse, table, **partition)


def write_spark_partition(df, warehouse: str | os.PathLike, table: str, *, build: dict | None = None,
                          **partition: str) -> Path:
    """Write a Spark DataFrame (columns of ``table``'s schema) as one partition, atomically.

    Columns are selected and cast to the declared schema, so a stage cannot change a
    table's contract by accident. Spark writes into a staging directory next to the
    final one, which is then swapped in. ``build`` (JSON-able: the settings the rows
    depend on) is stored in the partition as ``BUILD_RECORD``, swapped in with the rows.
    """
    from pyspark.sql import functions as F

    final = partition_path(warehouse, table, **partition)
    struct = schema.spark_schema(table)
    columns = [
        (F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
        for f in struct.fields
    ]
    with staged_partition(warehouse, table, **partition) as staging:
        df.select(*columns).write.mode("overwrite").parquet(str(staging))
        (staging / SUCCESS_MARKER).unlink(missing_ok=True)
        if build is not None:
            (staging / BUILD_RECORD).write_text(json.dumps(build, sort_keys=True, indent=1))
    return final


def build_matches(path: str | os.PathLike, build: dict) -> bool:
    """True when the partition at ``path`` records exactly ``build`` (compared as JSON).

    A partition without a record (written before records existed, or by a writer that
    keeps none) does not match: its settings are unknown.
    """
    record = Path(path) / BUILD_RECORD
    if not record.is_file():
        return False
    try:
        recorded = json.loads(record.read_text())
    except ValueError:
        return False
    return recorded == json.loads(json.dumps(build))


def _prefix_path(warehouse, table: str, partition: dict[str, str]) -> tuple[Path, tuple[str, ...]]:
    """Path of a leading prefix of the table's partition columns, and the columns left."""
    columns = schema.PARTITION_COLUMNS.get(table, ("date",))
    path = Path(warehouse) / table
    given = 0
    for column in columns:
        if column not in partition:
            break
        path = path / f"{column}={partition[column]}"
        given += 1
    unknown = set(partition) - set(columns[:given])
    if unknown:
        raise ValueError(
            f"table {table!r} is partitioned by {columns}; pass a leading prefix of them, "
            f"got {sorted(partition)}"
        )
    return path, columns[given:]


def complete_partitions(warehouse: str | os.PathLike, table: str, **partition: str) -> list[Path]:
    """Every complete leaf partition under a prefix (e.g. all versions of a night's scores)."""
    path, rest = _prefix_path(warehouse, table, partition)
    pattern = "/".join(f"{column}=*" for column in rest)
    leaves = [path] if not rest else sorted(path.glob(pattern))
    return [leaf for leaf in leaves if is_complete(leaf)]


def read_partition(spark, warehouse: str | os.PathLike, table: str, **partition: str):
    """Read one complete partition with the table's declared schema.

    ``partition`` may name only a leading prefix of the partition columns (for
    ``flow_scores``: ``date`` and ``model`` without ``model_version``): then every
    complete partition below it is read and the remaining partition columns are added as
    columns (e.g. ``model_version``). Raises ``FileNotFoundError`` (with the path) when
    nothing complete is there.
    """
    path, rest = _prefix_path(warehouse, table, partition)
    leaves = complete_partitions(warehouse, table, **partition)
    if not leaves:
        raise FileNotFoundError(f"partition {path} is missing or incomplete (no {SUCCESS_MARKER})")
    reader = spark.read.schema(schema.spark_schema(table))
    if not rest:
        return reader.parquet(str(path))
    return reader.option("basePath", str(path)).parquet(*[str(leaf) for leaf in leaves])


def read_arrow_partition(warehouse: str | os.PathLike, table: str, **partition: str) -> pa.Table:
    """Read complete partition(s) into Arrow on this process (small tables, tests).

    Like ``read_partition``, a prefix of the partition columns reads every complete
    partition below it and adds the remaining partition columns as string columns.
    """
    path, rest = _prefix_path(warehouse, table, partition)
    leaves = complete_partitions(warehouse, table, **partition)
    if not leaves:
        raise FileNotFoundError(f"partition {path} is missing or incomplete (no {SUCCESS_MARKER})")
    tables = []
    for leaf in leaves:
        for file in sorted(leaf.glob("*.parquet")):
            part = pq.read_table(file, schema=schema.TABLES[table])
            for column, value in zip(rest, leaf.relative_to(path).parts):
                part = part.append_column(column, pa.array([value.split("=", 1)[1]] * part.num_rows, pa.string()))
            tables.append(part)
    if not tables:
        return schema.empty_table(table)
    return pa.concat_tables(tables)
