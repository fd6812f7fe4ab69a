"""Flow assembly: decoded packets -> mergeable partial flows -> rows of ``schema.FLOWS``.

Three steps, each usable alone:

1. ``FlowAssembler`` (per file, streaming): a numba kernel walks packets in file order
   and keeps one open flow per canonical key (5-tuple + VLAN) in fixed-width state
   arrays. A flow ends on the idle timeout, the active timeout, or after TCP RST / FIN
   in both directions once a new SYN arrives (trailing ACKs and retransmitted RSTs stay
   in the closed flow). Idle is measured against the latest packet time read so far
   (so timestamps that go back do not reopen an idle flow), and an idle flow ends with
   reason ``rst`` / ``fin`` when TCP closed it, else ``idle``, whether its key's next
   packet or a periodic scan finds it: flows do not depend on where read chunks or
   packet batches end. Flows still open at the end of the file (and not idle then) are
   emitted with reason ``end_of_capture`` and can be merged with the next file's flow
   of the same key. State is aggregates only (counts, Welford means/M2, min/max,
   first/last times, first N sizes), never packets; a byte range of a file
   (``pipeline.ingest.split``) also keeps the packets of its first flows, which may
   continue flows open before the range, for the driver to replay.
2. ``merge_partials`` (per key, across the files of a night): joins a flow left open at
   a file's end with the key's next flow when it starts within the idle timeout and the
   merged flow would not exceed the active timeout.
3. ``finalize`` (vectorised): partial aggregates -> NFStream-named columns, IP strings,
   ``flow_id`` and Community ID v1.

Times inside are microseconds (int64); sizes are IP bytes.
"""
from __future__ import annotations

import binascii
import hashlib
import ipaddress
import logging
import struct
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa
from numba import njit, types
from numba.typed import Dict

from pipeline.ingest.capture import decode as D
from pipeline.store import schema


@dataclass(frozen=True)
class FlowConfig:
    """Flow assembly and reader settings (defaults from METHODS.md "Shared input").

    idle_timeout_s: a key silent this long ends its flow (s).
    active_timeout_s: a flow this long is cut and a new one starts (s).
    splt_length: first packet sizes kept per flow (``splt_signed_ps``).
    chunk_bytes: bytes read per I/O call (bounds memory with the largest record).
    batch_rows: packets decoded per kernel call.
    max_open_fragments: IP fragment keys remembered to give later fragments their ports.
    split_bytes: uncompressed captures larger than this are read as equal byte ranges of
        at most this size by parallel tasks (``pipeline.ingest.split``); 0 = one task per
        file. The tables do not depend on it (nor on ``chunk_bytes`` / ``batch_rows``).
    """

    idle_timeout_s: float = 120.0
    active_timeout_s: float = 1800.0
    splt_length: int = schema.SPLT_LENGTH
    chunk_bytes: int = field(default=4 << 20, metadata={"execution_only": True})
    batch_rows: int = field(default=1 << 16, metadata={"execution_only": True})
    max_open_fragments: int = 1 << 16
    split_bytes: int = field(default=256 << 20, metadata={"execution_only": True})


# ------------------------------------------------------------------ state layout
DIRS = ("bidirectional", "src2dst", "dst2src")
KEY_I = ("s0", "s1", "d0", "d1", "sport", "dport", "proto", "vlan", "ipver")
_DIR_I = ("first_us", "last_us", "packets", "bytes", "min_ps", "max_ps") + tuple(
    f"{flag}_packets" for flag in schema.TCP_FLAGS)
I_COLS = KEY_I + tuple(f"{d}_{c}" for d in DIRS for c in _DIR_I) + (
    "fragments", "end_state", "icmp_type", "icmp_code", "reason", "splt_len")
_DIR_F = ("ps_mean", "ps_m2", "piat_mean", "piat_m2", "piat_min", "piat_max")
F_COLS = tuple(f"{d}_{c}" for d in DIRS for c in _DIR_F)
NI, NF = len(I_COLS), len(F_COLS)
_IDX = {name: i for i, name in enumerate(I_COLS)}
_FDX = {name: i for i, name in enumerate(F_COLS)}
I_DIR_BASE = _IDX["bidirectional_first_us"]
I_DIR_WIDTH = len(_DIR_I)
F_DIR_WIDTH = len(_DIR_F)
I_FRAGS, I_END, I_ICMPT, I_ICMPC, I_REASON, I_SPLT = (_IDX[c] for c in (
    "fragments", "end_state", "icmp_type", "icmp_code", "reason", "splt_len"))
# offsets inside one direction's block
O_FIRST, O_LAST, O_PKTS, O_BYTES, O_MIN, O_MAX, O_FLAGS = range(7)
F_PSM, F_PSM2, F_PIM, F_PIM2, F_PIMIN, F_PIMAX = range(6)

REASONS = ("idle", "active", "fin", "rst", "end_of_capture")
R_IDLE, R_ACTIVE, R_FIN, R_RST, R_EOC = range(5)
END_FIN_SRC, END_FIN_DST, END_RST = 1, 2, 4
_FLAG_BITS = np.array([0x02, 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x01], dtype=np.int64)
"""TCP header bits in ``schema.TCP_FLAGS`` order (syn, cwr, ece, urg, ack, psh, rst, fin)."""

FRAG_KEY_TYPE = types.UniTuple(types.int64, 6)
NO_CLOCK = -(1 << 62)
"""``runmax`` before any packet (µs)."""
UNSET_HORIZON, NO_RECORD = -1, -2
"""``horizon`` values: set it at the first packet / no tentative flows (see ``assemble``)."""
REC_COLUMNS = 4


# ------------------------------------------------------------------ numba kernels
@njit(cache=True)
def _canonical_key(s0, s1, d0, d1, sp, dp, proto, vlan):
    if (s0, s1, sp) <= (d0, d1, dp):
        return (s0, s1, d0, d1, sp, dp, proto, vlan)
    return (d0, d1, s0, s1, dp, sp, proto, vlan)


