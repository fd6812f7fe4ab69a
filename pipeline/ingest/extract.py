"""Night extraction: an archive date's capture files -> flows, ingest_stats, ingest_errors.

Spark distributes the files (a DataFrame of paths, ``mapInArrow``);
each file is read streaming (``pipeline.ingest.capture.reader``) and assembled into mergeable
partial flows (``pipeline.ingest.flows``), which the task finalises and writes itself, as Parquet
files in the flows partition's staging directory, except those that may straddle a file
boundary (left open at a file's end, or starting within the idle timeout of a file's first
packet): those travel to the driver as Arrow IPC blobs and are merged per key there, so
rotated files of one night give the same flows as one file; they are few (bounded by the
flows open at rotation times). Only those blobs and each file's accounting pass through
Spark; the partition is swapped in once the driver has written the merged flows. The
warehouse must therefore be a path every executor can write (as for Spark's own writes).
Bad files never fail the night: their problems go to ``ingest_errors`` and a copy of the
file to ``<warehouse>/quarantine/date=D/``; the archive is only ever read.

An uncompressed capture larger than ``FlowConfig.split_bytes`` is read as byte ranges
(``pipeline.ingest.split``) by parallel tasks (files and ranges are dealt to at most
``TASKS_PER_CORE`` tasks per unit of Spark's default parallelism, largest first): each
range writes its settled flows like a file's task and returns its seam (accounting, the packets of flows that may continue across its
start, the flows open at its end); the driver re-reads any range that did not begin where
the one before it ended, then joins each file's ranges into its flows, one
``ingest_stats`` row and its ``ingest_errors`` rows, exactly as one task reads the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ingest.capture import decode
from pipeline.ingest.capture.reader import CaptureReader
from pipeline.ingest.flows import (
    PARTIAL_SCHEMA, R_EOC, FlowAssembler, FlowConfig, expire_at_night_end, finalize, merge_partial_table,
)
from pipeline.ingest.split import (
    RangePart, RangeSeam, check_ranges, join_ranges, plan_ranges,
)
from pipeline.store import schema
from pipeline.store import warehouse as store

log = logging.getLogger(__name__)

CAPTURE_NAME = re.compile(r".*\.(pcap|pcapng|cap)(\.gz)?$", re.IGNORECASE)
DATE_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}$")

__all__ = ["FlowConfig", "FileScan", "list_capture_files", "process_file", "read_file_split",
           "extract_night", "extract_night_local"]


def list_capture_files(archive: Path, date: str) -> list[Path]:
    """``<archive>/<date>/**/*.{pcap,pcapng,cap}[.gz]``, sorted by archive-relative name.

    Every entry named like a capture is listed, whatever it is: a directory, a pipe or a
    broken link named ``x.pcap`` is not silently skipped but read by ``FileScan``, which
    reports it in ``ingest_errors`` (captures inside such a directory are listed too).
    Raises ``ValueError`` for a date not in ``YYYY-MM-DD`` form; returns ``[]`` when the
    night's folder does not exist.
    """
    if not DATE_FORMAT.match(date):
        raise ValueError(f"date must be YYYY-MM-DD, got {date!r}")
    night = Path(archive) / date
    if not night.is_dir():
        return []
    files = [p for p in night.rglob("*") if CAPTURE_NAME.match(p.name)]
    return sorted(files, key=lambda p: p.relative_to(night).as_posix())


def _regular_file_bytes(path: Path) -> int:
    """Size of a regular file (following links); 0 for anything else or an unreadable path."""
    try:
        st = path.stat()
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


# ------------------------------------------------------------------ one file
def _empty_stats(capture_file: str, file_bytes: int) -> dict:
    stats = {f.name: 0 for f in schema.INGEST_STATS}
    stats.update(capture_file=capture_file, file_bytes=file_bytes, file_format="unknown",
                 link_types="", status="ok", first_packet_ms=None, last_packet_ms=None)
    return stats


class FileScan:
    """One capture file read streaming into partial flows, with its accounting.

    Iterate ``scan.flows()`` for ``flows.PARTIAL_SCHEMA`` tables as flows end (flows open
    at the end come last with reason ``end_of_capture``); afterwards ``scan.stats`` is
    one ``schema.INGEST_STATS`` row (``flows`` = this file's flows before cross-file
    merging) and ``scan.errors`` the ``schema.INGEST_ERRORS`` rows (``quarantine_path``
    still empty; ``packets_after``: packets read after the problem). Damaged ranges the
    reader skipped make the file ``partial``, as does a fatal error after some packets.
    Memory: one read chunk + the open flows + ``flush_flows`` finished ones. Never raises
    on bad input.

    With ``part`` (a byte range of the file, ``split.RangePart``): only the records that
    start in the range are read; the flows are its settled ones, the stats and errors
    its own (``packets_after`` within the range), and ``range_seam`` (after the flows)
    holds what ``split.join_ranges`` needs from it.
    """

    flush_flows = 10_000

    def __init__(self, path: str | Path, capture_file: str, config: FlowConfig = FlowConfig(),
                 part: RangePart | None = None):
        self.path = Path(path)
        self.capture_file = capture_file
        self.config = config
        self.part = part
        """A byte range of the file (``pipeline.ingest.split``): its records only, flows
        that may continue across the range's edges held back (``range_seam``)."""
        self.stats = _empty_stats(capture_file, _regular_file_bytes(self.path))
        self.errors: list[dict] = []
        self.first_packet_us: int | None = None  # earliest timestamp read so far (us)
        self.range_seam: RangeSeam | None = None

    def flows(self) -> Iterator[pa.Table]:
        config, capture_file, part = self.config, self.capture_file, self.part
        reader = CaptureReader(self.path, chunk_bytes=config.chunk_bytes,
                               batch_rows=config.batch_rows,
                               window=None if part is None else part.window)
        assembler = FlowAssembler(config) if part is None else part.assembler(config)
        status_counts = np.zeros(len(schema.SKIP_REASONS) + 1, dtype=np.int64)
        fragments = flows = 0
        first_us, last_us, first_ok_us = None, None, None
        for P in reader.batches():
            status = P[:, decode.STATUS]
            status_counts += np.bincount(status, minlength=len(status_counts))
            fragments += int(np.count_nonzero((status == decode.OK)
                                              & (P[:, decode.FRAG] != decode.NOT_FRAGMENT)))
            ts = P[:, decode.TS]
            first_us = int(ts.min()) if first_us is None else min(first_us, int(ts.min()))
            self.first_packet_us = first_us
            last_us = int(ts.max()) if last_us is None else max(last_us, int(ts.max()))
            if first_ok_us is None and status_counts[decode.OK]:
                first_ok_us = int(ts[np.flatnonzero(status == decode.OK)[0]])
            assembler.add(P)
            if assembler.pending_flows >= self.flush_flows:
                table = assembler.take(capture_file)
                flows += table.num_rows
                yield table
        if part is None:
            assembler.finish()
        else:
            still_open = assembler.detach_open(capture_file)
        table = assembler.take(capture_file)
        flows += table.num_rows
        yield table
        stats, info = self.stats, reader.info
        stats["file_format"] = info.file_format
        stats["link_types"] = ",".join(str(t) for t in sorted(info.link_types))
        stats["packets_read"] = int(status_counts.sum())
        stats["packets_in_flows"] = int(status_counts[decode.OK])
        stats["packets_skipped"] = int(status_counts[1:].sum())
        for i, reason in enumerate(schema.SKIP_REASONS, start=1):
            stats[f"skipped_{reason}"] = int(status_counts[i])
        stats["ip_fragment_packets"] = fragments
        stats["flows"] = flows
        stats["first_packet_ms"] = None if first_us is None else first_us // 1000
        stats["last_packet_ms"] = None if last_us is None else last_us // 1000
        stats["last_packet_us"] = last_us  # not a table column: for the night's end
        stats["bytes_skipped"] = info.bytes_skipped
        stats["resyncs"] = info.resyncs
        if any(e.fatal or e.byte_length for e in info.errors):
            stats["status"] = "partial" if stats["packets_read"] > 0 else "quarantined"
        self.errors = [dict(capture_file=capture_file, byte_offset=e.byte_offset,
                            reason=e.reason, fatal=e.fatal, quarantine_path=None,
                            byte_length=e.byte_length,
                            packets_after=stats["packets_read"] - e.packets_before)
                       for e in info.errors]
        if part is not None:
            self.range_seam = RangeSeam.collect(part, reader, assembler, still_open, first_us,
                                                first_ok_us)


