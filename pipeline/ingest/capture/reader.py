"""Streaming capture reader: classic pcap / pcapng, optionally gzip, in bounded chunks.

``CaptureReader(path).batches()`` yields packet matrices (see ``decode``) of at most
``batch_rows`` rows. Memory is bounded by ``chunk_bytes`` + the largest accepted record
(``MAX_CAPLEN``), whatever the file's size. Problems never raise: they are collected in
``reader.errors`` as ``CaptureError(byte_offset, reason, fatal)`` and reading stops at a
fatal one, keeping every packet decoded before it.
"""
from __future__ import annotations

import gzip
import logging
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from pipeline.ingest.capture import decode

log = logging.getLogger(__name__)

MAX_CAPLEN = 262_144
"""Hard maximum for a record's captured length (Wireshark's limit)."""

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": (False, False),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (True, False),   # big-endian, microseconds
    b"\x4d\x3c\xb2\xa1": (False, True),   # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (True, True),    # big-endian, nanoseconds
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class CaptureError:
    """A problem in a capture file: where (byte offset in the decompressed stream) and why."""

    byte_offset: int
    reason: str
    fatal: bool


@dataclass
class CaptureInfo:
    """What the reader learnt about a file while reading it."""

    file_format: str = "unknown"
    link_types: set[int] = field(default_factory=set)
    errors: list[CaptureError] = field(default_factory=list)
    complete: bool = False
    """True when the file was read to its end without a fatal error."""