@njit(inline="always")
def _hash(key):
    h = np.uint64(0x243F6A8885A308D3)
    for k in range(8):
        h = (h ^ np.uint64(key[k] & 0x7FFFFFFFFFFFFFFF) ^ np.uint64(k if key[k] >= 0 else 97 + k)) \
            * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return np.int64(h >> np.uint64(1))


@njit(inline="always")
def _find(HK, HV, key):
    """Position of ``key`` in the open-addressing table, or ``-(empty position) - 1``."""
    mask = HV.shape[0] - 1
    i = _hash(key) & mask
    while HV[i] >= 0:
        same = True
        for k in range(8):
            if HK[i, k] != key[k]:
                same = False
                break
        if same:
            return i
        i = (i + 1) & mask
    return -i - 1


@njit(cache=True)
def _insert(HK, HV, HN, key, value):
    pos = _find(HK, HV, key)
    if pos < 0:
        pos = -pos - 1
        HN[0] += 1
    for k in range(8):
        HK[pos, k] = key[k]
    HV[pos] = value


@njit(cache=True)
def _remove(HK, HV, HN, key):
    """Delete ``key`` (linear probing, backward-shift deletion: no tombstones)."""
    pos = _find(HK, HV, key)
    if pos < 0:
        return
    HN[0] -= 1
    mask = HV.shape[0] - 1
    j = pos
    while True:
        j = (j + 1) & mask
        if HV[j] < 0:
            break
        home = _hash((HK[j, 0], HK[j, 1], HK[j, 2], HK[j, 3], HK[j, 4], HK[j, 5], HK[j, 6],
                      HK[j, 7])) & mask
        # move j back to pos unless its home lies cyclically in (pos, j]
        if pos <= j:
            keep = pos < home <= j
        else:
            keep = home > pos or home <= j
        if not keep:
            HK[pos] = HK[j]
            HV[pos] = HV[j]
            pos = j
    HV[pos] = -1


@njit(cache=True)
def _insert_keys(I, slots, HK, HV, HN):
    """Index the flows in ``slots`` by their canonical keys; the first slot whose key is
    already there, else -1."""
    for slot in slots:
        key = _canonical_key(I[slot, 0], I[slot, 1], I[slot, 2], I[slot, 3], I[slot, 4],
                             I[slot, 5], I[slot, 6], I[slot, 7])
        if _find(HK, HV, key) >= 0:
            return slot
        _insert(HK, HV, HN, key, slot)
    return -1


@njit(cache=True)
def rehash(HK, HV, NK, NV):
    """Move every entry of (HK, HV) into the empty, larger (NK, NV)."""
    dummy = np.zeros(1, dtype=np.int64)
    for i in range(HV.shape[0]):
        if HV[i] >= 0:
            _insert(NK, NV, dummy, (HK[i, 0], HK[i, 1], HK[i, 2], HK[i, 3], HK[i, 4], HK[i, 5],
                                    HK[i, 6], HK[i, 7]), HV[i])


@njit(cache=True)
def _emit(slot, reason, I, F, S, T, OI, OF, OS, OT, n_out, HK, HV, HN, free, n_free):
    I[slot, I_REASON] = reason
    OI[n_out] = I[slot]
    OF[n_out] = F[slot]
    OS[n_out] = S[slot]
    OT[n_out] = T[slot]
    key = _canonical_key(I[slot, 0], I[slot, 1], I[slot, 2], I[slot, 3], I[slot, 4],
                         I[slot, 5], I[slot, 6], I[slot, 7])
    _remove(HK, HV, HN, key)
    free[n_free] = slot
    return n_out + 1, n_free + 1


@njit(cache=True)
def _update_dir(I, F, S, slot, d, ts, size, flags, flag_bits):
    ib = I_DIR_BASE + d * I_DIR_WIDTH
    fb = d * F_DIR_WIDTH
    n = I[slot, ib + O_PKTS]
    if n == 0:
        I[slot, ib + O_FIRST] = ts
        I[slot, ib + O_MIN] = size
        I[slot, ib + O_MAX] = size
        F[slot, fb + F_PIMIN] = 0.0
        F[slot, fb + F_PIMAX] = 0.0
    else:
        piat = float(ts - I[slot, ib + O_LAST])
        k = n  # piats so far + 1
        if k == 1:
            F[slot, fb + F_PIMIN] = piat
            F[slot, fb + F_PIMAX] = piat
        else:
            if piat < F[slot, fb + F_PIMIN]:
                F[slot, fb + F_PIMIN] = piat
            if piat > F[slot, fb + F_PIMAX]:
                F[slot, fb + F_PIMAX] = piat
        delta = piat - F[slot, fb + F_PIM]
        F[slot, fb + F_PIM] += delta / k
        F[slot, fb + F_PIM2] += delta * (piat - F[slot, fb + F_PIM])
        if size < I[slot, ib + O_MIN]:
            I[slot, ib + O_MIN] = size
        if size > I[slot, ib + O_MAX]:
            I[slot, ib + O_MAX] = size
    n += 1
    I[slot, ib + O_PKTS] = n
    I[slot, ib + O_LAST] = ts
    I[slot, ib + O_BYTES] += size
    x = float(size)
    delta = x - F[slot, fb + F_PSM]
    F[slot, fb + F_PSM] += delta / n
    F[slot, fb + F_PSM2] += delta * (x - F[slot, fb + F_PSM])
    if flags:
        for f in range(8):
            if flags & flag_bits[f]:
                I[slot, ib + O_FLAGS + f] += 1


@njit(inline="always")
def _idle_reason(end):
    """Why a flow silent for the idle timeout ended: TCP closed by RST / FIN both ways, or idle."""
    if end & END_RST:
        return R_RST
    if (end & 3) == 3:
        return R_FIN
    return R_IDLE