def read_file_split(path: str | Path, capture_file: str, config: FlowConfig,
                    parts: list[RangePart] | None = None):
    """One file's byte ranges (``split.plan_ranges``, or ``parts``) read one after another
    in this process, re-read until their chain holds: ``(settled flows, seams)`` for
    ``split.join_ranges``; None when the file is to be read whole."""
    parts = parts if parts is not None else plan_ranges(path, capture_file, config)
    if parts is None:
        return None
    done: dict[int, tuple[pa.Table, RangeSeam]] = {}
    todo = list(parts)
    while todo:
        for part in todo:
            scan = FileScan(path, capture_file, config, part)
            tables = [t for t in scan.flows() if t.num_rows]
            seam = scan.range_seam
            seam.stats, seam.errors = scan.stats, scan.errors
            settled = pa.concat_tables(tables) if tables else PARTIAL_SCHEMA.empty_table()
            seam.flows_written = settled.num_rows
            done[part.index] = (settled, seam)
        seams = [done[k][1] for k in sorted(done)]
        todo = check_ranges(seams, config)
        if todo is None:
            return None
    settled = [done[k][0] for k in sorted(done)]
    return pa.concat_tables(settled), [done[k][1] for k in sorted(done)]


def process_file(path: str | Path, capture_file: str, config: FlowConfig = FlowConfig()
                 ) -> tuple[pa.Table, dict, list[dict]]:
    """``FileScan`` collected: ``(partial_flows, stats, errors)`` for one file."""
    scan = FileScan(path, capture_file, config)
    flows = pa.concat_tables(list(scan.flows()))
    return flows, scan.stats, scan.errors


