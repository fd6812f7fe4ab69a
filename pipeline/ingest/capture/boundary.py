"""Record boundaries: where the next plausible record starts, found from any byte offset.

A reader that meets a damaged record and a splitter that gives a task a byte range
starting anywhere in a file need the same answer: the first offset at or after ``start``
where a record begins that the file's own framing vouches for. The functions here give
it from bytes alone (pure functions over a ``bytes`` / ``uint8`` buffer; numba kernels do
the scanning), described by a small frozen *framing*: :class:`PcapFraming` or
:class:`PcapngFraming`.

Classic pcap (both byte orders, micro- and nanosecond resolution). A record header at
``p`` (16 bytes: ``ts_sec``, ``ts_frac``, ``incl_len``, ``orig_len``) is *plausible* when

1. ``incl_len <= caplen_limit`` (the file's snaplen, raised to 65,535, at most
   ``MAX_CAPLEN`` = 262,144);
2. ``ts_min_s <= ts_sec <= ts_max_s``: the file's time window, ``[anchor - 1 day,
   anchor + 366 days]`` (``TS_BEFORE_S``, ``TS_AFTER_S``) around the ``ts_sec`` of the
   file's first confirmed record (:meth:`PcapFraming.anchored`); open until one is known;
3. ``ts_frac < 10**6`` (``10**9`` in a nanosecond file);
4. ``1 <= orig_len <= MAX_ORIG_LEN`` (1 MiB: above any GSO / BIG TCP super-packet);
5. ``incl_len <= orig_len``.

A *record boundary* is a plausible header confirmed by the chain that follows it: the
headers at ``p + 16 + incl_len`` and after that one are plausible too (``CHAIN_HEADERS``
= 3 in all), each ``ts_sec`` within ``[previous - 1 day, previous + 366 days]``. The chain
may stop early exactly at the end of the data; when the buffer ends the file (``final``),
also at a cut-short record once two plausible headers agree. A zeroed header breaks
rule 2 or 4, an inflated length rule 1, 4 or 5; random bytes pass all five with
probability about 1e-11 per offset, and a chain of three at random is out of reach.

pcapng. A block at ``p`` is *plausible* when its type is one of ``PCAPNG_KNOWN_BLOCKS``,
its total length is a multiple of 4 between the type's minimum and ``MAX_BLOCK_BYTES``
(32 MiB), the trailing copy of the length matches, and for an Enhanced (or obsolete)
Packet Block the interface id names an interface described so far in the section and
the captured length fits the block and ``caplen_limit``. A Section Header Block carries
its own byte-order magic (the byte order is read from it). A *block boundary* is a
plausible block followed by another plausible one, by the exact end of the data, or
(``final``) by a cut-short block.

Offsets are buffer indices (bytes); callers add their buffer's file offset.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np
from numba import njit

MAX_CAPLEN = 262_144
"""Hard maximum for a record's captured length (Wireshark's limit)."""
MAX_ORIG_LEN = 1 << 20
"""Largest believable original (on the wire) length of one record, bytes."""
MAX_BLOCK_BYTES = 1 << 25
"""Largest pcapng block accepted (32 MiB): an inflated length field is an error, not an
allocation."""
TS_BEFORE_S = 86_400
"""How far before the anchor (and before the previous record of a chain) a plausible
timestamp may lie, seconds."""
TS_AFTER_S = 366 * 86_400
"""How far after the anchor (and after the previous record of a chain) a plausible
timestamp may lie, seconds: a capture file spanning more than this is read as damaged."""
TS_OPEN = (0, 0xFFFFFFFF)
"""The time window before the file's first confirmed record is known."""
CHAIN_HEADERS = 3
"""Plausible pcap headers (the candidate and two followers) that confirm a boundary."""

PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_KNOWN_BLOCKS = {
    PCAPNG_SHB: 28,  # section header: minimum total length
    1: 20,           # interface description
    2: 32,           # packet (obsolete)
    3: 16,           # simple packet
    4: 12,           # name resolution
    5: 24,           # interface statistics
    6: 32,           # enhanced packet
    9: 12,           # systemd journal export
    10: 16,          # decryption secrets
    0x00000BAD: 12,  # custom, copyable
    0x40000BAD: 12,  # custom, not copyable
}
"""pcapng block types a resynchronisation accepts, with their minimum total length."""
_KNOWN_TYPES = np.array(sorted(PCAPNG_KNOWN_BLOCKS), dtype=np.int64)
_KNOWN_MIN = np.array([PCAPNG_KNOWN_BLOCKS[t] for t in sorted(PCAPNG_KNOWN_BLOCKS)], dtype=np.int64)

# chain verdicts
CONFIRMED, BROKEN, SHORT, CUT = range(4)
"""``CONFIRMED``: a boundary. ``BROKEN``: not one. ``SHORT``: the buffer ends before the
chain decides (read more). ``CUT``: ``final`` data end before it is confirmed."""

# pcap header faults (0: plausible), in the order they are checked
(FAULT_NONE, FAULT_CAPLEN, FAULT_TIME, FAULT_FRACTION, FAULT_ORIG_LEN,
 FAULT_CAPLEN_OVER_ORIG) = range(6)
# pcapng block faults
(BLOCK_OK, BLOCK_TYPE, BLOCK_LENGTH, BLOCK_TRAILER, BLOCK_BYTE_ORDER, BLOCK_INTERFACE,
 BLOCK_CAPLEN) = range(7)


@dataclass(frozen=True)
class PcapFraming:
    """What the plausibility rules of a classic pcap file need (see the module docstring).

    ``swapped``: big-endian fields; ``nano``: nanosecond fractions; ``caplen_limit``:
    largest ``incl_len`` (bytes); ``ts_min_s`` / ``ts_max_s``: the time window (epoch s).
    """

    swapped: bool
    nano: bool
    caplen_limit: int
    ts_min_s: int = TS_OPEN[0]
    ts_max_s: int = TS_OPEN[1]

    @property
    def anchor_known(self) -> bool:
        return (self.ts_min_s, self.ts_max_s) != TS_OPEN

    def anchored(self, ts_sec: int) -> "PcapFraming":
        """This framing with the time window around ``ts_sec`` (the first record's)."""
        return replace(self, ts_min_s=max(TS_OPEN[0], ts_sec - TS_BEFORE_S),
                       ts_max_s=min(TS_OPEN[1], ts_sec + TS_AFTER_S))


@dataclass(frozen=True)
class PcapngFraming:
    """What the plausibility rules of a pcapng section need: ``swapped`` (big-endian
    section), ``interfaces`` (Interface Description Blocks seen so far in the section),
    ``caplen_limit`` (largest captured length of a packet block, bytes)."""

    swapped: bool
    interfaces: int
    caplen_limit: int = MAX_CAPLEN


PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": (False, False),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (True, False),   # big-endian, microseconds
    b"\x4d\x3c\xb2\xa1": (False, True),   # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (True, True),    # big-endian, nanoseconds
}
PCAP_FILE_HEADER = 24
PCAP_RECORD_HEADER = 16


def pcap_framing(file_header: bytes) -> PcapFraming:
    """The framing of a classic pcap file from its 24-byte global header (window open).

    Raises ``ValueError`` when the bytes are not a pcap global header.
    """
    if len(file_header) < PCAP_FILE_HEADER or bytes(file_header[:4]) not in PCAP_MAGICS:
        raise ValueError("not a classic pcap file header (magic or length)")
    swapped, nano = PCAP_MAGICS[bytes(file_header[:4])]
    snaplen = int.from_bytes(file_header[16:20], "big" if swapped else "little")
    return PcapFraming(swapped, nano, pcap_caplen_limit(snaplen))


def pcap_caplen_limit(snaplen: int) -> int:
    """Largest believable ``incl_len`` for a file declaring ``snaplen``: the snaplen raised
    to 65,535 (writers declare small ones and keep whole frames), ``MAX_CAPLEN`` when the
    snaplen is 0 or above it."""
    return max(snaplen, 65_535) if 0 < snaplen <= MAX_CAPLEN else MAX_CAPLEN


