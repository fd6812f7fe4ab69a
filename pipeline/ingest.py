"""Night extraction: an archive date's capture files -> flows, ingest_stats, ingest_errors.

Spark distributes the files (a DataFrame of paths, one file per task, ``mapInArrow``);
each file is read streaming (``pipeline.capture.reader``) and assembled into mergeable
partial flows (``pipeline.flows``). Flows left open at a file's end are merged with the
next file's flows of the same key (``groupBy(key).applyInPandas``), so rotated files of
one night give the same flows as one file. Bad files never fail the night: their
problems go to ``ingest_errors`` and a copy of the file to
``<warehouse>/quarantine/date=D/``; the archive is only ever read.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipeline import schema
from pipeline import warehouse as store
from pipeline.capture import decode
from pipeline.capture.reader import CaptureReader
from pipeline.flows import (PARTIAL_SCHEMA, R_EOC, FlowAssembler, FlowConfig, finalize,
                            merge_partial_table, merge_rows)

log = logging.getLogger(__name__)

CAPTURE_NAME = re.compile(r".*\.(pcap|pcapng|cap)(\.gz)?$", re.IGNORECASE)
DATE_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}$")

__all__ = ["FlowConfig", "list_capture_files", "process_file", "extract_night",
           "extract_night_local"]


def list_capture_files(archive: Path, date: str) -> list[Path]:
    """``<archive>/<date>/**/*.{pcap,pcapng,cap}[.gz]``, sorted by archive-relative name.

    Raises ``ValueError`` for a date not in ``YYYY-MM-DD`` form; returns ``[]`` when the
    night's folder does not exist.
    """
    if not DATE_FORMAT.match(date):
        raise ValueError(f"date must be YYYY-MM-DD, got {date!r}")
    night = Path(archive) / date
    if not night.is_dir():
        return []
    files = [p for p in night.rglob("*") if p.is_file() and CAPTURE_NAME.match(p.name)]
    return sorted(files, key=lambda p: p.relative_to(night).as_posix())


# ------------------------------------------------------------------ one file
def _empty_stats(capture_file: str, file_bytes: int) -> dict:
    stats = {f.name: 0 for f in schema.INGEST_STATS}
    stats.update(capture_file=capture_file, file_bytes=file_bytes, file_format="unknown",
                 link_types="", status="ok", first_packet_ms=None, last_packet_ms=None)
    return stats


def process_file(path: str | Path, capture_file: str, config: FlowConfig = FlowConfig()
                 ) -> tuple[pa.Table, dict, list[dict]]:
    """Read one capture file streaming and assemble its flows.

    Returns ``(partial_flows, stats, errors)``: a ``flows.PARTIAL_SCHEMA`` table (flows
    open at the end have reason ``end_of_capture``), one ``schema.INGEST_STATS`` row as a
    dict (``flows`` counts this file's flows before cross-file merging) and
    ``schema.INGEST_ERRORS`` rows as dicts (``quarantine_path`` still empty). Never
    raises on bad input.
    """
    path = Path(path)
    try:
        file_bytes = path.stat().st_size
    except OSError:
        file_bytes = 0
    stats = _empty_stats(capture_file, file_bytes)
    reader = CaptureReader(path, chunk_bytes=config.chunk_bytes, batch_rows=config.batch_rows)
    assembler = FlowAssembler(config)
    status_counts = np.zeros(len(schema.SKIP_REASONS) + 1, dtype=np.int64)
    fragments = 0
    first_us, last_us = None, None
    partials: list[pa.Table] = []
    for P in reader.batches():
        status_counts += np.bincount(P[:, decode.STATUS], minlength=len(status_counts))
        ok = P[:, decode.STATUS] == decode.OK
        fragments += int(np.count_nonzero(ok & (P[:, decode.FRAG] != decode.NOT_FRAGMENT)))
        ts = P[:, decode.TS]
        first_us = int(ts.min()) if first_us is None else min(first_us, int(ts.min()))
        last_us = int(ts.max()) if last_us is None else max(last_us, int(ts.max()))
        assembler.add(P)
        if len(assembler.out) > 64:
            partials.append(assembler.take(capture_file))
    assembler.finish()
    partials.append(assembler.take(capture_file))
    flows = pa.concat_tables(partials)
    info = reader.info
    stats["file_format"] = info.file_format
    stats["link_types"] = ",".join(str(t) for t in sorted(info.link_types))
    stats["packets_read"] = int(status_counts.sum())
    stats["packets_in_flows"] = int(status_counts[decode.OK])
    stats["packets_skipped"] = int(status_counts[1:].sum())
    for i, reason in enumerate(schema.SKIP_REASONS, start=1):
        stats[f"skipped_{reason}"] = int(status_counts[i])
    stats["ip_fragment_packets"] = fragments
    stats["flows"] = flows.num_rows
    stats["first_packet_ms"] = None if first_us is None else first_us // 1000
    stats["last_packet_ms"] = None if last_us is None else last_us // 1000
    fatal = any(e.fatal for e in info.errors)
    if fatal:
        stats["status"] = "partial" if stats["packets_read"] > 0 else "quarantined"
    errors = [dict(capture_file=capture_file, byte_offset=e.byte_offset, reason=e.reason,
                   fatal=e.fatal, quarantine_path=None) for e in info.errors]
    return flows, stats, errors


# ------------------------------------------------------------------ Spark plumbing
_META = "meta"
TASK_SCHEMA = pa.schema(list(PARTIAL_SCHEMA) + [pa.field(_META, pa.string())])
"""What a file task emits: partial flows, plus one row whose ``meta`` holds stats/errors."""


def _task_rows(flows: pa.Table, stats: dict, errors: list[dict]) -> Iterator[pa.RecordBatch]:
    meta = pa.array([None] * flows.num_rows, type=pa.string())
    if flows.num_rows:
        for batch in flows.append_column(_META, meta).to_batches(max_chunksize=50_000):
            yield batch
    blob = json.dumps({"stats": stats, "errors": errors})
    row = {f.name: [None] for f in PARTIAL_SCHEMA}
    row[_META] = [blob]
    yield pa.RecordBatch.from_pydict(row, schema=TASK_SCHEMA)


def _file_task(config: FlowConfig):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for path, rel in zip(batch.column("path").to_pylist(),
                                 batch.column("capture_file").to_pylist()):
                try:
                    flows, stats, errors = process_file(path, rel, config)
                except Exception as exc:  # a bug must not lose the night: report it
                    log.exception("failed on %s", path)
                    flows = PARTIAL_SCHEMA.empty_table()
                    stats = _empty_stats(rel, 0)
                    stats["status"] = "quarantined"
                    errors = [dict(capture_file=rel, byte_offset=0, fatal=True,
                                   reason=f"internal error: {type(exc).__name__}: {exc}",
                                   quarantine_path=None)]
                yield from _task_rows(flows, stats, errors)
    return run


def _merge_group(config: FlowConfig):
    import pandas as pd

    columns = [f.name for f in PARTIAL_SCHEMA]

    def run(frame: "pd.DataFrame") -> "pd.DataFrame":
        rows = frame[columns].to_dict("records")
        merged = merge_rows(rows, config)
        out = pd.DataFrame(merged, columns=columns)
        out["splt"] = [list(map(int, s)) for s in out["splt"]]
        return out
    return run


def _finalize_task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        table = pa.Table.from_batches([batch])
        if table.num_rows:
            yield from finalize(table).to_batches()


def _quarantine(archive_file: Path, quarantine_dir: Path, capture_file: str) -> str | None:
    """Copy a bad file into quarantine (the archive is never touched); returns the copy."""
    target = quarantine_dir / capture_file
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(archive_file, target)
        return str(target)
    except OSError as exc:
        log.error("could not quarantine %s: %s", archive_file, exc)
        return None


def _summary(stats: list[dict], errors: list[dict], flows: int) -> dict:
    skipped = {r: sum(s[f"skipped_{r}"] for s in stats) for r in schema.SKIP_REASONS}
    return {
        "files": len(stats),
        "files_bad": sum(1 for s in stats if s["status"] != "ok"),
        "packets_read": sum(s["packets_read"] for s in stats),
        "packets_in_flows": sum(s["packets_in_flows"] for s in stats),
        "packets_skipped": sum(s["packets_skipped"] for s in stats),
        "skipped": skipped,
        "flows": flows,
        "errors": len(errors),
    }


def _finish_night(archive: Path, date: str, wh: Path, files: list[Path],
                  stats: list[dict], errors: list[dict]) -> None:
    """Quarantine bad files, fill ``quarantine_path`` and write the two ingest tables."""
    by_name = {f.relative_to(archive).as_posix(): f for f in files}
    qdir = Path(wh) / "quarantine" / f"date={date}"
    bad = {s["capture_file"] for s in stats if s["status"] != "ok"}
    bad |= {e["capture_file"] for e in errors if e["fatal"]}
    copies = {name: _quarantine(by_name[name], qdir, name) for name in sorted(bad)
              if name in by_name}
    for e in errors:
        e["quarantine_path"] = copies.get(e["capture_file"])
    stats_table = pa.Table.from_pylist(stats, schema=schema.INGEST_STATS) if stats \
        else schema.empty_table("ingest_stats")
    errors_table = pa.Table.from_pylist(errors, schema=schema.INGEST_ERRORS) if errors \
        else schema.empty_table("ingest_errors")
    store.write_arrow_partition(stats_table, wh, "ingest_stats", date=date)
    store.write_arrow_partition(errors_table, wh, "ingest_errors", date=date)


def extract_night(spark, archive: Path, date: str, warehouse: Path,
                  config: FlowConfig = FlowConfig()) -> dict:
    """Extract one night with Spark; write flows, ingest_stats, ingest_errors atomically.

    Returns a summary: ``files``, ``files_bad``, ``packets_read``, ``packets_in_flows``,
    ``packets_skipped``, ``skipped`` (by reason), ``flows``, ``errors``.
    """
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    archive = Path(archive)
    files = list_capture_files(archive, date)
    night = archive / date
    names = [f.relative_to(archive).as_posix() for f in files]
    log.info("extract %s: %d capture files under %s", date, len(files), night)
    if not files:
        _finish_night(archive, date, warehouse, [], [], [])
        store.write_arrow_partition(schema.empty_table("flows"), warehouse, "flows",
                                        date=date)
        return _summary([], [], 0)
    paths = spark.createDataFrame(
        [(str(f.resolve()), n) for f, n in zip(files, names)], "path string, capture_file string"
    ).repartition(len(files))
    task_schema = from_arrow_schema(TASK_SCHEMA)
    emitted = paths.mapInArrow(_file_task(config), task_schema).persist(
        StorageLevel.MEMORY_AND_DISK)
    try:
        metas = [json.loads(r[_META]) for r in
                 emitted.where(F.col(_META).isNotNull()).select(_META).collect()]
        stats = sorted((m["stats"] for m in metas), key=lambda s: s["capture_file"])
        errors = [e for m in metas for e in m["errors"]]
        partial = emitted.where(F.col(_META).isNull()).drop(_META)
        key_cols = ["ipver", "proto", "vlan", "k_a0", "k_a1", "k_ap", "k_b0", "k_b1", "k_bp"]
        a_first = (F.struct("s0", "s1", "sport") <= F.struct("d0", "d1", "dport"))
        keyed = partial
        for name, (when_a, when_b) in {"k_a0": ("s0", "d0"), "k_a1": ("s1", "d1"),
                                       "k_ap": ("sport", "dport"), "k_b0": ("d0", "s0"),
                                       "k_b1": ("d1", "s1"), "k_bp": ("dport", "sport")}.items():
            keyed = keyed.withColumn(name, F.when(a_first, F.col(when_a)).otherwise(
                F.col(when_b)))
        # a key needs merging only if it has a flow left open at some file's end and
        # more than one partial flow in the night

        w = Window.partitionBy(*key_cols)
        keyed = keyed.withColumn("_n", F.count(F.lit(1)).over(w)).withColumn(
            "_open", F.max((F.col("reason") == R_EOC).cast("int")).over(w))
        needs = (F.col("_n") > 1) & (F.col("_open") == 1)
        columns = [f.name for f in PARTIAL_SCHEMA]
        alone = keyed.where(~needs).select(*columns)
        merged = keyed.where(needs).select(*columns, *key_cols[3:]).groupBy(*key_cols) \
            .applyInPandas(_merge_group(config), from_arrow_schema(PARTIAL_SCHEMA))
        flows = alone.unionByName(merged).mapInArrow(_finalize_task,
                                                     schema.spark_schema("flows"))
        flows_path = store.write_spark_partition(flows, warehouse, "flows", date=date)
    finally:
        emitted.unpersist()
    flow_table = store.read_arrow_partition(warehouse, "flows", date=date)
    per_file = dict(zip(*np.unique(np.asarray(flow_table.column("capture_file").to_pylist(),
                                              dtype=object).astype(str), return_counts=True))) \
        if flow_table.num_rows else {}
    for s in stats:
        s["flows"] = int(per_file.get(s["capture_file"], 0))
    _finish_night(archive, date, warehouse, files, stats, errors)
    summary = _summary(stats, errors, flow_table.num_rows)
    log.info("extract %s -> %s: %s", date, flows_path, summary)
    return summary


def extract_night_local(archive: Path, date: str, warehouse: Path,
                        config: FlowConfig = FlowConfig()) -> dict:
    """The same extraction in this process without Spark (tests, small archives, tools)."""
    archive = Path(archive)
    files = list_capture_files(archive, date)
    partials, stats, errors = [], [], []
    for f in files:
        flows, st, er = process_file(f, f.relative_to(archive).as_posix(), config)
        partials.append(flows)
        stats.append(st)
        errors.extend(er)
    partial = pa.concat_tables(partials) if partials else PARTIAL_SCHEMA.empty_table()
    flows_table = finalize(merge_partial_table(partial, config)) if partial.num_rows \
        else schema.empty_table("flows")
    per_file: dict[str, int] = {}
    for name in flows_table.column("capture_file").to_pylist():
        per_file[name] = per_file.get(name, 0) + 1
    for s in stats:
        s["flows"] = per_file.get(s["capture_file"], 0)
    store.write_arrow_partition(flows_table, warehouse, "flows", date=date)
    _finish_night(archive, date, warehouse, files, stats, errors)
    return _summary(stats, errors, flows_table.num_rows)