# ------------------------------------------------------------------ Spark plumbing
_META = "meta"
_BOUNDARY = "boundary_flows"
_PART = "part"
_SEAM_KIND = "seam_kind"
_SEAM = "seam"
SIDE_SCHEMA = pa.schema([pa.field(_META, pa.string()), pa.field(_BOUNDARY, pa.binary()),
                         pa.field(_PART, pa.string()), pa.field(_SEAM_KIND, pa.string()),
                         pa.field(_SEAM, pa.binary())])
"""What a task returns to the driver (its final flows it writes itself): rows whose
``boundary_flows`` holds an Arrow IPC stream of partial flows that may continue in another
file, and one row whose ``meta`` holds the file's stats, errors and flows written. A byte
range's task (``part``: its key) sends ``seam`` pieces instead of the meta row
(``split.RangeSeam.blobs``: its accounting, the packets of its tentative flows, the flows
open at its end)."""
BOUNDARY_CHUNK_FLOWS = 20_000


def boundary_mask(partial: pa.Table, first_packet_us: int, config: FlowConfig) -> np.ndarray:
    """``[flows]`` bool: the partial flows that may continue across a file boundary.

    A flow can only continue in another file if it was left open at its file's end
    (reason ``end_of_capture``) or starts within the idle timeout of the file's first
    packet (``first_packet_us``, rounded up to the next ms, so an earlier packet found
    later in the file can only enlarge the set; extra boundary flows merge with nothing).
    """
    horizon = (first_packet_us // 1000 + 1) * 1000 + int(config.idle_timeout_s * 1e6)
    reason = partial.column("reason").to_numpy()
    first = partial.column("bidirectional_first_us").to_numpy()
    return (reason == R_EOC) | (first < horizon)


def _side_rows(meta: str | None = None, boundary: pa.Table | None = None, part: str | None = None,
               seam: tuple[str, bytes] | None = None) -> pa.RecordBatch:
    blob = None
    if boundary is not None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, PARTIAL_SCHEMA) as writer:
            writer.write_table(boundary)
        blob = sink.getvalue().to_pybytes()
    kind, piece = seam if seam is not None else (None, None)
    return pa.RecordBatch.from_pydict({_META: [meta], _BOUNDARY: [blob], _PART: [part],
                                       _SEAM_KIND: [kind], _SEAM: [piece]}, schema=SIDE_SCHEMA)