class _Stream:
    """A read-only byte stream (raw or gunzipped) that turns I/O errors into a flag."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.error: str | None = None

    def read(self, size: int) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self.handle.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            self.error = f"read error: {type(exc).__name__}: {exc}"
            return b""


class CaptureReader:
    """Reads one capture file in chunks and decodes its records in bulk.

    ``chunk_bytes``: bytes read per I/O call; ``batch_rows``: rows per yielded matrix.
    """

    def __init__(self, path: str | Path, chunk_bytes: int = 4 << 20, batch_rows: int = 1 << 16):
        self.path = Path(path)
        self.chunk_bytes = max(int(chunk_bytes), 4096)
        self.batch_rows = int(batch_rows)
        self.info = CaptureInfo()

    # ------------------------------------------------------------------ helpers
    def _error(self, offset: int, reason: str, fatal: bool = True) -> None:
        self.info.errors.append(CaptureError(int(offset), reason, fatal))
        log.warning("%s: byte %d: %s", self.path, offset, reason)

    def _open(self) -> _Stream | None:
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
            return _Stream(gzip.GzipFile(fileobj=raw, mode="rb"))
        return _Stream(raw)

    def batches(self) -> Iterator[np.ndarray]:
        """Yield ``[rows, decode.NCOL]`` int64 packet matrices (views valid until next)."""
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
                yield from self._pcapng(stream, head)
            elif head in PCAP_MAGICS:
                self.info.file_format = "pcap"
                yield from self._pcap(stream, head)
            else:
                self._error(0, f"not a capture file (magic {head.hex()})")
        finally:
            stream.handle.close()

    # ------------------------------------------------------------------ classic pcap
    def _pcap(self, stream: _Stream, magic: bytes) -> Iterator[np.ndarray]:
        swapped, nano = PCAP_MAGICS[magic]
        rest = stream.read(20)
        if len(rest) < 20:
            self._error(len(rest) + 4, stream.error or "truncated pcap file header")
            return
        order = ">" if swapped else "<"
        _vmaj, _vmin, _zone, _sigfigs, snaplen, linktype_field = struct.unpack(order + "HHiIII", rest)
        linktype = linktype_field & 0x0FFFFFFF
        self.info.link_types.add(linktype)
        if linktype not in decode.SUPPORTED_LINK_TYPES:
            self._error(24, f"unsupported link type {linktype}: packets counted, not decoded", False)
        caplen_limit = max(snaplen, 65_535) if 0 < snaplen <= MAX_CAPLEN else MAX_CAPLEN

        def kernel(buf, pos, end, P, base):
            n, pos, code = decode.walk_pcap(buf, pos, end, swapped, nano, linktype,
                                            caplen_limit, P, base)
            return n, pos, code

        yield from self._drive(stream, 24, kernel, "pcap record")

    def _drive(self, stream: _Stream, start_offset: int, kernel, what: str):
        """Refill loop shared by both formats: read, run ``kernel``, keep the tail."""
        P = np.empty((self.batch_rows, decode.NCOL), dtype=np.int64)
        pending = b""
        base = start_offset  # file offset of pending[0]
        eof = False
        while True:
            if not eof:
                data = stream.read(self.chunk_bytes)
                eof = len(data) == 0
                pending = pending + data if pending else data
            buf = np.frombuffer(pending, dtype=np.uint8)
            pos = 0
            while True:
                n, pos, code = kernel(buf, pos, len(buf), P, base)
                if n:
                    yield P[:n]
                if code == decode.CODE_CORRUPT:
                    self._error(base + pos, f"corrupt {what} header (length field out of range)")
                    return
                if code != decode.CODE_OK:  # format-specific block handled by the kernel
                    continue
                if n < P.shape[0]:
                    break
            pending = pending[pos:]
            base += pos
            if eof:
                if stream.error:
                    self._error(base, stream.error)
                elif pending:
                    self._error(base, f"truncated {what}: file ends {len(pending)} bytes into it")
                else:
                    self.info.complete = True
                return

    # ------------------------------------------------------------------ pcapng
    def _pcapng(self, stream: _Stream, magic: bytes) -> Iterator[np.ndarray]:
        state = {
            "swapped": False,
            "links": [], "pow2": [], "exp": [], "snap": [],
            "last_ts": 0,
        }
        arrays = {}

        def refresh():
            arrays["link"] = np.array(state["links"] or [0], dtype=np.int64)
            arrays["pow2"] = np.array(state["pow2"] or [0], dtype=np.bool_)
            arrays["exp"] = np.array(state["exp"] or [6], dtype=np.int64)
            arrays["snap"] = np.array(state["snap"] or [0], dtype=np.int64)

        refresh()

        def kernel(buf, pos, end, P, base):
            n, pos, code, last_ts = decode.walk_pcapng(
                buf, pos, end, state["swapped"], arrays["link"], arrays["pow2"], arrays["exp"],
                arrays["snap"], len(state["links"]), MAX_CAPLEN, state["last_ts"], P, base)
            state["last_ts"] = last_ts
            if code == decode.CODE_SHB:
                consumed = self._parse_shb(buf, pos, end, state)
                if consumed is None:   # need more bytes
                    return n, pos, decode.CODE_OK
                if consumed < 0:
                    return n, pos, decode.CODE_CORRUPT
                refresh()
                return n, pos + consumed, decode.CODE_SHB
            if code == decode.CODE_IDB:
                blen = self._parse_idb(buf, pos, state)
                refresh()
                return n, pos + blen, decode.CODE_IDB
            return n, pos, code

        # put the magic back in front: the SHB is parsed like any other
        yield from self._drive(_Prefixed(stream, magic), 0, kernel, "pcapng block")

    def _parse_shb(self, buf: np.ndarray, pos: int, end: int, state: dict) -> int | None:
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
        state["swapped"] = swapped
        for key in ("links", "pow2", "exp", "snap"):
            state[key] = []
        return blen

    def _parse_idb(self, buf: np.ndarray, pos: int, state: dict) -> int:
        """Parse an Interface Description Block (already length-checked by the kernel)."""
        order = ">" if state["swapped"] else "<"
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
        state["links"].append(linktype)
        state["pow2"].append(pow2)
        state["exp"].append(exponent)
        state["snap"].append(snaplen)
        self.info.link_types.add(linktype)
        if linktype not in decode.SUPPORTED_LINK_TYPES:
            self._error(pos, f"unsupported link type {linktype} on interface "
                             f"{len(state['links']) - 1}: packets counted, not decoded", False)
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
