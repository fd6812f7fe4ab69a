"""Streaming capture reader: classic pcap / pcapng, optionally gzip, in bounded chunks.

``CaptureReader(path).batches()`` yields packet matrices (see ``decode``) of at most
``batch_rows`` rows. Memory is bounded by ``chunk_bytes`` + a few of the largest accepted
records (``MAX_CAPLEN``) or one block (``decode.MAX_BLOCK_BYTES``), whatever the file's
size. Problems never raise: they are collected in ``reader.info.errors`` as
``CaptureError``\\ s.

Damage does not end a file. At an implausible record header or block the reader skips to
the next confirmed record boundary (``boundary`` states the rules) and carries on: each
skipped range is one non-fatal error with its offset, length and reason, and the packets
after it are read. Reading stops early only where nothing more can be read: the file
ends inside a record, the gzip stream is cut or corrupt, or no boundary follows the damage
(a fatal error whose length is the rest of the data). Offsets and lengths are in the
decompressed stream; a gzip error's reason also names the compressed byte.

Byte ranges (``window``, uncompressed files only): a reader can own the records that
*start* in ``[start, stop)`` of a file, so that tasks read one large file in parallel. It
begins at ``window.entry`` when given (a :class:`ReadState`: the offset of a record and
the framing state in force there), else it resynchronises silently from ``start`` to the
first record boundary the framing confirms (``boundary``), with the state in force at the
file's head (:func:`file_head`: a classic pcap's header and time-window anchor, a pcapng
file's leading Section Header and Interface Description Blocks). It reads on past
``stop`` to finish its last record (and a damaged stretch that starts before ``stop``) and
ends at the first record at or after ``stop``: ``reader.exit`` is the state there, which
the next range must have begun with (``reader.entry``) for the ranges to read exactly
what one reader reads; ``pipeline.ingest.split`` checks that and rereads a range that
began elsewhere.
"""
from __future__ import annotations

import gzip
import logging
import os
import stat
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from pipeline.ingest.capture import boundary, decode
from pipeline.ingest.capture.boundary import MAX_CAPLEN, PCAP_MAGICS  # noqa: F401 - public here too

log = logging.getLogger(__name__)

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class CaptureError:
    """A problem in a capture file: where (byte offset in the decompressed stream), why,
    whether reading stopped there (``fatal``), how many bytes it cost (``byte_length``:
    bytes skipped or left unread from ``byte_offset``; ``None`` when nothing was skipped,
    e.g. a warning) and how many packets had been read before it (``packets_before``)."""

    byte_offset: int
    reason: str
    fatal: bool
    byte_length: int | None = None
    packets_before: int = 0


@dataclass
class CaptureInfo:
    """What the reader learnt about a file while reading it."""

    file_format: str = "unknown"
    link_types: set[int] = field(default_factory=set)
    errors: list[CaptureError] = field(default_factory=list)
    complete: bool = False
    """True when the file was read to its end without a fatal error (skipped ranges
    included)."""
    resyncs: int = 0
    """Times reading resumed at a confirmed boundary after skipping damaged bytes."""

    @property
    def bytes_skipped(self) -> int:
        """Bytes of the decompressed stream not read as records: the errors' lengths."""
        return sum(e.byte_length or 0 for e in self.errors)


@dataclass(frozen=True)
class PcapngSection:
    """The pcapng section state in force at an offset: byte order and, per interface
    described so far, link type, timestamp unit (``pow2``: 2^-exp, else 10^-exp s) and
    snap length."""

    swapped: bool = False
    links: tuple[int, ...] = ()
    pow2: tuple[bool, ...] = ()
    exp: tuple[int, ...] = ()
    snap: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        return {"swapped": self.swapped, "links": list(self.links), "pow2": list(self.pow2),
                "exp": list(self.exp), "snap": list(self.snap)}

    @classmethod
    def from_dict(cls, d: dict) -> "PcapngSection":
        return cls(bool(d["swapped"]), tuple(d["links"]), tuple(bool(x) for x in d["pow2"]),
                   tuple(d["exp"]), tuple(d["snap"]))

    def after(self, events: list[list]) -> "PcapngSection":
        """This section changed by parsed blocks (``_PcapngFrames.events``): an SHB starts a
        new section, an IDB adds an interface."""
        section = self
        for event in events:
            if event[0] == "shb":
                section = PcapngSection(bool(event[1]))
            else:
                section = PcapngSection(section.swapped, section.links + (event[1],),
                                        section.pow2 + (bool(event[2]),), section.exp + (event[3],),
                                        section.snap + (event[4],))
        return section