def pcap_anchor(buffer, start: int, framing: PcapFraming, final: bool = True) -> PcapFraming | None:
    """``framing`` anchored on the first record boundary at or after ``start`` (a splitter
    calls this on the file's head, ``start = 24``); ``None`` when the buffer holds none."""
    b = _as_array(buffer)
    found = find_record_boundary(b, start, framing, final)
    if found is None or found + PCAP_RECORD_HEADER > len(b):
        return None
    return framing.anchored(int(_u32(b, found, framing.swapped)))


# ------------------------------------------------------------------ numba kernels
@njit(inline="always")
def _u32(b, o, swapped):
    if swapped:
        return (np.int64(b[o]) << 24) | (np.int64(b[o + 1]) << 16) | (np.int64(b[o + 2]) << 8) \
            | np.int64(b[o + 3])
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8) | (np.int64(b[o + 2]) << 16) \
        | (np.int64(b[o + 3]) << 24)


@njit(inline="always")
def _u16(b, o, swapped):
    if swapped:
        return (np.int64(b[o]) << 8) | np.int64(b[o + 1])
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8)


@njit(cache=True)
def pcap_header_fault(b, p, swapped, nano, caplen_limit, ts_lo, ts_hi):
    """The first rule (``FAULT_*``) the 16 bytes at ``b[p:]`` break; ``FAULT_NONE`` if none."""
    sec = _u32(b, p, swapped)
    frac = _u32(b, p + 4, swapped)
    incl = _u32(b, p + 8, swapped)
    orig = _u32(b, p + 12, swapped)
    if incl > caplen_limit:
        return FAULT_CAPLEN
    if sec < ts_lo or sec > ts_hi:
        return FAULT_TIME
    if frac >= (1_000_000_000 if nano else 1_000_000):
        return FAULT_FRACTION
    if orig < 1 or orig > MAX_ORIG_LEN:
        return FAULT_ORIG_LEN
    if incl > orig:
        return FAULT_CAPLEN_OVER_ORIG
    return FAULT_NONE


@njit(cache=True)
def pcap_chain(b, c, end, final, swapped, nano, caplen_limit, ts_lo, ts_hi):
    """Verdict (``CONFIRMED`` ...) on a pcap record boundary at ``c``; reads ``b[c:end]``."""
    headers = 0
    prev = np.int64(0)
    p = c
    while headers < CHAIN_HEADERS:
        if p == end:
            return CONFIRMED if final else SHORT
        if p + 16 > end:
            if not final:
                return SHORT
            return CONFIRMED if headers >= 2 else CUT
        if pcap_header_fault(b, p, swapped, nano, caplen_limit, ts_lo, ts_hi) != FAULT_NONE:
            return BROKEN
        sec = _u32(b, p, swapped)
        if headers > 0 and (sec < prev - TS_BEFORE_S or sec > prev + TS_AFTER_S):
            return BROKEN
        prev = sec
        headers += 1
        p += 16 + _u32(b, p + 8, swapped)
        if p > end:
            if not final:
                return SHORT
            return CONFIRMED if headers >= 2 else CUT
    return CONFIRMED


@njit(cache=True)
def scan_pcap(b, start, limit, end, final, swapped, nano, caplen_limit, ts_lo, ts_hi):
    """First pcap boundary among the candidates ``[start, min(limit, end))``.

    Returns ``(offset, resume)``: ``offset`` -1 when none was confirmed; then every
    candidate before ``resume`` was rejected and the buffer must grow past ``end`` to
    decide on ``resume`` (``resume == min(limit, end)``: all were rejected).
    """
    stop = min(limit, end)
    for c in range(start, stop):
        verdict = pcap_chain(b, c, end, final, swapped, nano, caplen_limit, ts_lo, ts_hi)
        if verdict == CONFIRMED:
            return c, c
        if verdict == SHORT:
            return -1, c
    return -1, max(start, stop)


@njit(cache=True)
def _known_min_length(btype):
    for i in range(_KNOWN_TYPES.shape[0]):
        if _KNOWN_TYPES[i] == btype:
            return _KNOWN_MIN[i]
    return -1