def _final_batches(partial: pa.Table) -> Iterator[pa.RecordBatch]:
    """Finalised flows of ``partial`` as ``schema.FLOWS`` batches."""
    if partial.num_rows:
        yield from schema.conform("flows", finalize(partial)).to_batches(max_chunksize=50_000)


def file_part_stem(capture_file: str) -> str:
    """The flows files of one capture file: ``part-<16 hex of its name's SHA-1>``
    (deterministic, so a retried task replaces its own files and nobody else's)."""
    return "part-" + hashlib.sha1(capture_file.encode()).hexdigest()[:16]


def write_file_flows(partials: Iterable[pa.Table], first_packet_us: Callable[[], int], config: FlowConfig,
                     staging: str | Path, stem: str) -> tuple[int, pa.Table, Exception | None]:
    """Finalise and write one file's flows as ``<staging>/<stem>-NNNNN.parquet``, except those
    that may continue in another file (:func:`boundary_mask`; ``first_packet_us()`` is the
    file's earliest timestamp read so far).

    Returns ``(flows written, boundary partial flows, error)``: ``error`` is the exception
    that ended ``partials`` early (a bug must not lose the night: what came before it is
    written and counted), else None. Errors of the writer itself propagate.
    """
    boundary: list[pa.Table] = []
    failure: list[Exception] = []

    def final_flows() -> Iterator[pa.RecordBatch]:
        try:
            for partial in partials:
                if not partial.num_rows:
                    continue
                edge = boundary_mask(partial, first_packet_us(), config)
                boundary.append(partial.filter(pa.array(edge)))
                yield from _final_batches(partial.filter(pa.array(~edge)))
        except Exception as exc:
            failure.append(exc)

    written = store.write_parquet_parts(final_flows(), staging, stem, schema.FLOWS)
    edges = pa.concat_tables(boundary) if boundary else PARTIAL_SCHEMA.empty_table()
    return sum(written), edges, failure[0] if failure else None