@njit(cache=True)
def assemble(P, n, idle_us, active_us, splt_len, HK, HV, HN, frags, max_frags, orphans, clock,
             RM, resolve, I, F, S, T, free, n_free, OI, OF, OS, OT, REC, flag_bits):
    """Feed packets ``P[:n]`` (file order) into the open-flow table ``(HK, HV, HN)``.

    The table (open addressing: keys ``HK[cap, 8]``, values ``HV[cap]``, -1 = empty,
    ``HN[0]`` = entries; the caller keeps it at most half full) maps canonical key -> slot
    (rows of I/F/S/T); ``free[:n_free]`` are unused slots (the caller guarantees
    ``n_free >= n``). Ended flows are copied to ``OI/OF/OS/OT`` (at most one per packet).

    ``clock``: int64 ``[runmax, horizon, first_fragments, slack]``. ``runmax`` is the latest
    timestamp of the flow packets so far (µs): a flow ends idle when ``runmax`` is an idle
    timeout past its last packet, whatever order the timestamps come in, so the result does
    not depend on where batches end. ``RM`` (replay, ``len(RM) >= n``): per-packet
    ``runmax`` recorded by the task that read the packets (empty: kept here).

    ``horizon`` (``NO_RECORD``: off) is for byte-range tasks, whose packets may continue
    flows open before the range: a flow that starts while ``runmax < horizon``
    (``UNSET_HORIZON``: set at the first packet, ``runmax + idle + slack``) is *tentative*
    (``T``), as are the flows a tentative one is cut into by the active timeout or a SYN
    after a close; a flow that starts later, after an idle gap or with a new key, is
    settled. Packets of tentative flows are listed in ``REC``
    (row, resolved ports, runmax) for the driver to replay onto the flows open before the
    range. ``frags`` maps (src, dst, proto, ip id) of a first fragment to its ports
    (``resolve``: look them up); later fragments with no entry go to ``orphans``.
    Returns ``(n_out, n_free, n_rec)``.
    """
    n_out = 0
    n_rec = 0
    rm = clock[0]
    horizon = clock[1]
    replay = RM.shape[0] > 0
    for i in range(n):
        if P[i, D.STATUS] != D.OK:
            continue
        ts = P[i, D.TS]
        if replay:
            rm = max(rm, RM[i])
        elif ts > rm:
            rm = ts
        if horizon == UNSET_HORIZON:
            horizon = rm + idle_us + clock[3]
        s0 = P[i, D.S0]
        s1 = P[i, D.S1]
        d0 = P[i, D.D0]
        d1 = P[i, D.D1]
        sp = P[i, D.SPORT]
        dp = P[i, D.DPORT]
        proto = P[i, D.PROTO]
        vlan = P[i, D.VLAN]
        frag = P[i, D.FRAG]
        if frag != D.NOT_FRAGMENT and resolve:
            fkey = (s0, s1, d0, d1, proto, P[i, D.IPID])
            if frag == D.FIRST_FRAGMENT:
                if len(frags) >= max_frags:
                    frags.clear()
                frags[fkey] = (sp << 16) | dp
                clock[2] += 1
            else:
                if fkey in frags:
                    ports = frags[fkey]
                    sp = ports >> 16
                    dp = ports & 0xFFFF
                elif len(orphans) < max_frags:
                    orphans[fkey] = 1
        flags = P[i, D.FLAGS]
        key = _canonical_key(s0, s1, d0, d1, sp, dp, proto, vlan)
        pos = _find(HK, HV, key)
        slot = HV[pos] if pos >= 0 else np.int64(-1)
        fresh = 1 if horizon != NO_RECORD and rm < horizon else 0  # a new flow here is tentative
        tentative = fresh
        if slot >= 0:
            tentative = T[slot]
            if rm - I[slot, I_DIR_BASE + O_LAST] >= idle_us:
                n_out, n_free = _emit(slot, _idle_reason(I[slot, I_END]), I, F, S, T, OI, OF, OS,
                                      OT, n_out, HK, HV, HN, free, n_free)
                slot = -1
                tentative = fresh
            elif ts - I[slot, I_DIR_BASE + O_FIRST] >= active_us:
                n_out, n_free = _emit(slot, R_ACTIVE, I, F, S, T, OI, OF, OS, OT, n_out, HK, HV,
                                      HN, free, n_free)
                slot = -1
            else:
                end = I[slot, I_END]
                closed = (end & END_RST) or (end & 3) == 3
                if closed and proto == 6 and (flags & 0x12) == 0x02:
                    reason = R_RST if end & END_RST else R_FIN
                    n_out, n_free = _emit(slot, reason, I, F, S, T, OI, OF, OS, OT, n_out, HK, HV,
                                          HN, free, n_free)
                    slot = -1
        if slot < 0:
            n_free -= 1
            slot = free[n_free]
            I[slot, :] = 0
            F[slot, :] = 0.0
            I[slot, 0] = s0
            I[slot, 1] = s1
            I[slot, 2] = d0
            I[slot, 3] = d1
            I[slot, 4] = sp
            I[slot, 5] = dp
            I[slot, 6] = proto
            I[slot, 7] = vlan
            I[slot, 8] = P[i, D.IPVER]
            I[slot, I_ICMPT] = P[i, D.ICMPTYPE]
            I[slot, I_ICMPC] = P[i, D.ICMPCODE]
            T[slot] = tentative
            _insert(HK, HV, HN, key, slot)
        if tentative:
            REC[n_rec, 0] = i
            REC[n_rec, 1] = sp
            REC[n_rec, 2] = dp
            REC[n_rec, 3] = rm
            n_rec += 1
        forward = s0 == I[slot, 0] and s1 == I[slot, 1] and sp == I[slot, 4]
        if not forward and s0 == d0 and s1 == d1 and sp == dp:
            forward = True
        size = P[i, D.IPLEN]
        _update_dir(I, F, S, slot, 0, ts, size, flags, flag_bits)
        _update_dir(I, F, S, slot, 1 if forward else 2, ts, size, flags, flag_bits)
        if frag != D.NOT_FRAGMENT:
            I[slot, I_FRAGS] += 1
        k = I[slot, I_SPLT]
        if k < splt_len:
            S[slot, k] = size if forward else -size
            I[slot, I_SPLT] = k + 1
        if proto == 6:
            if flags & 0x04:
                I[slot, I_END] |= END_RST
            if flags & 0x01:
                I[slot, I_END] |= END_FIN_SRC if forward else END_FIN_DST
    clock[0] = rm
    clock[1] = horizon
    return n_out, n_free, n_rec