@njit(cache=True)
def pcapng_block_fault(b, p, end, swapped, n_if, caplen_limit):
    """``(fault, total_length, swapped)`` of the block at ``b[p:]``: ``fault`` is a
    ``BLOCK_*`` code, or -1 when ``end`` cuts the block first (``total_length`` then says
    how much is needed, 0 if even the 12-byte frame is cut). ``swapped`` is the byte order
    the block is read in (a Section Header Block declares its own)."""
    if end - p < 12:
        return -1, 0, swapped
    raw = _u32(b, p, False)
    if raw == PCAPNG_SHB:
        bom = _u32(b, p + 8, False)
        if bom == 0x1A2B3C4D:
            swapped = False
        elif bom == 0x4D3C2B1A:
            swapped = True
        else:
            return BLOCK_BYTE_ORDER, 0, swapped
    btype = _u32(b, p, swapped)
    minimum = _known_min_length(btype)
    if minimum < 0:
        return BLOCK_TYPE, 0, swapped
    blen = _u32(b, p + 4, swapped)
    if blen < minimum or blen % 4 != 0 or blen > MAX_BLOCK_BYTES:
        return BLOCK_LENGTH, blen, swapped
    if end - p < blen:
        return -1, blen, swapped
    if _u32(b, p + blen - 4, swapped) != blen:
        return BLOCK_TRAILER, blen, swapped
    if btype == 6 or btype == 2:
        iface = _u32(b, p + 8, swapped) if btype == 6 else _u16(b, p + 8, swapped)
        if iface >= n_if:
            return BLOCK_INTERFACE, blen, swapped
        caplen = _u32(b, p + 20, swapped)
        if caplen > blen - 32 or caplen > caplen_limit:
            return BLOCK_CAPLEN, blen, swapped
    return BLOCK_OK, blen, swapped


@njit(cache=True)
def pcapng_chain(b, c, end, final, swapped, n_if, caplen_limit):
    """Verdict (``CONFIRMED`` ...) on a pcapng block boundary at ``c``; reads ``b[c:end]``."""
    fault, blen, swapped = pcapng_block_fault(b, c, end, swapped, n_if, caplen_limit)
    if fault == -1:
        return CUT if final else SHORT
    if fault != BLOCK_OK:
        return BROKEN
    btype = _u32(b, c, swapped)
    if btype == PCAPNG_SHB:
        n_if = 0
    elif btype == 1:
        n_if += 1
    p = c + blen
    if p == end:
        return CONFIRMED if final else SHORT
    fault, _blen, _swapped = pcapng_block_fault(b, p, end, swapped, n_if, caplen_limit)
    if fault == -1:
        return CONFIRMED if final else SHORT
    return CONFIRMED if fault == BLOCK_OK else BROKEN


@njit(cache=True)
def scan_pcapng(b, start, limit, end, final, swapped, n_if, caplen_limit):
    """First pcapng boundary among ``[start, min(limit, end))``: ``(offset, resume)`` as
    :func:`scan_pcap`."""
    stop = min(limit, end)
    for c in range(start, stop):
        verdict = pcapng_chain(b, c, end, final, swapped, n_if, caplen_limit)
        if verdict == CONFIRMED:
            return c, c
        if verdict == SHORT:
            return -1, c
    return -1, max(start, stop)


# ------------------------------------------------------------------ public face
def _as_array(buffer) -> np.ndarray:
    if isinstance(buffer, np.ndarray):
        return buffer
    return np.frombuffer(buffer, dtype=np.uint8)


def scan_record_boundary(buffer, start: int, framing: PcapFraming | PcapngFraming,
                         final: bool, limit: int | None = None) -> tuple[int | None, int]:
    """Streaming form of :func:`find_record_boundary`: ``(boundary, resume)``.

    Candidates are the offsets ``[start, limit)`` (default: to the buffer's end;
    ``start <= len(buffer)``). ``boundary`` is the first confirmed one, else ``None``:
    then every candidate before ``resume`` was rejected, and the caller may drop the bytes
    before ``resume``, append more data and scan again from there (with ``final`` once
    the data reach the file's end: then every candidate is decided and ``resume`` is
    ``min(limit, len(buffer))``). A splitter reads from its range's start with
    ``final=False`` and extends its window while the answer is ``None``; only the bytes
    of one undecided chain (at most three records) are kept between scans.
    """
    b = _as_array(buffer)
    end = len(b)
    limit = end if limit is None else int(limit)
    start = int(start)
    if isinstance(framing, PcapFraming):
        found, resume = scan_pcap(b, start, limit, end, bool(final), framing.swapped, framing.nano,
                                  framing.caplen_limit, framing.ts_min_s, framing.ts_max_s)
    else:
        found, resume = scan_pcapng(b, start, limit, end, bool(final), framing.swapped,
                                    framing.interfaces, framing.caplen_limit)
    return (None if found < 0 else int(found)), int(resume)