@dataclass(frozen=True)
class ReadState:
    """Where a reader stands between records: ``offset`` (file offset of the next record
    or block), ``checks_start`` (pcap: that record is checked like a file's first, against
    the records after it), ``section`` (pcapng: the section in force), ``last_ts`` (pcapng:
    the time given to undated packets, µs)."""

    offset: int
    checks_start: bool = False
    section: PcapngSection | None = None
    last_ts: int = 0

    def as_dict(self) -> dict:
        return {"offset": self.offset, "checks_start": self.checks_start, "last_ts": self.last_ts,
                "section": None if self.section is None else self.section.as_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "ReadState":
        return cls(int(d["offset"]), bool(d["checks_start"]),
                   None if d["section"] is None else PcapngSection.from_dict(d["section"]),
                   int(d["last_ts"]))


@dataclass(frozen=True)
class ReadWindow:
    """Records starting in ``[start, stop)`` (file offsets; ``stop`` None: to the end),
    read from ``entry`` when given, else from the first boundary at or after ``start``
    (``start`` 0: the file's own start), found with the pcapng ``section`` given (default:
    the head's in force there)."""

    start: int
    stop: int | None = None
    entry: ReadState | None = None
    section: PcapngSection | None = None


@dataclass(frozen=True)
class FileHead:
    """What a byte range needs from the head of its file (:func:`file_head`).

    ``file_format``: ``pcap`` / ``pcapng`` / None (not splittable: gzip, not a capture,
    unreadable). pcap: ``framing`` (anchored on the first record, as a whole-file reader
    anchors it) and ``linktype``. pcapng: ``sections``, the state after each leading
    SHB / IDB as ``(block offset, section)``; ``head_end`` is the offset of the first other
    block (the state there holds until a later SHB or IDB changes it).
    """

    file_format: str | None
    framing: boundary.PcapFraming | None = None
    linktype: int = 0
    sections: tuple[tuple[int, PcapngSection], ...] = ()
    head_end: int = 0

    def section_at(self, offset: int) -> PcapngSection:
        """The head's section state in force at ``offset`` (after the blocks before it)."""
        state = PcapngSection()
        for block, section in self.sections:
            if block < offset:
                state = section
        return state


class _Stream:
    """A read-only byte stream (raw or gunzipped) that turns I/O errors into a flag.

    ``compressed``: the underlying file of a gzip stream (to say where it broke).
    """

    def __init__(self, handle: BinaryIO, compressed: BinaryIO | None = None):
        self.handle = handle
        self.compressed = compressed
        self.error: str | None = None

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end or at an error, and then every byte
        decompressed before the error is returned."""
        if self.error is not None:
            return b""
        parts, got = [], 0
        try:
            while got < size:
                part = self.handle.read1(size - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
        except (OSError, EOFError, zlib.error) as exc:
            self.error = self._describe(exc)
        return b"".join(parts)

    def _describe(self, exc: Exception) -> str:
        if self.compressed is None:
            return f"read error: {type(exc).__name__}: {exc}"
        try:
            where = self.compressed.tell()
        except (OSError, ValueError):
            where = -1
        if isinstance(exc, EOFError):
            return f"gzip stream cut short: the compressed file ends at byte {where} before its end marker"
        return f"gzip data error near compressed byte {where}: {type(exc).__name__}: {exc}"


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))

# reading modes of the refill loop
_START, _IN_SYNC, _SEARCHING, _SUSPECT, _RESYNC = range(5)


class CaptureReader:
    """Reads one capture file in chunks and decodes its records in bulk.

    ``chunk_bytes``: bytes read per I/O call; ``batch_rows``: rows per yielded matrix.
    """

    def __init__(self, path: str | Path, chunk_bytes: int = 4 << 20, batch_rows: int = 1 << 16,
                 window: ReadWindow | None = None, head: FileHead | None = None):
        self.path = Path(path)
        self.chunk_bytes = max(int(chunk_bytes), 4096)
        self.batch_rows = int(batch_rows)
        self.window = window
        self.head = head
        """Needed by a window that starts after the file's start (see :func:`file_head`)."""
        self.info = CaptureInfo()
        self.packets = 0
        """Packets yielded so far."""
        self.entry: ReadState | None = None
        """Window: the state reading began with (offset = end of data when it found none)."""
        self.exit: ReadState | None = None
        """Window: the state at the first record at or after ``stop`` (or the end of data)."""
        self.inherited_time = False
        """Window, pcapng: a packet was dated with the entry's ``last_ts``."""
        self.section_events: list[list] = []
        """pcapng: the SHB / IDB blocks parsed (``_PcapngFrames.events``)."""
        self._probe = False

    # ------------------------------------------------------------------ helpers
    def _error(self, offset: int, reason: str, fatal: bool = True, length: int | None = None) -> None:
        self.info.errors.append(CaptureError(int(offset), reason, fatal,
                                             None if length is None else int(length), self.packets))
        log.warning("%s: byte %d: %s", self.path, offset, reason)

    def _open(self) -> _Stream | None:
        try:
            mode = os.stat(self.path).st_mode
        except OSError as exc:
            self._error(0, f"unreadable file: {exc.strerror or exc}")
            return None
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
            self._error(0, f"unreadable file: not a regular file ({kind})")
            return None
        try:
            raw = open(self.path, "rb")
        except OSError as exc:
            self._error(0, f"unreadable file: {exc.strerror or exc}")
            return None
        try:
            head = raw.read(2)
        except OSError as exc:
            raw.close()
            self._error(0, f"unreadable file: {exc.strerror or exc}")
            return None
        raw.seek(0)
        if head == GZIP_MAGIC:
            return _Stream(gzip.GzipFile(fileobj=raw, mode="rb"), compressed=raw)
        return _Stream(raw)

    def batches(self) -> Iterator[np.ndarray]:
        """Yield ``[rows, decode.NCOL]`` int64 packet matrices (views valid until next)."""
        if self.window is not None and (self.window.entry is not None or self.window.start > 0):
            yield from self._window_batches()
            return
        stream = self._open()
        if stream is None:
            return
        try:
            head = stream.read(4)
            if stream.error:
                self._error(0, stream.error)
                return
            if len(head) == 0:
                self._error(0, "empty file")
                return
            if head == PCAPNG_MAGIC:
                self.info.file_format = "pcapng"
                # put the magic back in front: the SHB is parsed like any other block
                self.entry = ReadState(0, section=PcapngSection())
                yield from self._drive(_Prefixed(stream, head), 0, _PcapngFrames(self))
            elif head in PCAP_MAGICS:
                self.info.file_format = "pcap"
                yield from self._pcap(stream, head)
            else:
                self._error(0, f"not a capture file (magic {head.hex()})")
        finally:
            stream.handle.close()
            if stream.compressed is not None:
                stream.compressed.close()

    def _pcap(self, stream: _Stream, magic: bytes) -> Iterator[np.ndarray]:
        rest = stream.read(20)
        if len(rest) < 20:
            self._error(len(rest) + 4, stream.error or "truncated pcap file header")
            return
        framing = boundary.pcap_framing(magic + rest)
        linktype = struct.unpack((">" if framing.swapped else "<") + "I", rest[16:20])[0] & 0x0FFFFFFF
        self.info.link_types.add(linktype)
        if linktype not in decode.SUPPORTED_LINK_TYPES:
            self._error(24, f"unsupported link type {linktype}: packets counted, not decoded", False)
        self.entry = ReadState(boundary.PCAP_FILE_HEADER, checks_start=True)
        frames = _PcapFrames(framing, linktype)
        frames.probe = self._probe
        yield from self._drive(stream, 24, frames)

    # ------------------------------------------------------------------ byte windows
    def _window_batches(self) -> Iterator[np.ndarray]:
        """A window after the file's start: the head's state, then entry or resync."""
        window, head = self.window, self.head
        if head is None:
            head = self.head = file_head(self.path, self.chunk_bytes)
        if head.file_format is None:
            raise ValueError(f"{self.path}: a byte range needs an uncompressed pcap or pcapng file")
        self.info.file_format = head.file_format
        try:
            raw = open(self.path, "rb")
        except OSError as exc:
            self._error(window.start, f"unreadable file: {exc.strerror or exc}")
            return
        try:
            entry = window.entry
            if head.file_format == "pcap":
                self.info.link_types.add(head.linktype)
                frames = _PcapFrames(head.framing, head.linktype)
                data_start = boundary.PCAP_FILE_HEADER
            else:
                frames = _PcapngFrames(self)
                data_start = 0
            if entry is not None:
                frames.load(entry)
                self.entry = entry
                raw.seek(entry.offset)
                yield from self._drive(_Stream(raw), entry.offset, frames, entry=entry)
            else:
                start = max(window.start, data_start)
                if head.file_format == "pcapng":
                    frames.load(ReadState(start, section=window.section or head.section_at(start)))
                raw.seek(start)
                yield from self._drive(_Stream(raw), start, frames, resync_head=head)
        finally:
            raw.close()

    # ------------------------------------------------------------------ refill loop
    def _drive(self, stream, start_offset: int, frames, entry: ReadState | None = None,
               resync_head: FileHead | None = None) -> Iterator[np.ndarray]:
        """Read, walk records, resynchronise after damage; shared by both formats.

        Modes: ``_START`` (pcap: is the first record a boundary?), ``_IN_SYNC``
        (walking), ``_SEARCHING`` (skipping damaged bytes to the next boundary),
        ``_SUSPECT`` (a plausible record whose successor header is not: is its length
        wrong, or the next header damaged?) and ``_RESYNC`` (a byte range finding its
        first boundary: silent, nothing there is damage). A window's ``stop`` ends the
        walk at the first record starting at or after it (``self.exit``).
        """
        P = np.empty((self.batch_rows, decode.NCOL), dtype=np.int64)
        pending = b""
        base = start_offset  # file offset of pending[0]
        eof = False
        if resync_head is not None:
            mode = _RESYNC
        elif entry is not None:
            mode = _START if entry.checks_start else _IN_SYNC
        else:
            mode = _START if frames.checks_start else _IN_SYNC
        stop_at = decode.NO_STOP
        if self.window is not None and self.window.stop is not None:
            stop_at = self.window.stop
        damaged_from, damage, search, suspect_end = 0, "", 0, 0
        while True:
            if not eof:
                data = stream.read(self.chunk_bytes)
                eof = len(data) == 0
                pending = pending + data if pending else data
            buf = np.frombuffer(pending, dtype=np.uint8)
            end = len(buf)
            pos = 0
            stop = min(max(stop_at - base, 0), decode.NO_STOP)
            while True:
                trusted = -1
                if mode == _RESYNC:
                    found, resume = frames.scan(buf, search, end, eof)
                    if found is None:
                        pos = search = resume
                        if eof:
                            self.entry = frames.state(base + end)
                            self._leave(frames, base + end)
                            return
                        break
                    if isinstance(frames, _PcapngFrames):
                        section = self.window.section or resync_head.section_at(base + found)
                        frames.load(ReadState(base + found, section=section))
                    self.entry = frames.state(base + found)
                    mode, pos = _IN_SYNC, found
                if mode in (_START, _IN_SYNC) and pos >= stop:
                    self._leave(frames, base + pos, checks_start=mode == _START)
                    return
                if mode == _START:
                    verdict = frames.verdict(buf, pos, eof)
                    if verdict == boundary.SHORT:
                        break
                    if verdict == boundary.BROKEN and frames.header_plausible(buf, pos):
                        mode, suspect_end = _SUSPECT, base + frames.record_end(buf, pos)
                    elif verdict == boundary.BROKEN:
                        mode, damaged_from, search = _SEARCHING, base + pos, pos + 1
                        damage = frames.describe(buf, pos)
                    else:
                        frames.synced(buf, pos)
                        mode = _IN_SYNC
                if mode == _SEARCHING:
                    found, resume = frames.scan(buf, search, end, eof)
                    if found is None:
                        pos = search = resume
                        break
                    self._skipped(damaged_from, base + found, frames.what, damage)
                    frames.synced(buf, found)
                    mode, pos = _IN_SYNC, found
                elif mode == _SUSPECT:
                    q = suspect_end - base
                    found, resume = frames.scan(buf, pos + 1, q, eof)
                    if found is None and resume < q:
                        break
                    reason = frames.describe_length(buf, pos)
                    if found is None:
                        verdict = frames.verdict(buf, q, eof)
                        if verdict == boundary.SHORT:
                            break
                        if verdict == boundary.CONFIRMED:  # the records after it disagree with it
                            found, reason = q, "record header inconsistent with the records after it"
                    if found is None:  # nothing starts inside the record: keep it
                        frames.synced(buf, pos)
                        trusted = pos
                    else:
                        self._skipped(base + pos, base + found, frames.what, reason)
                        frames.synced(buf, found)
                        pos = found
                    mode = _IN_SYNC
                n, pos, code = frames.walk(buf, pos, end, eof, trusted, P, base, stop)
                if n:
                    self.packets += n
                    yield P[:n]
                if code == decode.CODE_STOP:
                    self._leave(frames, base + pos)
                    return
                if code == decode.CODE_SHB or code == decode.CODE_IDB:
                    consumed = frames.parse_block(code, buf, pos, end, base)
                    if consumed is None:  # need more bytes
                        break
                    if consumed > 0:
                        pos += consumed
                        continue
                    code = decode.CODE_CORRUPT
                if code == decode.CODE_CORRUPT:
                    mode, damaged_from, search = _SEARCHING, base + pos, pos + 1
                    damage = frames.describe(buf, pos)
                    continue
                if code == decode.CODE_UNCONFIRMED:
                    mode, suspect_end = _SUSPECT, base + frames.record_end(buf, pos)
                    continue
                if n < P.shape[0]:
                    break
            pending = pending[pos:]
            base += pos
            search -= pos
            if eof:
                self._finish(stream, mode == _SEARCHING, damaged_from, damage, base, len(pending),
                             frames.what)
                self._leave(frames, base + len(pending))
                return

    def _leave(self, frames, offset: int, checks_start: bool = False) -> None:
        """Reading ends at ``offset`` (a window's stop or the end of data): ``self.exit``."""
        self.exit = frames.state(offset, checks_start)
        self.inherited_time = frames.inherited_time
        self.section_events = list(getattr(frames, "events", []))

    def _skipped(self, start: int, stop: int, what: str, damage: str) -> None:
        """Bytes ``[start, stop)`` skipped as damaged; reading resumed at ``stop``."""
        self.info.resyncs += 1
        self._error(start, f"corrupt {what} header ({damage}): skipped to the next plausible {what}",
                    fatal=False, length=stop - start)

    def _finish(self, stream, searching: bool, damaged_from: int, damage: str, base: int,
                pending: int, what: str) -> None:
        """Report how the data ended: ``base`` = file offset of the ``pending`` bytes left."""
        if searching:
            self._error(damaged_from, f"corrupt {what} header ({damage}): no plausible {what} "
                                      f"after it, the rest of the data is unreadable",
                        length=base + pending - damaged_from)
        if stream.error:
            tail = f"; the {pending} bytes after the last whole {what} are dropped" if pending else ""
            self._error(base, stream.error + tail, length=pending)
        elif pending and not searching:
            self._error(base, f"truncated {what}: file ends {pending} bytes into it", length=pending)
        elif not searching:
            self.info.complete = True


class _PcapFrames:
    """Classic pcap framing for the refill loop: walk, boundary checks, damage words."""

    what = "pcap record"
    checks_start = True
    inherited_time = False

    def __init__(self, framing: boundary.PcapFraming, linktype: int):
        self.framing = framing
        self.linktype = linktype
        self.probe = False

    def state(self, offset: int, checks_start: bool = False) -> ReadState:
        return ReadState(int(offset), checks_start)

    def load(self, state: ReadState) -> None:
        pass  # a classic pcap's state is its header's (the framing, anchored on the head)

    def walk(self, buf, pos, end, final, trusted, P, base, stop=decode.NO_STOP):
        f = self.framing
        return decode.walk_pcap(buf, pos, end, final, f.swapped, f.nano, self.linktype,
                                f.caplen_limit, f.ts_min_s, f.ts_max_s, trusted, P, base, stop)

    def scan(self, buf, start, limit, final):
        return boundary.scan_record_boundary(buf, start, self.framing, final, limit)

    def verdict(self, buf, pos, final):
        return boundary.chain_verdict(buf, pos, self.framing, final)

    def synced(self, buf, pos) -> None:
        """A boundary at ``pos``: the first one dates the file's time window."""
        if not self.framing.anchor_known and pos + 16 <= len(buf):
            self.framing = self.framing.anchored(self._field(buf, pos, 0))
            if self.probe:
                raise _Anchored(self.framing)

    def header_plausible(self, buf, pos) -> bool:
        f = self.framing
        return pos + 16 <= len(buf) and boundary.pcap_header_fault(
            buf, pos, f.swapped, f.nano, f.caplen_limit, f.ts_min_s, f.ts_max_s) == 0

    def record_end(self, buf, pos) -> int:
        return pos + 16 + self._field(buf, pos, 8)

    def describe(self, buf, pos) -> str:
        return boundary.describe_damage(buf, pos, self.framing)

    def describe_length(self, buf, pos) -> str:
        q = self.record_end(buf, pos)
        return (f"captured length {self._field(buf, pos, 8)} leads to an implausible record header: "
                f"{boundary.describe_damage(buf, q, self.framing)}")

    def parse_block(self, code, buf, pos, end, base):
        raise AssertionError("classic pcap has no blocks")

    def _field(self, buf, pos, at) -> int:
        return int.from_bytes(bytes(buf[pos + at:pos + at + 4]), "big" if self.framing.swapped else "little")


class _PcapngFrames:
    """pcapng framing for the refill loop: section and interface state, blocks."""

    what = "pcapng block"
    checks_start = False

    def __init__(self, reader: CaptureReader):
        self.reader = reader
        self.swapped = False
        self.links: list[int] = []
        self.pow2: list[bool] = []
        self.exp: list[int] = []
        self.snap: list[int] = []
        self.last_ts = 0
        self.dating = np.zeros(2, dtype=np.int64)  # [dated, packets given the entry's time]
        self.events: list[list] = []
        """Section changes parsed, in order: ``["shb", swapped]``, ``["idb", link, pow2, exp, snap]``."""
        self._refresh()

    @property
    def section(self) -> PcapngSection:
        return PcapngSection(self.swapped, tuple(self.links), tuple(self.pow2), tuple(self.exp),
                             tuple(self.snap))

    @property
    def inherited_time(self) -> bool:
        return bool(self.dating[1])

    def state(self, offset: int, checks_start: bool = False) -> ReadState:
        return ReadState(int(offset), False, self.section, int(self.last_ts))

    def load(self, state: ReadState) -> None:
        section = state.section or PcapngSection()
        self.swapped = section.swapped
        self.links, self.pow2 = list(section.links), list(section.pow2)
        self.exp, self.snap = list(section.exp), list(section.snap)
        self.last_ts = state.last_ts
        self._refresh()

    @property
    def framing(self) -> boundary.PcapngFraming:
        return boundary.PcapngFraming(self.swapped, len(self.links), MAX_CAPLEN)

    def _refresh(self) -> None:
        self.arrays = (np.array(self.links or [0], dtype=np.int64),
                       np.array(self.pow2 or [0], dtype=np.bool_),
                       np.array(self.exp or [6], dtype=np.int64),
                       np.array(self.snap or [0], dtype=np.int64))

    def walk(self, buf, pos, end, final, trusted, P, base, stop=decode.NO_STOP):
        link, pow2, exp, snap = self.arrays
        n, pos, code, self.last_ts = decode.walk_pcapng(
            buf, pos, end, self.swapped, link, pow2, exp, snap, len(self.links), MAX_CAPLEN,
            self.last_ts, P, base, stop, self.dating)
        return n, pos, code

    def scan(self, buf, start, limit, final):
        return boundary.scan_record_boundary(buf, start, self.framing, final, limit)

    def verdict(self, buf, pos, final):
        return boundary.chain_verdict(buf, pos, self.framing, final)

    def synced(self, buf, pos) -> None:
        pass  # a Section Header Block found by a resync is parsed when the walk meets it

    def describe(self, buf, pos) -> str:
        return boundary.describe_damage(buf, pos, self.framing)

    def parse_block(self, code, buf, pos, end, base) -> int | None:
        """Parse the SHB / IDB at ``pos`` (file offset ``base + pos``): its length, ``None``
        when more bytes are needed, -1 when corrupt."""
        if code == decode.CODE_SHB:
            consumed = self._parse_shb(buf, pos, end)
        else:
            consumed = self._parse_idb(buf, pos, base)
        if consumed is not None and consumed > 0:
            self._refresh()
            self.events.append(["shb", self.swapped] if code == decode.CODE_SHB else
                               ["idb", self.links[-1], self.pow2[-1], self.exp[-1], self.snap[-1]])
        return consumed

    def _parse_shb(self, buf: np.ndarray, pos: int, end: int) -> int | None:
        """Parse a Section Header Block at ``pos``: byte order, resets interfaces.

        Returns its length, ``None`` when more bytes are needed, ``-1`` when corrupt.
        """
        if end - pos < 12:
            return None
        bom = bytes(buf[pos + 8:pos + 12])
        if bom == b"\x4d\x3c\x2b\x1a":
            swapped = False
        elif bom == b"\x1a\x2b\x3c\x4d":
            swapped = True
        else:
            return -1
        order = ">" if swapped else "<"
        (blen,) = struct.unpack(order + "I", bytes(buf[pos + 4:pos + 8]))
        if blen < 28 or blen % 4 or blen > decode.MAX_BLOCK_BYTES:
            return -1
        if end - pos < blen:
            return None
        self.swapped = swapped
        self.links, self.pow2, self.exp, self.snap = [], [], [], []
        return blen

    def _parse_idb(self, buf: np.ndarray, pos: int, base: int) -> int:
        """Parse an Interface Description Block (already length-checked by the kernel)."""
        order = ">" if self.swapped else "<"
        block = bytes(buf[pos:pos + struct.unpack(order + "I", bytes(buf[pos + 4:pos + 8]))[0]])
        blen = len(block)
        linktype, _reserved, snaplen = struct.unpack(order + "HHI", block[8:16]) if blen >= 20 \
            else (0xFFFF, 0, 0)
        pow2, exponent = False, 6
        off = 16
        while off + 4 <= blen - 4:
            code, length = struct.unpack(order + "HH", block[off:off + 4])
            if code == 0:
                break
            if code == 9 and length >= 1 and off + 5 <= blen:
                value = block[off + 4]
                pow2, exponent = bool(value & 0x80), value & 0x7F
            off += 4 + ((length + 3) & ~3)
        self.links.append(linktype)
        self.pow2.append(pow2)
        self.exp.append(exponent)
        self.snap.append(snaplen)
        self.reader.info.link_types.add(linktype)
        if linktype not in decode.SUPPORTED_LINK_TYPES:
            self.reader._error(base + pos, f"unsupported link type {linktype} on interface "
                                    f"{len(self.links) - 1}: packets counted, not decoded", False)
        return blen


class _Prefixed:
    """A stream with some already-read bytes pushed back in front."""

    def __init__(self, stream: _Stream, prefix: bytes):
        self.stream = stream
        self.prefix = prefix
        self.handle = stream.handle

    @property
    def error(self) -> str | None:
        return self.stream.error

    def read(self, size: int) -> bytes:
        if self.prefix:
            head, self.prefix = self.prefix, b""
            return head + self.stream.read(max(size - len(head), 0))
        return self.stream.read(size)


class _Anchored(Exception):
    """Raised by a probing reader once its time window is anchored (see ``file_head``)."""

    def __init__(self, framing: boundary.PcapFraming):
        super().__init__("anchored")
        self.framing = framing


def file_head(path: str | Path, chunk_bytes: int = 4 << 20) -> FileHead:
    """The state a byte range of ``path`` needs from the file's head (:class:`FileHead`).

    Classic pcap: the header, and the time window anchored where a whole-file reader
    anchors it (that reader is run until it does: normally within the first chunk).
    pcapng: the leading Section Header and Interface Description Blocks, walked block by
    block from offset 0 until another block (or a damaged one). Reads only the head.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError:
        return FileHead(None)
    if magic in PCAP_MAGICS:
        probe = CaptureReader(path, chunk_bytes=chunk_bytes)
        probe._probe = True
        framing = None
        try:
            for _ in probe.batches():
                break
        except _Anchored as anchored:
            framing = anchored.framing
        try:
            with open(path, "rb") as fh:
                header = fh.read(boundary.PCAP_FILE_HEADER)
            framing = framing or boundary.pcap_framing(header)
        except ValueError:
            return FileHead(None)
        linktype = int.from_bytes(header[20:24], "big" if framing.swapped else "little") & 0x0FFFFFFF
        return FileHead("pcap", framing=framing, linktype=linktype)
    if magic != PCAPNG_MAGIC:
        return FileHead(None)
    scratch = CaptureReader(path)  # collects the head's link-type warnings, discarded
    frames = _PcapngFrames(scratch)
    sections: list[tuple[int, PcapngSection]] = []
    data, pos = b"", 0
    with open(path, "rb") as fh:
        while True:
            buf = np.frombuffer(data, dtype=np.uint8)
            fault, blen, _swapped = boundary.pcapng_block_fault(
                buf, pos, len(buf), frames.swapped, len(frames.links), MAX_CAPLEN)
            if fault == -1:
                more = fh.read(max(chunk_bytes, blen - (len(buf) - pos)))
                if more:
                    data += more
                    continue
                break
            if fault != boundary.BLOCK_OK:
                break
            block_type = bytes(buf[pos:pos + 4])
            if block_type == PCAPNG_MAGIC:
                code = decode.CODE_SHB
            elif struct.unpack(">I" if _swapped else "<I", block_type)[0] == 1:
                code = decode.CODE_IDB
            else:
                code = None
            if code is None or frames.parse_block(code, buf, pos, len(buf), 0) in (None, -1):
                break
            sections.append((pos, frames.section))
            pos += blen
    return FileHead("pcapng", sections=tuple(sections), head_end=pos)