@njit(cache=True)
def expire(now_us, idle_us, everything, HK, HV, HN, I, F, S, T, free, n_free, OI, OF, OS, OT):
    """Emit flows idle since ``now_us - idle_us`` (or all, reason end_of_capture)."""
    slots = np.empty(HN[0], dtype=np.int64)
    m = 0
    for pos in range(HV.shape[0]):
        slot = HV[pos]
        if slot >= 0 and (everything or now_us - I[slot, I_DIR_BASE + O_LAST] >= idle_us):
            slots[m] = slot
            m += 1
    n_out = 0
    for j in range(m):
        slot = slots[j]
        reason = R_EOC if everything else _idle_reason(I[slot, I_END])
        n_out, n_free = _emit(slot, reason, I, F, S, T, OI, OF, OS, OT, n_out, HK, HV, HN, free,
                              n_free)
    return n_out, n_free


# ------------------------------------------------------------------ per-file driver
class FlowAssembler:
    """Streaming flow state for one capture file, or one byte range of it; memory grows with
    open flows only (plus, for a range, the packets of its tentative flows).

    ``record``: a byte range after a file's first (see ``assemble``; ``slack_us`` widens
    its horizon): flows that may continue flows open before the range are tentative;
    their packets are kept in
    ``recorded`` (``[rows, decode.NCOL + 1]``: packet rows with resolved ports, then the
    range's ``runmax``) and the flows themselves are dropped by ``take``. ``runmax_us``:
    the latest packet time before the range, when known. ``fragments``: first-fragment
    ports known before the range (``{(s0, s1, d0, d1, proto, ip_id): sport << 16 | dport}``).
    """

    def __init__(self, config: FlowConfig = FlowConfig(), record: bool = False,
                 runmax_us: int | None = None, fragments: dict | None = None,
                 slack_us: int = 0):
        self.config = config
        self.idle_us = int(config.idle_timeout_s * 1e6)
        self.active_us = int(config.active_timeout_s * 1e6)
        self.HK = np.zeros((1 << 12, 8), dtype=np.int64)
        self.HV = np.full(1 << 12, -1, dtype=np.int64)
        self.HN = np.zeros(1, dtype=np.int64)
        self.frags = Dict.empty(key_type=FRAG_KEY_TYPE, value_type=types.int64)
        for key, ports in (fragments or {}).items():
            self.frags[tuple(int(k) for k in key)] = int(ports)
        self.orphans = Dict.empty(key_type=FRAG_KEY_TYPE, value_type=types.int64)
        self.clock = np.array([NO_CLOCK if runmax_us is None else int(runmax_us),
                               UNSET_HORIZON if record else NO_RECORD, 0, int(slack_us)],
                              dtype=np.int64)
        self._alloc(1024)
        self.last_scan_us = None
        self._scratch = None
        self.out: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.recorded: list[np.ndarray] = []
        self.tentative_flows = 0
        """Tentative flows dropped by ``take`` (the driver rebuilds them from ``recorded``)."""

    def _alloc(self, capacity: int) -> None:
        self.I = np.zeros((capacity, NI), dtype=np.int64)
        self.F = np.zeros((capacity, NF), dtype=np.float64)
        self.S = np.zeros((capacity, self.config.splt_length), dtype=np.int32)
        self.T = np.zeros(capacity, dtype=np.int64)
        self.free = np.arange(capacity - 1, -1, -1, dtype=np.int64)
        self.n_free = capacity

    def _grow(self, needed: int) -> None:
        old = self.I.shape[0]
        new = max(old * 2, old + needed)
        self.I = np.concatenate([self.I, np.zeros((new - old, NI), np.int64)])
        self.F = np.concatenate([self.F, np.zeros((new - old, NF), np.float64)])
        self.S = np.concatenate([self.S, np.zeros((new - old, self.S.shape[1]), np.int32)])
        self.T = np.concatenate([self.T, np.zeros(new - old, np.int64)])
        free = np.empty(new, dtype=np.int64)
        free[: self.n_free] = self.free[: self.n_free]
        added = np.arange(new - 1, old - 1, -1, dtype=np.int64)
        free[self.n_free: self.n_free + len(added)] = added
        self.free = free
        self.n_free += len(added)

    def _reserve(self, n: int) -> None:
        """Room for ``n`` more flows: free slots and a hash table at most half full."""
        if self.n_free < n:
            self._grow(n - self.n_free)
        if 2 * (int(self.HN[0]) + n) > len(self.HV):
            cap = len(self.HV)
            while 2 * (int(self.HN[0]) + n) > cap:
                cap *= 2
            NK, NV = np.zeros((cap, 8), dtype=np.int64), np.full(cap, -1, dtype=np.int64)
            rehash(self.HK, self.HV, NK, NV)
            self.HK, self.HV = NK, NV

    def _out_buffers(self, rows: int):
        """Reused scratch rows for ended flows (copied out, so they are never retained)."""
        if self._scratch is None or len(self._scratch[0]) < rows:
            rows = max(rows, 1024)
            self._scratch = (np.empty((rows, NI), np.int64), np.empty((rows, NF), np.float64),
                             np.empty((rows, self.S.shape[1]), np.int32), np.empty(rows, np.int64),
                             np.empty((rows, REC_COLUMNS), np.int64))
        return self._scratch

    def add(self, P: np.ndarray, RM: np.ndarray | None = None) -> None:
        """Feed one packet matrix (``decode`` layout); ``RM``: per-row ``runmax`` when
        replaying packets another task recorded (their ports are already resolved)."""
        n = len(P)
        if n == 0:
            return
        self._reserve(n)
        OI, OF, OS, OT, REC = self._out_buffers(n)
        n_out, self.n_free, n_rec = assemble(
            P, n, self.idle_us, self.active_us, self.config.splt_length, self.HK, self.HV, self.HN,
            self.frags, self.config.max_open_fragments, self.orphans, self.clock,
            _NO_RM if RM is None else RM, RM is None, self.I, self.F, self.S, self.T, self.free,
            self.n_free, OI, OF, OS, OT, REC, _FLAG_BITS)
        if n_out:
            self.out.append((OI[:n_out].copy(), OF[:n_out].copy(), OS[:n_out].copy(), OT[:n_out].copy()))
        if n_rec:
            rows = P[REC[:n_rec, 0]]
            rows[:, D.SPORT] = REC[:n_rec, 1]
            rows[:, D.DPORT] = REC[:n_rec, 2]
            self.recorded.append(np.column_stack([rows, REC[:n_rec, 3]]))
        now = int(self.clock[0])
        if now != NO_CLOCK and (self.last_scan_us is None or now - self.last_scan_us >= self.idle_us // 4):
            self._expire(now, everything=False)
            self.last_scan_us = now

    def _expire(self, now: int, everything: bool) -> None:
        if self.open_flows == 0:
            return
        OI, OF, OS, OT, _REC = self._out_buffers(self.open_flows)
        n_out, self.n_free = expire(now, self.idle_us, everything, self.HK, self.HV, self.HN,
                                    self.I, self.F, self.S, self.T, self.free, self.n_free,
                                    OI, OF, OS, OT)
        if n_out:
            self.out.append((OI[:n_out].copy(), OF[:n_out].copy(), OS[:n_out].copy(), OT[:n_out].copy()))

    def expire_idle(self, now_us: int | None = None) -> None:
        """Emit the flows an idle timeout older than ``now_us`` (default: the latest packet
        time; a later ``now_us`` also moves that clock on)."""
        if now_us is not None:
            self.clock[0] = max(int(self.clock[0]), int(now_us))
        if int(self.clock[0]) != NO_CLOCK:
            self._expire(int(self.clock[0]), everything=False)

    def finish(self) -> None:
        """Emit the flows idle at the latest packet time (reason ``idle`` / ``fin`` /
        ``rst``), then every other open flow with reason ``end_of_capture``."""
        self.expire_idle()
        self._expire(0, everything=True)

    def detach_open(self, capture_file: str) -> pa.Table:
        """End a byte range: flows idle at its latest packet are emitted (``take`` them as
        usual); the settled flows still open leave as a partial table (reason
        ``end_of_capture``) that :meth:`resume` continues; tentative ones are dropped."""
        self.expire_idle()
        pending, self.out = self.out, []
        self._expire(0, everything=True)
        opened = self.take(capture_file)
        self.out = pending
        return opened

    def resume(self, states: pa.Table) -> None:
        """Continue open flows (partial rows from :meth:`detach_open`) as if never closed."""
        n = states.num_rows
        if n == 0:
            return
        self._reserve(n)
        ints = np.stack([states.column(c).to_numpy() for c in I_COLS], axis=1).astype(np.int64)
        floats = np.stack([states.column(c).to_numpy() for c in F_COLS], axis=1).astype(np.float64)
        slots = self.free[self.n_free - n:self.n_free][::-1].copy()
        self.n_free -= n
        self.I[slots] = ints
        self.F[slots] = floats
        self.T[slots] = 0
        self.S[slots] = 0
        splt = states.column("splt").combine_chunks()
        lengths = np.diff(splt.offsets.to_numpy())
        values = splt.values.to_numpy(zero_copy_only=False)
        rows = np.repeat(slots, lengths)
        cols = np.arange(len(values)) - np.repeat(splt.offsets.to_numpy()[:-1], lengths)
        self.S[rows, cols] = values
        clash = _insert_keys(self.I, slots, self.HK, self.HV, self.HN)
        if clash >= 0:
            raise ValueError(f"resume: a flow of key {tuple(self.I[clash, :8])} is already open")

    def take(self, capture_file: str) -> pa.Table:
        """The settled flows emitted so far as a partial-flow Arrow table (and forget them)."""
        if not self.out:
            return partial_table(np.zeros((0, NI), np.int64), np.zeros((0, NF)),
                                 np.zeros((0, self.S.shape[1]), np.int32), capture_file)
        OI = np.concatenate([o[0] for o in self.out])
        OF = np.concatenate([o[1] for o in self.out])
        OS = np.concatenate([o[2] for o in self.out])
        OT = np.concatenate([o[3] for o in self.out])
        self.out = []
        settled = OT == 0
        if not settled.all():
            self.tentative_flows += int((~settled).sum())
            OI, OF, OS = OI[settled], OF[settled], OS[settled]
        return partial_table(OI, OF, OS, capture_file)

    @property
    def runmax_us(self) -> int | None:
        """Latest timestamp of the flow packets so far (µs), None before the first."""
        return None if int(self.clock[0]) == NO_CLOCK else int(self.clock[0])

    @property
    def first_fragments(self) -> int:
        """First fragments whose ports were remembered (each may clear the table once full)."""
        return int(self.clock[2])

    @property
    def open_flows(self) -> int:
        return int(self.HN[0])

    @property
    def pending_flows(self) -> int:
        """Ended flows not yet taken."""
        return sum(len(o[0]) for o in self.out)


_NO_RM = np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------ partial flow table
PARTIAL_SCHEMA = pa.schema(
    [pa.field(c, pa.int64()) for c in I_COLS]
    + [pa.field(c, pa.float64()) for c in F_COLS]
    + [pa.field("splt", pa.list_(pa.int32())), pa.field("capture_file", pa.string())]
)
"""Mergeable per-file flow aggregates (internal between the stages of this module)."""


def partial_table(OI: np.ndarray, OF: np.ndarray, OS: np.ndarray, capture_file: str) -> pa.Table:
    """``[flows, NI]`` ints, ``[flows, NF]`` floats, ``[flows, N]`` sizes -> Arrow."""
    n = len(OI)
    lengths = OI[:, I_SPLT]
    width = OS.shape[1]
    mask = np.arange(width)[None, :] < lengths[:, None]
    values = pa.array(OS[mask].astype(np.int32), type=pa.int32())
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    splt = pa.ListArray.from_arrays(offsets, values)
    columns = [pa.array(OI[:, j]) for j in range(NI)] + [pa.array(OF[:, j]) for j in range(NF)]
    columns += [splt, pa.array([capture_file] * n, type=pa.string())]
    return pa.Table.from_arrays(columns, schema=PARTIAL_SCHEMA)


# ------------------------------------------------------------------ cross-file merge
def _dir_cols(d: str) -> list[str]:
    return [f"{d}_{c}" for c in _DIR_I] + [f"{d}_{c}" for c in _DIR_F]


def _merge_dir(a: dict, b: dict, da: str, db: str) -> None:
    """Merge direction ``db`` of ``b`` into direction ``da`` of ``a`` (in place)."""
    na, nb = a[f"{da}_packets"], b[f"{db}_packets"]
    if nb == 0:
        return
    if na == 0:
        for c in _DIR_I + _DIR_F:
            a[f"{da}_{c}"] = b[f"{db}_{c}"]
        return
    # packet sizes: Chan's parallel Welford
    n = na + nb
    delta = b[f"{db}_ps_mean"] - a[f"{da}_ps_mean"]
    a[f"{da}_ps_m2"] = a[f"{da}_ps_m2"] + b[f"{db}_ps_m2"] + delta * delta * na * nb / n
    a[f"{da}_ps_mean"] = a[f"{da}_ps_mean"] + delta * nb / n
    # inter-arrival: a's (na - 1) piats + the gap + b's (nb - 1) piats
    gap = float(b[f"{db}_first_us"] - a[f"{da}_last_us"])
    ka, kb = na - 1, nb - 1
    stats = [(ka, a[f"{da}_piat_mean"], a[f"{da}_piat_m2"]), (1, gap, 0.0),
             (kb, b[f"{db}_piat_mean"], b[f"{db}_piat_m2"])]
    k, mean, m2 = 0, 0.0, 0.0
    for kx, mx, m2x in stats:
        if kx == 0:
            continue
        tot = k + kx
        dlt = mx - mean
        m2 = m2 + m2x + dlt * dlt * k * kx / tot
        mean = mean + dlt * kx / tot
        k = tot
    a[f"{da}_piat_mean"], a[f"{da}_piat_m2"] = mean, m2
    mins = [gap] + ([a[f"{da}_piat_min"]] if ka else []) + ([b[f"{db}_piat_min"]] if kb else [])
    maxs = [gap] + ([a[f"{da}_piat_max"]] if ka else []) + ([b[f"{db}_piat_max"]] if kb else [])
    a[f"{da}_piat_min"], a[f"{da}_piat_max"] = min(mins), max(maxs)
    a[f"{da}_last_us"] = b[f"{db}_last_us"]
    a[f"{da}_packets"] = n
    a[f"{da}_bytes"] += b[f"{db}_bytes"]
    a[f"{da}_min_ps"] = min(a[f"{da}_min_ps"], b[f"{db}_min_ps"])
    a[f"{da}_max_ps"] = max(a[f"{da}_max_ps"], b[f"{db}_max_ps"])
    for flag in schema.TCP_FLAGS:
        a[f"{da}_{flag}_packets"] += b[f"{db}_{flag}_packets"]


def merge_two(a: dict, b: dict, splt_length: int) -> dict:
    """Flow ``a`` (left open at its file's end) continued by flow ``b`` of the same key."""
    a = dict(a)
    same = (b["s0"], b["s1"], b["sport"]) == (a["s0"], a["s1"], a["sport"])
    _merge_dir(a, b, "bidirectional", "bidirectional")
    _merge_dir(a, b, "src2dst", "src2dst" if same else "dst2src")
    _merge_dir(a, b, "dst2src", "dst2src" if same else "src2dst")
    a["fragments"] += b["fragments"]
    a["end_state"] = b["end_state"] if same else (
        (b["end_state"] & END_RST) | ((b["end_state"] & 1) << 1) | ((b["end_state"] & 2) >> 1))
    a["reason"] = b["reason"]
    sizes = list(a["splt"]) + [s if same else -s for s in b["splt"]]
    a["splt"] = sizes[:splt_length]
    a["splt_len"] = len(a["splt"])
    return a


def _closed_reason(end_state: int) -> int | None:
    """``R_RST`` / ``R_FIN`` for a TCP flow closed by RST / FIN both ways, else None."""
    if end_state & END_RST:
        return R_RST
    if end_state & 3 == 3:
        return R_FIN
    return None


def merge_rows(rows: list[dict], config: FlowConfig) -> list[dict]:
    """Merge one key's partial flows (any order) across file boundaries.

    A flow whose reason is ``end_of_capture`` absorbs the key's next flow when that one
    starts less than the idle timeout after it and the merged flow stays shorter than
    the active timeout; otherwise it ends with reason ``idle`` / ``active``, except the
    last one, which keeps ``end_of_capture``.
    """
    idle_us = int(config.idle_timeout_s * 1e6)
    active_us = int(config.active_timeout_s * 1e6)
    rows = sorted(rows, key=lambda r: (r["bidirectional_first_us"], r["capture_file"]))
    merged: list[dict] = []
    for row in rows:
        if merged and merged[-1]["reason"] == R_EOC:
            prev = merged[-1]
            closed = _closed_reason(prev["end_state"])
            gap = row["bidirectional_first_us"] - prev["bidirectional_last_us"]
            span = row["bidirectional_last_us"] - prev["bidirectional_first_us"]
            reopened = closed is not None and row["bidirectional_syn_packets"] > 0
            if gap < idle_us and span < active_us and not reopened:
                merged[-1] = merge_two(prev, row, config.splt_length)
                continue
            if closed is not None:
                prev["reason"] = closed
            else:
                prev["reason"] = R_IDLE if gap >= idle_us else R_ACTIVE
        merged.append(dict(row))
    return merged


KEY_COLUMNS = ["ipver", "proto", "vlan"]


def canonical_key_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """Canonical (lower endpoint first) key columns of a partial-flow table."""
    cols = {c: table.column(c).to_numpy() for c in ("s0", "s1", "d0", "d1", "sport", "dport")}
    s = np.stack([cols["s0"], cols["s1"], cols["sport"]])
    d = np.stack([cols["d0"], cols["d1"], cols["dport"]])
    # lexicographic (hi, lo, port) comparison, signed like the kernel's tuples
    less = (s[0] < d[0]) | ((s[0] == d[0]) & ((s[1] < d[1]) | ((s[1] == d[1]) & (s[2] <= d[2]))))
    lo = np.where(less, s, d)
    hi = np.where(less, d, s)
    return {"k_a0": lo[0], "k_a1": lo[1], "k_ap": lo[2], "k_b0": hi[0], "k_b1": hi[1],
            "k_bp": hi[2]}


def merge_partial_table(table: pa.Table, config: FlowConfig = FlowConfig()) -> pa.Table:
    """Merge a night's partial flows (Arrow, any order) into whole flows (single process)."""
    if table.num_rows == 0:
        return table
    keys = canonical_key_columns(table)
    frame = table.to_pandas()
    for k, v in keys.items():
        frame[k] = v
    group_cols = list(keys) + ["proto", "vlan"]
    multi = frame.duplicated(group_cols, keep=False)
    single = frame.loc[~multi, list(table.column_names)]
    out_rows: list[dict] = []
    for _, group in frame.loc[multi].groupby(group_cols, sort=False):
        out_rows.extend(merge_rows(group[list(table.column_names)].to_dict("records"), config))
    import pandas as pd

    result = pd.concat([single, pd.DataFrame(out_rows, columns=table.column_names)],
                       ignore_index=True) if out_rows else single
    result["splt"] = [list(map(int, s)) for s in result["splt"]]
    return pa.Table.from_pandas(result, schema=PARTIAL_SCHEMA, preserve_index=False)


def expire_at_night_end(table: pa.Table, night_last_us: int | None,
                        config: FlowConfig = FlowConfig()) -> pa.Table:
    """Final reasons of flows still marked ``end_of_capture`` after merging: ``fin`` /
    ``rst`` when TCP closed them, ``idle`` when their last packet is an idle timeout or
    more before the night's last packet (their file just ended first)."""
    if night_last_us is None or table.num_rows == 0:
        return table
    reason = table.column("reason").to_numpy()
    last = table.column("bidirectional_last_us").to_numpy()
    end = table.column("end_state").to_numpy()
    eoc = reason == R_EOC
    idle = eoc & (night_last_us - last >= int(config.idle_timeout_s * 1e6))
    updated = np.where(idle, R_IDLE, reason)
    updated = np.where(eoc & ((end & 3) == 3), R_FIN, updated)
    updated = np.where(eoc & ((end & END_RST) != 0), R_RST, updated)
    index = table.column_names.index("reason")
    return table.set_column(index, "reason", pa.array(updated.astype(np.int64)))


# ------------------------------------------------------------------ finalisation
@lru_cache(maxsize=1 << 16)
def _ip_text(version: int, hi: int, lo: int) -> str:
    if version == 6:
        return ipaddress.IPv6Address(((hi & 0xFFFFFFFFFFFFFFFF) << 64)
                                     | (lo & 0xFFFFFFFFFFFFFFFF)).compressed
    return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))