def _file_task(config: FlowConfig, staging: str):
    """``mapInArrow`` body: each file's flows are finalised and written to ``staging`` by the
    task, except the few that may continue in another file (:func:`boundary_mask`), which
    go to the driver whole, with the file's accounting (``SIDE_SCHEMA`` rows). A row with
    a ``part`` (``split.RangePart`` JSON) is one byte range of a file (:func:`_range_rows`)."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            parts = batch.column(_PART).to_pylist() if _PART in batch.schema.names \
                else [None] * batch.num_rows
            for path, rel, part in zip(batch.column("path").to_pylist(),
                                       batch.column("capture_file").to_pylist(), parts):
                if part is not None:
                    yield from _range_rows(path, rel, part, config, staging)
                    continue
                scan = FileScan(path, rel, config)
                # a failure to write (disk, permissions) is not the capture's fault: it
                # raises here and fails the task; a failing scan is reported against the file
                written, edges, failure = write_file_flows(
                    scan.flows(), lambda: scan.first_packet_us, config, staging, file_part_stem(rel))
                stats, errors = scan.stats, scan.errors
                if failure is not None:
                    log.error("failed on %s", path, exc_info=failure)
                    stats = dict(scan.stats, status="partial")
                    errors = scan.errors + [dict(
                        capture_file=rel, byte_offset=0, fatal=True, quarantine_path=None,
                        reason=f"internal error: {type(failure).__name__}: {failure}")]
                for start in range(0, edges.num_rows, BOUNDARY_CHUNK_FLOWS):
                    yield _side_rows(boundary=edges.slice(start, BOUNDARY_CHUNK_FLOWS))
                yield _side_rows(meta=json.dumps(
                    {"stats": stats, "errors": errors, "flows_written": written}))
    return run


def _range_rows(path: str, rel: str, part_json: str, config: FlowConfig, staging: str
                ) -> Iterator[pa.RecordBatch]:
    """One byte range read by a task: its settled flows written to ``staging`` (those that
    may continue in another file excepted), the rest to the driver as seam pieces. A
    failing scan is reported as failed: the driver then reads the file whole, where the
    failure is reported against the file like any other."""
    part = RangePart.from_json(part_json)
    scan = FileScan(path, rel, config, part)
    written, edges, failure = write_file_flows(
        scan.flows(), lambda: scan.first_packet_us, config, staging,
        file_part_stem(rel) + part.stem_suffix)
    seam = scan.range_seam
    if failure is not None or seam is None:
        log.error("failed on byte range %d of %s", part.index, path, exc_info=failure)
        seam, edges = RangeSeam.failed(part, f"{type(failure).__name__}: {failure}"), edges.slice(0, 0)
    else:
        seam.stats, seam.errors, seam.flows_written = scan.stats, scan.errors, written
    for start in range(0, edges.num_rows, BOUNDARY_CHUNK_FLOWS):
        yield _side_rows(boundary=edges.slice(start, BOUNDARY_CHUNK_FLOWS), part=part.key)
    for piece in seam.blobs():
        yield _side_rows(part=part.key, seam=piece)


def _quarantine(archive_file: Path, quarantine_dir: Path, capture_file: str) -> str | None:
    """Copy a bad file into quarantine (the archive is never touched); returns the copy, or
    None when there is nothing to copy (not a regular file: its error row says so)."""
    if not archive_file.is_file():
        return None
    target = quarantine_dir / capture_file
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(archive_file, target)
        return str(target)
    except OSError as exc:
        log.error("could not quarantine %s: %s", archive_file, exc)
        return None


def _night_last_us(stats: list[dict]) -> int | None:
    ends = [s.get("last_packet_us") for s in stats if s.get("last_packet_us") is not None]
    return max(ends) if ends else None


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
    copies = {name: _quarantine(by_name[name], qdir, by_name[name].relative_to(
        Path(archive) / date).as_posix()) for name in sorted(bad) if name in by_name}
    for e in errors:
        e["quarantine_path"] = copies.get(e["capture_file"])
    stats_table = pa.Table.from_pylist(stats, schema=schema.INGEST_STATS) if stats \
        else schema.empty_table("ingest_stats")
    errors_table = pa.Table.from_pylist(errors, schema=schema.INGEST_ERRORS) if errors \
        else schema.empty_table("ingest_errors")
    store.write_arrow_partition(stats_table, wh, "ingest_stats", date=date)
    store.write_arrow_partition(errors_table, wh, "ingest_errors", date=date)


class _NightResults:
    """What the tasks of a night returned, gathered on the driver: each whole file's
    accounting, boundary flows (by the range that sent them, so a re-read range's are
    replaced) and the byte ranges' seams (``{capture_file: {index: RangeSeam}}``)."""

    def __init__(self):
        self.metas: list[dict] = []
        self.edges: dict[str | None, list[bytes]] = {}
        self.seams: dict[str, dict] = {}

    def add(self, side: pa.Table) -> None:
        pieces: dict[str, list] = {}
        for meta, boundary, part, kind, seam in zip(*(side.column(c).to_pylist() for c in SIDE_SCHEMA.names)):
            if meta is not None:
                self.metas.append(json.loads(meta))
            if boundary is not None:
                self.edges.setdefault(part, []).append(boundary)
            if kind is not None:
                pieces.setdefault(part, []).append((kind, seam))
        for key, parts in pieces.items():
            seam = RangeSeam.from_blobs(parts)
            self.seams.setdefault(seam.part.capture_file, {})[seam.part.index] = seam

    def drop(self, key: str) -> None:
        self.edges.pop(key, None)


def _task_bytes(task: tuple[str, str, str | None]) -> int:
    """Bytes a task reads: its byte range, else its file."""
    path, _name, part = task
    if part is not None:
        d = json.loads(part)
        return (d["stop"] if d["stop"] is not None else _regular_file_bytes(Path(path))) - d["start"]
    return _regular_file_bytes(Path(path))


TASKS_PER_CORE = 2
"""Spark tasks per unit of default parallelism: work items (files, byte ranges) are dealt
to at most this many times ``defaultParallelism`` tasks, because a ``mapInArrow`` task
costs ~80 ms to start (measured on ``local[2]``), a tenth of a 256 MiB range's reading."""


