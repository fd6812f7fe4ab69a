"""Numba kernels: walk capture records in a byte buffer and decode L2-L4 fields in bulk.

Each kernel fills a packet matrix ``P`` of shape ``[rows, NCOL]`` (int64), one row per
record, with the column indices below. Rows are written until the buffer runs out, the
matrix is full, or a record header / block is implausible; the kernel returns
``(rows_written, next_position, code)`` so the caller can refill, or resynchronise
(``boundary``), and resume.

Addresses are two int64 halves (IPv4: ``hi = 0``, ``lo = address``; IPv6: the 128 bits
big-endian split in two). Sizes are IP bytes (IPv4 total length, IPv6 40 + payload
length). Timestamps are microseconds since the epoch.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.ingest.capture.boundary import (  # noqa: F401 - framing constants live there
    MAX_BLOCK_BYTES, PCAPNG_SHB, pcap_header_fault,
)

# ----------------------------------------------------------------- packet matrix columns
TS, STATUS, IPVER, S0, S1, D0, D1, SPORT, DPORT, PROTO, VLAN, IPLEN, FLAGS, FRAG, IPID, \
    ICMPTYPE, ICMPCODE, OFFSET = range(18)
NCOL = 18

# STATUS values; non-zero ones map to schema.SKIP_REASONS in order
OK, NON_IP, TRUNCATED, MALFORMED_IP, UNSUPPORTED_LINK, CORRUPT_RECORD = range(6)
# FRAG values
NOT_FRAGMENT, FIRST_FRAGMENT, LATER_FRAGMENT = range(3)
# kernel return codes: CODE_CORRUPT = the record header / block at the returned position
# is implausible; CODE_UNCONFIRMED = the pcap record there is plausible but the header at
# its end is not (its length or that header is damaged: the caller decides which)
CODE_OK, CODE_CORRUPT, CODE_SHB, CODE_IDB, CODE_UNCONFIRMED, CODE_STOP = range(6)
# CODE_STOP: the next record starts at or after ``stop`` (the end of a byte range)
NO_STOP = 1 << 62

SUPPORTED_LINK_TYPES = (0, 1, 12, 14, 101, 108, 113, 228, 229, 276)


@njit(inline="always")
def _u16be(b, o):
    return (np.int64(b[o]) << 8) | np.int64(b[o + 1])


@njit(inline="always")
def _u32be(b, o):
    return (np.int64(b[o]) << 24) | (np.int64(b[o + 1]) << 16) | (np.int64(b[o + 2]) << 8) \
        | np.int64(b[o + 3])


@njit(inline="always")
def _u16(b, o, swapped):
    if swapped:
        return _u16be(b, o)
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8)


@njit(inline="always")
def _u32(b, o, swapped):
    if swapped:
        return _u32be(b, o)
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8) | (np.int64(b[o + 2]) << 16) \
        | (np.int64(b[o + 3]) << 24)


@njit(inline="always")
def _u64be(b, o):
    v = np.int64(0)
    for k in range(8):
        v = (v << 8) | np.int64(b[o + k])
    return v


@njit(cache=True)
def _decode_l4(b, o, end, proto, P, i):
    """Ports / TCP flags / ICMP type+code from the L4 header at ``o``; False if truncated."""
    if proto == 6 or proto == 17 or proto == 132 or proto == 136 or proto == 33:
        need = 14 if proto == 6 else 4
        if end - o < need:
            return False
        P[i, SPORT] = _u16be(b, o)
        P[i, DPORT] = _u16be(b, o + 2)
        if proto == 6:
            P[i, FLAGS] = b[o + 13]
    elif proto == 1 or proto == 58:
        if end - o < 2:
            return False
        P[i, ICMPTYPE] = b[o]
        P[i, ICMPCODE] = b[o + 1]
    return True


@njit(cache=True)
def _decode_ipv4(b, o, end, P, i):
    if end - o < 20:
        P[i, STATUS] = TRUNCATED
        return
    ihl = (b[o] & 0x0F) * 4
    total = _u16be(b, o + 2)
    if total == 0:  # TSO/GSO super-packet captured on the sending host: length unknown
        total = end - o
    if ihl < 20 or total < ihl:
        P[i, STATUS] = MALFORMED_IP
        return
    if end - o < ihl:
        P[i, STATUS] = TRUNCATED
        return
    P[i, IPVER] = 4
    P[i, IPLEN] = total
    P[i, IPID] = _u16be(b, o + 4)
    frag = _u16be(b, o + 6)
    more = (frag & 0x2000) != 0
    offset = frag & 0x1FFF
    proto = np.int64(b[o + 9])
    P[i, PROTO] = proto
    P[i, S1] = _u32be(b, o + 12)
    P[i, D1] = _u32be(b, o + 16)
    if offset > 0:
        P[i, FRAG] = LATER_FRAGMENT
        return
    if more:
        P[i, FRAG] = FIRST_FRAGMENT
    l4_end = min(end, o + total)
    if not _decode_l4(b, o + ihl, l4_end, proto, P, i):
        P[i, STATUS] = TRUNCATED


@njit(cache=True)
def _decode_ipv6(b, o, end, P, i):
    if end - o < 40:
        P[i, STATUS] = TRUNCATED
        return
    payload = _u16be(b, o + 4)
    P[i, IPVER] = 6
    P[i, IPLEN] = 40 + payload if payload > 0 else end - o
    P[i, S0] = _u64be(b, o + 8)
    P[i, S1] = _u64be(b, o + 16)
    P[i, D0] = _u64be(b, o + 24)
    P[i, D1] = _u64be(b, o + 32)
    nxt = np.int64(b[o + 6])
    p = o + 40
    for _ in range(16):  # extension header chain, bounded
        generic = nxt == 0 or nxt == 43 or nxt == 60 or nxt == 135 or nxt == 139 or nxt == 140
        if not (generic or nxt == 51 or nxt == 44):
            break
        if end - p < 8:  # every extension header is at least 8 bytes
            P[i, PROTO] = nxt
            P[i, STATUS] = TRUNCATED
            return
        if generic:
            nxt2 = np.int64(b[p])
            p += (np.int64(b[p + 1]) + 1) * 8
            nxt = nxt2
        elif nxt == 51:  # AH: length in 4-octet units minus 2
            nxt2 = np.int64(b[p])
            p += (np.int64(b[p + 1]) + 2) * 4
            nxt = nxt2
        else:  # 44, fragment header
            nxt2 = np.int64(b[p])
            fo = _u16be(b, p + 2)
            P[i, IPID] = _u32be(b, p + 4)
            p += 8
            nxt = nxt2
            if (fo >> 3) > 0:
                P[i, PROTO] = nxt
                P[i, FRAG] = LATER_FRAGMENT
                return
            if fo & 1:
                P[i, FRAG] = FIRST_FRAGMENT
    P[i, PROTO] = nxt
    if p > end:
        P[i, STATUS] = TRUNCATED
        return
    if not _decode_l4(b, p, end, nxt, P, i):
        P[i, STATUS] = TRUNCATED


@njit(cache=True)
def _decode_ip(b, o, end, P, i):
    if end - o < 1:
        P[i, STATUS] = TRUNCATED
        return
    v = b[o] >> 4
    if v == 4:
        _decode_ipv4(b, o, end, P, i)
    elif v == 6:
        _decode_ipv6(b, o, end, P, i)
    else:
        P[i, STATUS] = MALFORMED_IP


@njit(cache=True)
def _decode_ethertype(b, o, end, ethertype, P, i):
    """Follow VLAN tags from an ethertype at ``o - 2``; the outer VLAN id is kept."""
    for _ in range(8):
        if ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100:
            if end - o < 4:
                P[i, STATUS] = TRUNCATED
                return
            if P[i, VLAN] < 0:
                P[i, VLAN] = _u16be(b, o) & 0x0FFF
            ethertype = _u16be(b, o + 2)
            o += 4
        else:
            break
    if ethertype == 0x0800 or ethertype == 0x86DD:
        _decode_ip(b, o, end, P, i)
    else:
        P[i, STATUS] = NON_IP


@njit(cache=True)
def decode_packet(b, o, caplen, linktype, P, i):
    """Decode one frame of ``caplen`` bytes at ``b[o:]`` into row ``i`` of ``P``."""
    for c in range(1, NCOL):
        P[i, c] = 0
    P[i, VLAN] = -1
    end = o + caplen
    if linktype == 1:  # Ethernet
        if caplen < 14:
            P[i, STATUS] = TRUNCATED
            return
        _decode_ethertype(b, o + 14, end, _u16be(b, o + 12), P, i)
    elif linktype == 101 or linktype == 12 or linktype == 14 or linktype == 228 \
            or linktype == 229:
        _decode_ip(b, o, end, P, i)
    elif linktype == 113:  # Linux cooked v1
        if caplen < 16:
            P[i, STATUS] = TRUNCATED
            return
        _decode_ethertype(b, o + 16, end, _u16be(b, o + 14), P, i)
    elif linktype == 276:  # Linux cooked v2
        if caplen < 20:
            P[i, STATUS] = TRUNCATED
            return
        _decode_ethertype(b, o + 20, end, _u16be(b, o), P, i)
    elif linktype == 0 or linktype == 108:  # BSD loopback: 4-byte family, then IP
        if caplen < 4:
            P[i, STATUS] = TRUNCATED
            return
        _decode_ip(b, o + 4, end, P, i)
    else:
        P[i, STATUS] = UNSUPPORTED_LINK


@njit(cache=True)
def walk_pcap(b, pos, end, final, swapped, nano, linktype, caplen_limit, ts_lo, ts_hi, trusted,
              P, base_offset, stop):
    """Classic pcap records in ``b[pos:end]``; ``base_offset`` = file offset of ``b[0]``.

    A record is taken when its header is plausible (``boundary.pcap_header_fault``) and
    so is the header at its end, or the data end there (``final``: the file's end; a
    header cut short there is left for the caller to report). The record at ``trusted``
    (buffer index, -1 for none) is taken without looking at the header after it. No
    record starting at or after ``stop`` (buffer index) is taken (``CODE_STOP``).
    """
    n = 0
    rows = P.shape[0]
    checked = -1  # the header already found plausible (the previous record's look-ahead)
    while n < rows:
        if pos >= stop:
            return n, pos, CODE_STOP
        if end - pos < 16:
            break
        if pos != checked and pcap_header_fault(b, pos, swapped, nano, caplen_limit, ts_lo, ts_hi) != 0:
            return n, pos, CODE_CORRUPT
        sec = _u32(b, pos, swapped)
        frac = _u32(b, pos + 4, swapped)
        caplen = _u32(b, pos + 8, swapped)
        nxt = pos + 16 + caplen
        if nxt > end:
            break
        if pos != trusted:
            if nxt + 16 <= end:
                if pcap_header_fault(b, nxt, swapped, nano, caplen_limit, ts_lo, ts_hi) != 0:
                    return n, pos, CODE_UNCONFIRMED
                checked = nxt
            elif not final:
                break
        decode_packet(b, pos + 16, caplen, linktype, P, n)
        P[n, TS] = sec * 1_000_000 + (frac // 1000 if nano else frac)
        P[n, OFFSET] = base_offset + pos
        n += 1
        pos = nxt
    return n, pos, CODE_OK


@njit(cache=True)
def _ts_to_us(ts, unit_is_pow2, exponent):
    """Interface timestamp units to microseconds: 10^-exponent or 2^-exponent seconds."""
    if unit_is_pow2:
        if exponent > 62:
            return np.int64(0)
        sec = ts >> exponent
        frac = ts & ((np.int64(1) << exponent) - 1)
        return sec * 1_000_000 + (frac * 1_000_000 >> exponent) if exponent < 40 \
            else sec * 1_000_000 + np.int64(frac / (2.0 ** exponent) * 1e6)
    if exponent >= 6:
        div = np.int64(1)
        for _ in range(min(exponent - 6, 18)):
            div *= 10
        return ts // div
    mul = np.int64(1)
    for _ in range(6 - exponent):
        mul *= 10
    return ts * mul


@njit(cache=True)
def walk_pcapng(b, pos, end, swapped, if_link, if_pow2, if_exp, if_snap, n_if,
                caplen_limit, last_ts, P, base_offset, stop, dating):
    """pcapng blocks in ``b[pos:end]``. Stops at SHB/IDB (code 2/3) for the caller to parse,
    and before a block starting at or after ``stop`` (buffer index; ``CODE_STOP``).

    Returns ``(rows, next_pos, code, last_ts)``; ``last_ts`` dates Simple Packet Blocks
    (and packets of undescribed interfaces). ``dating``: int64 ``[dated, inherited]``:
    ``dated`` is set by the first timestamped packet, ``inherited`` counts the packets
    dated with the ``last_ts`` passed in before that (a byte range's inherited time).
    """
    n = 0
    rows = P.shape[0]
    while n < rows:
        if pos >= stop:
            return n, pos, CODE_STOP, last_ts
        if end - pos < 12:
            break
        btype = _u32(b, pos, swapped)
        if btype == PCAPNG_SHB:
            return n, pos, CODE_SHB, last_ts
        blen = _u32(b, pos + 4, swapped)
        if blen < 12 or blen % 4 != 0 or blen > MAX_BLOCK_BYTES:
            return n, pos, CODE_CORRUPT, last_ts
        if end - pos < blen:
            break
        if _u32(b, pos + blen - 4, swapped) != blen:
            return n, pos, CODE_CORRUPT, last_ts
        if btype == 1:
            return n, pos, CODE_IDB, last_ts
        if btype == 6 or btype == 2:  # enhanced / obsolete packet block
            if blen < 32:
                return n, pos, CODE_CORRUPT, last_ts
            if btype == 6:
                iface = _u32(b, pos + 8, swapped)
            else:
                iface = _u16(b, pos + 8, swapped)
            caplen = _u32(b, pos + 20, swapped)
            if caplen > blen - 32 or caplen > caplen_limit:
                return n, pos, CODE_CORRUPT, last_ts
            ts_raw = (_u32(b, pos + 12, swapped) << 32) | _u32(b, pos + 16, swapped)
            if iface >= n_if:
                for c in range(1, NCOL):
                    P[n, c] = 0
                P[n, STATUS] = CORRUPT_RECORD
                P[n, TS] = last_ts
                if dating[0] == 0:
                    dating[1] += 1
            else:
                decode_packet(b, pos + 28, caplen, if_link[iface], P, n)
                last_ts = _ts_to_us(ts_raw, if_pow2[iface], if_exp[iface])
                P[n, TS] = last_ts
                dating[0] = 1
            P[n, OFFSET] = base_offset + pos
            n += 1
        elif btype == 3:  # simple packet block: interface 0, no timestamp
            if blen < 16:
                return n, pos, CODE_CORRUPT, last_ts
            origlen = _u32(b, pos + 8, swapped)
            caplen = min(origlen, blen - 16)
            if n_if == 0:
                for c in range(1, NCOL):
                    P[n, c] = 0
                P[n, STATUS] = CORRUPT_RECORD
            else:
                if if_snap[0] > 0:
                    caplen = min(caplen, if_snap[0])
                decode_packet(b, pos + 12, caplen, if_link[0], P, n)
            P[n, TS] = last_ts
            if dating[0] == 0:
                dating[1] += 1
            P[n, OFFSET] = base_offset + pos
            n += 1
        pos += blen
    return n, pos, CODE_OK, last_ts