_COMMUNITY = None
logging.getLogger("communityid").setLevel(logging.WARNING)  # it logs every hash at INFO
_PORTED = (6, 17, 132)


def _packed(version: int, hi: int, lo: int) -> bytes:
    if version == 6:
        return (hi & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big") + (lo & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    return (lo & 0xFFFFFFFF).to_bytes(4, "big")


def community_id_packed(proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> str:
    """Community ID v1, seed 0, for TCP/UDP/SCTP and port-less protocols (not ICMP).

    The spec's byte layout (seed, ordered addresses, protocol, pad, ordered ports) hashed
    with SHA-1 and base64'd; the ``communityid`` package is the reference it is tested
    against (``community_id``), this is the same computation without its per-call
    parsing and logging.
    """
    ported = proto in _PORTED
    if (src, sport if ported else 0) > (dst, dport if ported else 0):
        src, dst, sport, dport = dst, src, dport, sport
    data = b"\x00\x00" + src + dst + bytes((proto, 0))
    if ported:
        data += struct.pack("!HH", sport, dport)
    return "1:" + binascii.b2a_base64(hashlib.sha1(data).digest(), newline=False).decode()


@lru_cache(maxsize=1 << 16)
def community_id(src: str, dst: str, proto: int, sport: int, dport: int, icmp_type: int,
                 icmp_code: int) -> str | None:
    """Community ID v1 (seed 0, base64) of one flow with the ``communityid`` package;
    ICMP/ICMPv6 use type/code as ports."""
    global _COMMUNITY
    import communityid

    if _COMMUNITY is None:
        _COMMUNITY = communityid.CommunityID(seed=0)
    try:
        if proto in (1, 58):
            tpl = communityid.FlowTuple(proto, src, dst, icmp_type, icmp_code)
        elif proto in _PORTED:
            tpl = communityid.FlowTuple(proto, src, dst, sport, dport)
        else:
            tpl = communityid.FlowTuple(proto, src, dst)
        return _COMMUNITY.calc(tpl)
    except Exception:  # the library rejects some exotic tuples; the column is nullable
        return None


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xFF51AFD7ED558CCD)
_M3 = np.uint64(0xC4CEB9FE1A85EC53)


def _fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (full avalanche), on uint64 arrays."""
    h = h ^ (h >> np.uint64(33))
    h = h * _M2
    h = h ^ (h >> np.uint64(33))
    h = h * _M3
    return h ^ (h >> np.uint64(33))


def flow_ids(ipver, s0, s1, sport, d0, d1, dport, proto, vlan, first_us) -> list[str]:
    """16 hex digits per flow: hash of the canonical endpoints (lower first), protocol,
    VLAN and first packet time (µs); the same whichever side initiated. int64 arrays in."""
    less = (s0 < d0) | ((s0 == d0) & ((s1 < d1) | ((s1 == d1) & (sport <= dport))))
    fields = [ipver, np.where(less, s0, d0), np.where(less, s1, d1),
              np.where(less, sport, dport), np.where(less, d0, s0), np.where(less, d1, s1),
              np.where(less, dport, sport), proto, vlan, first_us]
    h = np.full(len(ipver), 0x243F6A8885A308D3, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for value in fields:
            h = _fmix((h ^ np.asarray(value).astype(np.int64).view(np.uint64)) * _M1)
    return [f"{x:016x}" for x in h.tolist()]


def _ip_texts(version: np.ndarray, hi: np.ndarray, lo: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Canonical text and packed bytes of each address, computed once per distinct one.

    IPv4 addresses are made unique on one int64 (a fast 1-D sort); IPv6 on (hi, lo).
    """
    texts = np.empty(len(version), dtype=object)
    packed = np.empty(len(version), dtype=object)
    for v in (4, 6):
        rows = np.flatnonzero(version == v) if v == 6 else np.flatnonzero(version != 6)
        if len(rows) == 0:
            continue
        if v == 4:
            unique, inverse = np.unique(lo[rows], return_inverse=True)
            pairs = [(0, int(x)) for x in unique]
        else:
            unique, inverse = np.unique(np.stack([hi[rows], lo[rows]], axis=1), axis=0,
                                        return_inverse=True)
            pairs = [(int(h), int(l)) for h, l in unique]
        utext = np.array([_ip_text(v, h, l) for h, l in pairs], dtype=object)
        upacked = np.array([_packed(v, h, l) for h, l in pairs], dtype=object)
        inverse = inverse.reshape(-1)
        texts[rows] = utext[inverse]
        packed[rows] = upacked[inverse]
    return texts, packed


def finalize(table: pa.Table) -> pa.Table:
    """Partial-flow Arrow table -> ``schema.FLOWS`` Arrow table (vectorised stats)."""
    n = table.num_rows
    col = {c: table.column(c).to_numpy(zero_copy_only=False) for c in I_COLS + F_COLS}
    out: dict[str, object] = {}
    ipver = col["ipver"]
    s0, s1, d0, d1 = col["s0"], col["s1"], col["d0"], col["d1"]
    src, src_packed = _ip_texts(ipver, s0, s1)
    dst, dst_packed = _ip_texts(ipver, d0, d1)
    proto, sport, dport, vlan = col["proto"], col["sport"], col["dport"], col["vlan"]
    first_us = col["bidirectional_first_us"]
    out["flow_id"] = flow_ids(ipver, s0, s1, sport, d0, d1, dport, proto, vlan, first_us)
    icmp_t, icmp_c = col["icmp_type"], col["icmp_code"]
    proto_l, sport_l, dport_l = proto.tolist(), sport.tolist(), dport.tolist()
    out["community_id"] = [
        community_id(src[i], dst[i], proto_l[i], 0, 0, int(icmp_t[i]), int(icmp_c[i]))
        if proto_l[i] in (1, 58) else
        community_id_packed(proto_l[i], src_packed[i], dst_packed[i], sport_l[i], dport_l[i])
        for i in range(n)]
    out["ip_version"] = ipver
    out["src_ip"], out["dst_ip"] = src.tolist(), dst.tolist()
    out["src_port"], out["dst_port"], out["protocol"] = sport, dport, proto
    out["vlan_id"] = pa.array(vlan, mask=vlan < 0, type=pa.int32())
    out["first_seen_ms"] = first_us // 1000
    out["last_seen_ms"] = col["bidirectional_last_us"] // 1000
    for d in DIRS:
        pk = col[f"{d}_packets"]
        has = pk > 0
        out[f"{d}_first_seen_ms"] = np.where(has, col[f"{d}_first_us"] // 1000, 0)
        out[f"{d}_last_seen_ms"] = np.where(has, col[f"{d}_last_us"] // 1000, 0)
        out[f"{d}_duration_ms"] = (col[f"{d}_last_us"] - col[f"{d}_first_us"]) / 1000.0
        out[f"{d}_packets"] = pk
        out[f"{d}_bytes"] = col[f"{d}_bytes"]
        out[f"{d}_min_ps"] = col[f"{d}_min_ps"].astype(np.float64)
        out[f"{d}_mean_ps"] = np.where(has, col[f"{d}_ps_mean"], 0.0)
        out[f"{d}_stddev_ps"] = np.sqrt(np.where(pk > 1, col[f"{d}_ps_m2"] / np.maximum(pk - 1, 1),
                                                 0.0).clip(0))
        out[f"{d}_max_ps"] = col[f"{d}_max_ps"].astype(np.float64)
        k = pk - 1
        out[f"{d}_min_piat_ms"] = np.where(k > 0, col[f"{d}_piat_min"], 0.0) / 1000.0
        out[f"{d}_mean_piat_ms"] = np.where(k > 0, col[f"{d}_piat_mean"], 0.0) / 1000.0
        out[f"{d}_stddev_piat_ms"] = np.sqrt(np.where(k > 1, col[f"{d}_piat_m2"] / np.maximum(
            k - 1, 1), 0.0).clip(0)) / 1000.0
        out[f"{d}_max_piat_ms"] = np.where(k > 0, col[f"{d}_piat_max"], 0.0) / 1000.0
        for flag in schema.TCP_FLAGS:
            out[f"{d}_{flag}_packets"] = col[f"{d}_{flag}_packets"]
    out["ip_fragment_packets"] = col["fragments"]
    out["splt_signed_ps"] = table.column("splt")
    out["expiration_reason"] = [REASONS[r] for r in col["reason"]]
    out["capture_file"] = table.column("capture_file")
    arrays = []
    for field in schema.FLOWS:
        value = out[field.name]
        if isinstance(value, (pa.Array, pa.ChunkedArray)):
            arrays.append(value.cast(field.type))
        else:
            arrays.append(pa.array(value).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema.FLOWS)