def _run_tasks(spark, tasks: list[tuple[str, str, str | None]], config: FlowConfig,
               staging: Path) -> pa.Table:
    """One Spark job over work items ``(path, capture_file, part JSON or None)``: dealt
    round-robin, largest first, to at most ``TASKS_PER_CORE x defaultParallelism`` tasks
    (each reads its items one after another), so the tasks carry about equal bytes and a
    big file or range does not start last."""
    from pyspark.sql.pandas.types import from_arrow_schema

    ordered = sorted(tasks, key=_task_bytes, reverse=True)
    count = min(len(ordered), TASKS_PER_CORE * spark.sparkContext.defaultParallelism)
    dealt = [ordered[j::count] for j in range(count)]
    rdd = spark.sparkContext.parallelize(dealt, count).flatMap(lambda items: items)
    rows = spark.createDataFrame(rdd, "path string, capture_file string, part string")
    return rows.mapInArrow(_file_task(config, str(staging.resolve())),
                           from_arrow_schema(SIDE_SCHEMA)).toArrow()


def _remove_parts(staging: Path, stem: str) -> None:
    for old in staging.glob(f"{stem}-*.parquet"):
        old.unlink()


def _settle_ranges(results: _NightResults, split: dict[str, list], run, staging: Path,
                   config: FlowConfig) -> None:
    """Re-read the byte ranges that did not begin where the range before them ended (and
    read whole the files whose ranges cannot be checked) until every split file's chain
    holds (``split.check_ranges``); ``run(tasks)`` runs a round of tasks."""
    while True:
        tasks = []
        for name in sorted(split):
            seams = results.seams[name]
            again = check_ranges([seams[k] for k in sorted(seams)], config)
            if again is None:
                log.info("%s: read whole (its byte ranges cannot be checked)", name)
                for seam in seams.values():
                    results.drop(seam.part.key)
                    _remove_parts(staging, file_part_stem(name) + seam.part.stem_suffix)
                del results.seams[name]
                tasks.append((split.pop(name)[0].path, name, None))
                continue
            for part in again:
                old = seams[part.index].part
                results.drop(old.key)
                _remove_parts(staging, file_part_stem(name) + old.stem_suffix)
                tasks.append((part.path, name, part.to_json()))
        if not tasks:
            return
        log.info("extract: reading %d byte ranges / files again", len(tasks))
        results.add(run(tasks))


def _join_split_files(results: _NightResults, split: dict[str, list], config: FlowConfig,
                      staging: Path) -> tuple[list[dict], list[pa.Table]]:
    """Each split file's ranges joined (``split.join_ranges``): its metas (accounting,
    flows written here) and the flows that may continue in another file."""
    metas, edges = [], []
    for name in sorted(split):
        seams = results.seams[name]
        ordered = [seams[k] for k in sorted(seams)]
        flows, stats, errors, first_us = join_ranges(ordered, config)
        written = sum(seam.flows_written for seam in ordered)
        if flows.num_rows:
            edge = boundary_mask(flows, first_us, config)
            edges.append(flows.filter(pa.array(edge)))
            written += sum(store.write_parquet_parts(_final_batches(flows.filter(pa.array(~edge))),
                                                     staging, file_part_stem(name) + "-seams",
                                                     schema.FLOWS))
        log.info("%s: %d byte ranges joined, %d flows rebuilt from %d packets of flows "
                 "crossing range starts", name, len(ordered), flows.num_rows,
                 sum(len(seam.packets) for seam in ordered))
        metas.append({"stats": stats, "errors": errors, "flows_written": written})
    return metas, edges


