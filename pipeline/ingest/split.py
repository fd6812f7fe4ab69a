"""Byte-range splitting: one large capture read by parallel tasks, tables as one task's.

A classic pcap or pcapng file larger than ``FlowConfig.split_bytes`` is cut into equal
byte ranges of at most that size (:func:`plan_ranges`; gzip is not splittable: one task
per ``.gz`` file, with a warning when it is larger than ``GZIP_WARN_RANGES`` ranges). Each
range is a ``FileScan`` with a :class:`RangePart`; what crosses a range's edges comes back
to the driver as a :class:`RangeSeam`, where :func:`check_ranges` proves the ranges read
exactly what one reader reads and :func:`join_ranges` rebuilds the flows that cross range
edges.

Records. A range owns the records that *start* in ``[start, stop)``. It begins at the
first record boundary its file's framing confirms at or after ``start``
(``capture.boundary``; the bytes before it are the previous range's: no error), with the
state in force at the file's head (``capture.reader.file_head``: pcap's header and the
time window anchored on its first record; pcapng's leading Section Header and Interface
Description Blocks, read from offset 0 until the first other block). It reads on past
``stop`` to finish its last record, and a damaged stretch that starts before ``stop``, and
reports the state at the first record at or after ``stop`` (``exit``). Damage near a range
edge is therefore reported once, by the range it starts in, at its file offset.

Checking the chain. Range ``r`` read exactly what one reader reads when it began where
range ``r - 1`` ended (offset, pcapng section and interfaces, pcap first-record check) and
with the time (pcapng: for packets that take the previous one's time), the latest packet
time and the first-fragment ports in force there. The first range always does; any
other that did not (a resynchronisation that confirmed a boundary inside a record, a
pcapng file whose later SHB / IDB changed the interfaces, timestamps that go back more
than ``SEAM_SLACK_S`` across an edge, fragments whose first fragment lies in an earlier
range) is read again from the exact state its predecessor ended with, until the whole
chain agrees (usually no second round). Multiple pcapng sections are handled that way:
every range after a second SHB (or an IDB after the head) is read twice, the second time
with the section state its predecessor ended in; merged multi-section files therefore
split at up to twice the work. A file whose first fragments could overflow
``max_open_fragments`` (the table is cleared then), or with a range whose scan failed, is
read whole by one task instead.

Flows. A range after the first starts with no open flows, so a flow open at its start
would be missed: flows that start within ``idle_timeout_s + SEAM_SLACK_S`` (capture
time) of the range's first packet are *tentative* (``flows.assemble``), and so are the
flows they are cut into until an idle gap; tentative flows are not written, their
packets (decoded rows, resolved ports, the range's running latest time) go to the
driver. There :func:`join_ranges` replays them range by range onto the flows still open
at the previous range's end (which each range hands over whole): the same kernel, the
same packet order and clock, so flows that cross range edges (including active-timeout
cuts and a SYN after FIN) come out as one reader makes them, bit for bit. Settled flows
are written by their range task like a file's; flows that may continue into another
*file* go to the night's merge as before. Memory on the driver: the packets of flows
active at range starts until their first idle gap (a long bulk flow sends all of its
packets in every range it spans).

In this process, ``extract.read_file_split`` reads a file's ranges one after another
(tests, ``extract_night_local``); ``extract_night`` gives each to a Spark task.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.ingest.capture import decode
from pipeline.ingest.capture.reader import (
    GZIP_MAGIC, PCAP_MAGICS, PCAPNG_MAGIC, CaptureReader, PcapngSection, ReadState, ReadWindow,
)
from pipeline.ingest.flows import PARTIAL_SCHEMA, FlowAssembler, FlowConfig
from pipeline.store import schema

log = logging.getLogger(__name__)

GZIP_WARN_RANGES = 4
"""A ``.gz`` capture larger than this many ranges (``split_bytes`` each) is logged as a
warning: gzip streams cannot be split, so one task reads it alone."""
SEAM_SLACK_S = 60.0
"""How far timestamps may go back across a range's start without a re-read (s): flows
starting in a range's first ``idle_timeout_s + SEAM_SLACK_S`` (capture time) are
tentative, and the driver replays them with the clock of the ranges before."""
PACKETS_PER_BLOB = 200_000
"""Recorded packets per Arrow IPC blob sent to the driver."""
_REC_NAMES = [f"c{j}" for j in range(decode.NCOL + 1)]
_FRAG_NAMES = ["s0", "s1", "d0", "d1", "proto", "ip_id"]


# ------------------------------------------------------------------ planning
@dataclass(frozen=True)
class RangePart:
    """One byte range of a capture file for one task.

    ``start`` / ``stop``: file offsets (``stop`` None: to the end). ``entry``: the reader
    state to begin with (None: resynchronise from ``start``); ``runmax_us`` and
    ``fragments`` (``((s0, s1, d0, d1, proto, ip_id, ports), ...)``): the latest packet
    time and first-fragment ports known before the range (a re-read gives them).
    ``attempt``: 0 for the first read, +1 per re-read.
    """

    capture_file: str
    path: str
    index: int
    count: int
    start: int
    stop: int | None
    attempt: int = 0
    entry: ReadState | None = None
    runmax_us: int | None = None
    fragments: tuple = ()
    section: PcapngSection | None = None

    @property
    def window(self) -> ReadWindow:
        return ReadWindow(self.start, self.stop, self.entry, self.section)

    @property
    def key(self) -> str:
        return f"{self.index}:{self.attempt}:{self.capture_file}"

    @property
    def stem_suffix(self) -> str:
        """Flows files of this read: ``<file stem>-r<index>-<attempt>``."""
        return f"-r{self.index:05d}-{self.attempt}"

    def assembler(self, config: FlowConfig) -> FlowAssembler:
        return FlowAssembler(config, record=self.index > 0, runmax_us=self.runmax_us,
                             fragments={tuple(f[:6]): f[6] for f in self.fragments},
                             slack_us=int(SEAM_SLACK_S * 1e6))

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in ("capture_file", "path", "index", "count", "start", "stop",
                                           "attempt", "runmax_us")}
        d["entry"] = None if self.entry is None else self.entry.as_dict()
        d["fragments"] = [list(f) for f in self.fragments]
        d["section"] = None if self.section is None else self.section.as_dict()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "RangePart":
        d = json.loads(text)
        entry, section = d.pop("entry"), d.pop("section")
        return cls(entry=None if entry is None else ReadState.from_dict(entry),
                   section=None if section is None else PcapngSection.from_dict(section),
                   fragments=tuple(tuple(f) for f in d.pop("fragments")), **d)


def plan_ranges(path: str | Path, capture_file: str, config: FlowConfig,
                parallelism: int = 1) -> list[RangePart] | None:
    """The byte ranges of one capture, or None when it is read whole: splitting is off
    (``split_bytes`` 0), the file is not larger than one range, not a regular file, gzip
    (logged as a warning when larger than ``GZIP_WARN_RANGES`` ranges) or not a pcap /
    pcapng file (one task reports it).

    Ranges are of equal size (to the byte), at most ``split_bytes``, and as few as
    possible whose count is a multiple of ``parallelism`` (the tasks that run at once), so
    that no wave of tasks ends with one range alone (5 GB in 256 MiB ranges on 2 cores:
    20 ranges of 250 MB, not 18 of 256 MiB and a short one).
    """
    size = config.split_bytes
    if size <= 0:
        return None
    path = Path(path)
    try:
        if not path.is_file():
            return None
        file_bytes = path.stat().st_size
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError:
        return None
    if magic[:2] == GZIP_MAGIC:
        if file_bytes > GZIP_WARN_RANGES * size:
            log.warning("%s: gzip capture of %d bytes (%.1f split ranges of %d bytes) is read by "
                        "one task: gzip streams cannot be split; store large captures "
                        "uncompressed to read them in parallel", capture_file, file_bytes,
                        file_bytes / size, size)
        return None
    if file_bytes <= size or (magic not in PCAP_MAGICS and magic != PCAPNG_MAGIC):
        return None
    count = -(-file_bytes // size)
    count = -(-count // max(parallelism, 1)) * max(parallelism, 1)
    bounds = [file_bytes * k // count for k in range(count + 1)]
    return [RangePart(capture_file, str(path), k, count, bounds[k],
                      bounds[k + 1] if k < count - 1 else None) for k in range(count)]


# ------------------------------------------------------------------ what a range returns
@dataclass
class RangeSeam:
    """What one range task hands the driver besides the flows it wrote.

    ``report``: entry / exit reader states, whether pcapng packets took the entry's time
    (``inherited_time``), ``first_packet_us`` (earliest timestamp), ``first_ok_us`` (first
    flow packet's), ``runmax_us`` (latest flow packet time at the end, entry included),
    ``first_fragments`` (first fragments seen), ``orphans_overflow``. ``packets``:
    ``[rows, NCOL + 1]`` recorded packets of tentative flows (resolved ports, then the
    running latest time). ``still_open``: settled flows open at the range's end.
    ``fragments``: first-fragment ports at the end (``{key6: ports}``); ``orphans``: keys
    of later fragments whose first fragment was not seen. ``stats`` / ``errors``: the
    range's accounting (``FileScan``'s, for its records); ``flows_written``.
    """

    part: RangePart
    report: dict
    packets: np.ndarray
    still_open: pa.Table
    fragments: dict
    orphans: set
    stats: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    flows_written: int = 0

    @classmethod
    def collect(cls, part: RangePart, reader: CaptureReader, assembler: FlowAssembler,
                still_open: pa.Table, first_packet_us: int | None, first_ok_us: int | None
                ) -> "RangeSeam":
        packets = np.concatenate(assembler.recorded) if assembler.recorded \
            else np.zeros((0, decode.NCOL + 1), np.int64)
        report = {
            "entry": reader.entry.as_dict(), "exit": reader.exit.as_dict(),
            "inherited_time": reader.inherited_time, "section_events": reader.section_events,
            "first_packet_us": first_packet_us,
            "first_ok_us": first_ok_us, "runmax_us": assembler.runmax_us,
            "first_fragments": assembler.first_fragments,
            "orphans_overflow": len(assembler.orphans) >= assembler.config.max_open_fragments,
            "tentative_flows": assembler.tentative_flows, "recorded_packets": len(packets),
        }
        return cls(part, report, packets, still_open,
                   {tuple(k): int(v) for k, v in assembler.frags.items()},
                   {tuple(k) for k in assembler.orphans.keys()})

    @classmethod
    def failed(cls, part: RangePart, reason: str) -> "RangeSeam":
        """A range whose scan failed (a bug): its file is then read whole."""
        return cls(part, {"failed": reason}, np.zeros((0, decode.NCOL + 1), np.int64),
                   PARTIAL_SCHEMA.empty_table(), {}, set())

    # -------------------------------------------------------------- transport
    def blobs(self) -> list[tuple[str, bytes]]:
        """``(kind, Arrow IPC stream)`` pieces: ``meta`` (JSON), ``packets`` (chunks),
        ``open``, ``fragments``, ``orphans``."""
        meta = json.dumps({"part": self.part.to_json(), "report": self.report, "stats": self.stats,
                           "errors": self.errors, "flows_written": self.flows_written})
        out = [("meta", meta.encode())]
        for i in range(0, max(len(self.packets), 1), PACKETS_PER_BLOB):
            chunk = self.packets[i:i + PACKETS_PER_BLOB]
            out.append(("packets", _ipc(pa.table([pa.array(chunk[:, j]) for j in range(chunk.shape[1])],
                                                 names=_REC_NAMES))))
        out.append(("open", _ipc(self.still_open)))
        keys = list(self.fragments)
        out.append(("fragments", _ipc(_key_table(keys, [self.fragments[k] for k in keys]))))
        out.append(("orphans", _ipc(_key_table(sorted(self.orphans), None))))
        return out

    @classmethod
    def from_blobs(cls, pieces: list[tuple[str, bytes]]) -> "RangeSeam":
        meta = None
        packets, still_open, fragments, orphans = [], None, {}, set()
        for kind, blob in pieces:
            if kind == "meta":
                meta = json.loads(blob.decode())
                continue
            table = pa.ipc.open_stream(blob).read_all()
            if kind == "packets":
                if table.num_rows:
                    packets.append(np.stack([table.column(c).to_numpy() for c in _REC_NAMES], axis=1))
            elif kind == "open":
                still_open = table
            elif kind == "fragments":
                keys = zip(*(table.column(c).to_pylist() for c in _FRAG_NAMES))
                fragments = dict(zip(keys, table.column("ports").to_pylist()))
            elif kind == "orphans":
                orphans = set(zip(*(table.column(c).to_pylist() for c in _FRAG_NAMES)))
        rec = np.concatenate(packets).astype(np.int64) if packets else np.zeros((0, decode.NCOL + 1), np.int64)
        return cls(RangePart.from_json(meta["part"]), meta["report"], rec, still_open, fragments,
                   orphans, meta["stats"], meta["errors"], meta["flows_written"])


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema,
                           options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _key_table(keys: list[tuple], ports: list[int] | None) -> pa.Table:
    columns = {name: pa.array([k[j] for k in keys], pa.int64()) for j, name in enumerate(_FRAG_NAMES)}
    if ports is not None:
        columns["ports"] = pa.array(ports, pa.int64())
    return pa.table(columns)


# ------------------------------------------------------------------ the driver's side
def _latest(*values):
    present = [v for v in values if v is not None]
    return max(present) if present else None


def check_ranges(seams: list[RangeSeam], config: FlowConfig) -> list[RangePart] | None:
    """The parts to read again so that every range begins exactly where its predecessor
    ended (empty: the chain holds), or None: read the file whole (more first fragments
    than ``max_open_fragments``, whose table clears when full; a range whose scan failed).
    ``seams`` in range order.

    Range ``r`` holds when its entry offset, pcap first-record check and pcapng section
    equal range ``r - 1``'s exit; its inherited pcapng time (if used) equals that exit's;
    its clock (latest time at its first flow packet) equals the one a whole-file reader
    has there; and no later fragment of it lacks ports that an earlier range's first
    fragment gives (unless it was read with those ports). A re-read part gets the exit
    state, latest time and first-fragment ports of the ranges before it. Ranges after one
    that is read again are only read again in the same round when their pcapng section
    differs from the one predicted for them (the section changed by the SHB / IDB blocks
    the ranges before reported): they resynchronise with it, so a new pcapng section does
    not cost a round per range; other differences wait for the range before to be settled.
    """
    if any("failed" in s.report for s in seams) or any(s.report["orphans_overflow"] for s in seams) \
            or sum(s.report["first_fragments"] for s in seams) > config.max_open_fragments:
        return None
    again: list[RangePart] = []
    latest, fragments, before, settled = None, {}, None, True
    for r, seam in enumerate(seams):
        ended = ReadState.from_dict(seam.report["exit"])
        if r > 0:
            entry = ReadState.from_dict(seam.report["entry"])
            why = []
            if entry.offset != before.offset:
                why.append(f"began at byte {entry.offset}, the range before ended at {before.offset}")
            elif entry.checks_start != before.checks_start:
                why.append(f"byte {entry.offset} starts the file's records")
            if entry.section != before.section:
                why.append("pcapng section / interfaces differ from the head's")
            if seam.report["inherited_time"] and entry.last_ts != before.last_ts:
                why.append("undated pcapng packets take the previous range's time")
            first_ok, entry_clock = seam.report["first_ok_us"], seam.part.runmax_us
            if (entry_clock is not None and entry_clock != latest) or (
                    first_ok is not None and latest is not None
                    and latest > _latest(entry_clock, first_ok) + int(SEAM_SLACK_S * 1e6)):
                why.append("timestamps go back across the range's start")
            seed = {tuple(f[:6]): f[6] for f in seam.part.fragments}
            if (seed and seed != fragments) or (not seed and any(o in fragments for o in seam.orphans)):
                why.append("fragments whose first fragment is in an earlier range")
            known = tuple(k + (v,) for k, v in sorted(fragments.items()))
            if why and settled:  # the range before is settled: read from its exact exit
                log.info("%s: byte range %d [%d, %s) read again: %s", seam.part.capture_file, r,
                         seam.part.start, seam.part.stop, "; ".join(why))
                again.append(replace(seam.part, attempt=seam.part.attempt + 1, entry=before,
                                     runmax_us=latest, fragments=known, section=None))
            elif why and entry.section != before.section:  # resynchronise with the predicted section
                again.append(replace(seam.part, attempt=seam.part.attempt + 1, entry=None,
                                     runmax_us=None, fragments=(), section=before.section))
            if why:
                settled = False
                if before.section is not None:  # its exit once read with that section
                    ended = replace(ended, section=before.section.after(seam.report["section_events"]))
        before = ended
        latest = _latest(latest, seam.report["runmax_us"])
        fragments.update(seam.fragments)
    return again


_COUNTERS = ("packets_read", "packets_in_flows", "packets_skipped", "ip_fragment_packets",
             "bytes_skipped", "resyncs") + tuple(f"skipped_{r}" for r in schema.SKIP_REASONS)


def join_ranges(seams: list[RangeSeam], config: FlowConfig) -> tuple[pa.Table, dict, list[dict], int | None]:
    """One file from its checked ranges: ``(flows, stats, errors, first_packet_us)``.

    ``flows``: partial flows rebuilt on the driver: every tentative flow (replayed from the
    recorded packets onto the flows open at its range's start) and the flows open at the
    file's end, as one reader makes them; the ranges' settled flows are already written.
    ``stats``: one ``ingest_stats`` row for the file (the ranges' counts summed;
    ``flows`` left for the caller). ``errors``: the ranges' errors in file order,
    ``packets_after`` counted over the whole file.
    """
    capture_file = seams[0].part.capture_file
    assembler = FlowAssembler(config)
    latest = None
    for seam in seams:
        rows = seam.packets
        for i in range(0, len(rows), config.batch_rows):
            chunk = rows[i:i + config.batch_rows]
            clock = chunk[:, decode.NCOL]  # the range's clock, behind the file's where
            if latest is not None:         # timestamps went back across its start
                clock = np.maximum(clock, latest)
            assembler.add(np.ascontiguousarray(chunk[:, :decode.NCOL]), np.ascontiguousarray(clock))
        latest = _latest(latest, seam.report["runmax_us"])
        if latest is not None:
            assembler.expire_idle(latest)
        if seam.still_open is not None:
            assembler.resume(seam.still_open)
    assembler.finish()
    flows = assembler.take(capture_file)

    stats = dict(seams[0].stats)
    for name in _COUNTERS:
        stats[name] = sum(int(s.stats.get(name) or 0) for s in seams)
    for name, pick in (("first_packet_ms", min), ("last_packet_ms", max), ("last_packet_us", max)):
        values = [s.stats.get(name) for s in seams if s.stats.get(name) is not None]
        stats[name] = pick(values) if values else None
    links = {int(t) for s in seams for t in (s.stats.get("link_types") or "").split(",") if t}
    stats["link_types"] = ",".join(str(t) for t in sorted(links))
    stats["file_format"] = next((s.stats["file_format"] for s in seams
                                 if s.stats.get("file_format", "unknown") != "unknown"), "unknown")
    errors, before = [], 0
    for seam in seams:
        for e in seam.errors:
            local_before = seam.stats["packets_read"] - e["packets_after"]
            errors.append(dict(e, packets_after=stats["packets_read"] - before - local_before))
        before += seam.stats["packets_read"]
    stats["status"] = "ok"
    if any(e["fatal"] or e.get("byte_length") for e in errors):
        stats["status"] = "partial" if stats["packets_read"] > 0 else "quarantined"
    stats["flows"] = 0
    first = [s.report["first_packet_us"] for s in seams if s.report["first_packet_us"] is not None]
    return flows, stats, errors, (min(first) if first else None)