def find_record_boundary(buffer, start: int, framing: PcapFraming | PcapngFraming,
                         final: bool = True) -> int | None:
    """Offset of the first record (pcap) or block (pcapng) boundary at or after ``start``
    in ``buffer``, by the rules of the module docstring; ``None`` when there is none.

    ``buffer``: ``bytes``-like or a ``uint8`` array; offsets are indices into it.
    ``final``: the buffer ends where the file ends (a chain may end there). With
    ``final=False`` a candidate the buffer is too short to decide counts as no boundary;
    use :func:`scan_record_boundary` to resume such a scan when more bytes arrive.
    """
    found, _resume = scan_record_boundary(buffer, start, framing, final)
    return found


def chain_verdict(buffer, start: int, framing: PcapFraming | PcapngFraming, final: bool) -> int:
    """``CONFIRMED``, ``BROKEN``, ``SHORT`` or ``CUT``: whether ``start`` itself is a boundary."""
    b = _as_array(buffer)
    if isinstance(framing, PcapFraming):
        return int(pcap_chain(b, int(start), len(b), bool(final), framing.swapped, framing.nano,
                              framing.caplen_limit, framing.ts_min_s, framing.ts_max_s))
    return int(pcapng_chain(b, int(start), len(b), bool(final), framing.swapped,
                            framing.interfaces, framing.caplen_limit))


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_damage(buffer, pos: int, framing: PcapFraming | PcapngFraming) -> str:
    """Which rule the record header (pcap) or block (pcapng) at ``pos`` breaks, in words."""
    b = _as_array(buffer)
    if isinstance(framing, PcapFraming):
        if len(b) - pos < PCAP_RECORD_HEADER:
            return "record header cut short"
        order = "big" if framing.swapped else "little"
        sec, frac, incl, orig = (int.from_bytes(bytes(b[pos + k:pos + k + 4]), order) for k in (0, 4, 8, 12))
        fault = pcap_header_fault(b, pos, framing.swapped, framing.nano, framing.caplen_limit,
                                  framing.ts_min_s, framing.ts_max_s)
        if fault == FAULT_CAPLEN:
            return f"captured length {incl} over the limit {framing.caplen_limit}"
        if fault == FAULT_TIME:
            return (f"timestamp {sec} s ({_utc(sec)}) outside the file's window "
                    f"{_utc(framing.ts_min_s)}..{_utc(framing.ts_max_s)}")
        if fault == FAULT_FRACTION:
            return f"fraction of a second {frac} out of range"
        if fault == FAULT_ORIG_LEN:
            return f"original length {orig} out of range 1..{MAX_ORIG_LEN}"
        if fault == FAULT_CAPLEN_OVER_ORIG:
            return f"captured length {incl} over the original length {orig}"
        return "record header not followed by a plausible record header"
    fault, blen, _swapped = pcapng_block_fault(b, pos, len(b), framing.swapped, framing.interfaces,
                                               framing.caplen_limit)
    words = {BLOCK_TYPE: "unknown block type", BLOCK_LENGTH: f"block length {blen} out of range",
             BLOCK_TRAILER: f"trailing block length differs from the leading {blen}",
             BLOCK_BYTE_ORDER: "section header without a byte-order magic",
             BLOCK_INTERFACE: "packet block names an undescribed interface",
             BLOCK_CAPLEN: "packet block's captured length does not fit the block",
             -1: "block cut short"}
    return words.get(int(fault), "block not followed by a plausible block")