def extract_night(spark, archive: Path, date: str, warehouse: Path,
                  config: FlowConfig = FlowConfig()) -> dict:
    """Extract one night with Spark; write flows, ingest_stats, ingest_errors atomically.

    Work items are the capture files, or the byte ranges of an uncompressed capture
    larger than ``config.split_bytes`` (``pipeline.ingest.split``: the tables are the same
    either way), dealt to Spark tasks by :func:`_run_tasks`.
    Returns a summary: ``files``, ``files_bad``, ``packets_read``, ``packets_in_flows``,
    ``packets_skipped``, ``skipped`` (by reason), ``flows``, ``errors``.
    """
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
    tasks, split = [], {}
    parallelism = spark.sparkContext.defaultParallelism
    for f, name in zip(files, names):
        path = str(f.resolve())
        parts = plan_ranges(path, name, config, parallelism)
        if parts is None:
            tasks.append((path, name, None))
        else:
            split[name] = parts
            tasks += [(path, name, part.to_json()) for part in parts]
    if split:
        log.info("extract %s: %d files split into %d byte ranges of at most %d bytes", date,
                 len(split), sum(len(p) for p in split.values()), config.split_bytes)
    with store.staged_partition(warehouse, "flows", date=date) as staging:
        results = _NightResults()
        clock = time.perf_counter()
        results.add(_run_tasks(spark, tasks, config, staging))
        seconds = {"tasks": time.perf_counter() - clock}
        _settle_ranges(results, split, lambda again: _run_tasks(spark, again, config, staging),
                       staging, config)
        seconds["re-reads"] = time.perf_counter() - clock - seconds["tasks"]
        split_metas, split_edges = _join_split_files(results, split, config, staging)
        seconds["range joins"] = time.perf_counter() - clock - sum(seconds.values())
        metas = results.metas + split_metas
        stats = sorted((m["stats"] for m in metas), key=lambda s: s["capture_file"])
        errors = [e for m in metas for e in m["errors"]]
        per_file = {m["stats"]["capture_file"]: int(m["flows_written"]) for m in metas}
        blobs = [b for group in results.edges.values() for b in group]
        edge = pa.concat_tables([pa.ipc.open_stream(b).read_all() for b in blobs] + split_edges) \
            if blobs or split_edges else PARTIAL_SCHEMA.empty_table()
        edge = expire_at_night_end(merge_partial_table(edge, config), _night_last_us(stats), config)
        log.info("extract %s: %d boundary flows merged on the driver (%s)", date, edge.num_rows,
                 ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        merged = schema.conform("flows", finalize(edge)) if edge.num_rows else schema.empty_table("flows")
        for name in merged.column("capture_file").to_pylist():
            per_file[name] = per_file.get(name, 0) + 1
        if merged.num_rows or not sum(per_file.values()):  # an empty night still has a schema
            pq.write_table(merged, staging / "part-boundary-00000.parquet", compression="zstd")
    flows_path = store.partition_path(warehouse, "flows", date=date)
    for s in stats:
        s["flows"] = per_file.get(s["capture_file"], 0)
    _finish_night(archive, date, warehouse, files, stats, errors)
    summary = _summary(stats, errors, sum(per_file.values()))
    log.info("extract %s -> %s: %s", date, flows_path, summary)
    return summary


def extract_night_local(archive: Path, date: str, warehouse: Path,
                        config: FlowConfig = FlowConfig()) -> dict:
    """The same extraction in this process without Spark (tests, small archives, tools);
    byte ranges of a large file are read one after another."""
    archive = Path(archive)
    files = list_capture_files(archive, date)
    partials, stats, errors = [], [], []
    for f in files:
        name = f.relative_to(archive).as_posix()
        ranges = read_file_split(f, name, config)
        if ranges is None:
            flows, st, er = process_file(f, name, config)
        else:
            settled, seams = ranges
            joined, st, er, _first = join_ranges(seams, config)
            flows = pa.concat_tables([settled, joined])
        partials.append(flows)
        stats.append(st)
        errors.extend(er)
    partial = pa.concat_tables(partials) if partials else PARTIAL_SCHEMA.empty_table()
    flows_table = finalize(expire_at_night_end(merge_partial_table(partial, config),
                                               _night_last_us(stats), config)) \
        if partial.num_rows else schema.empty_table("flows")
    per_file: dict[str, int] = {}
    for name in flows_table.column("capture_file").to_pylist():
        per_file[name] = per_file.get(name, 0) + 1
    for s in stats:
        s["flows"] = per_file.get(s["capture_file"], 0)
    store.write_arrow_partition(flows_table, warehouse, "flows", date=date)
    _finish_night(archive, date, warehouse, files, stats, errors)
    return _summary(stats, errors, flows_table.num_rows)
