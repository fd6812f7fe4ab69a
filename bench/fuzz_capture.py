"""Mutation fuzzing of the capture parser on the real shared captures.

Each case takes a real capture (``captures/`` and the head of the archive files),
applies one mutation (bit flips, truncation, an inflated length field, random bytes
after a valid header; sometimes gzip-wrapped) and runs ``ingest.process_file`` on it
under an alarm. A case fails when the parser raises, runs past ``--case-timeout``, breaks
the accounting identity, stops early without reporting an error, or (for a plain
truncation of a classic pcap) disagrees with an independent ``struct`` count of the
whole records left.

A third of the cases damage the middle of the file instead (``MID_FILE_KINDS``): random
bytes over a span, a zeroed record header (pcapng: block type and length), a huge
captured length. The records are found beforehand with an independent ``struct`` walk;
what a correct resynchronisation recovers is every packet whose record lies wholly after
the damaged bytes, and the case counts the packets the reader returns from there on.
Reading more than that (packets invented from damaged or misaligned bytes) or losing a
packet wholly before the damage fails the case; recovering fewer is reported.

    python bench/fuzz_capture.py --cases 10000 [--seed 1] [--shared-data DIR]
"""
from __future__ import annotations

import argparse
import gzip
import logging
import random
import resource
import signal
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.ingest.capture.decode import OFFSET  # noqa: E402
from pipeline.ingest.capture.reader import CaptureReader  # noqa: E402
from pipeline.ingest.extract import FileScan  # noqa: E402

DEFAULT_SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MAX_SEED_BYTES = 256 * 1024


MID_FILE_KINDS = ("random_mid", "zero_header", "huge_incl")
MID_FILE_SHARE = 1 / 3


@dataclass
class Case:
    index: int
    source: str
    mutation: str
    ok: bool
    detail: str = ""
    expected_after: int | None = None
    """Mid-file mutations: packets wholly after the damaged bytes (a correct resync's)."""
    recovered_after: int | None = None
    """Mid-file mutations: packets the reader returned from the end of the damage on."""


class _Timeout(Exception):
    pass


def load_seeds(shared_data: Path, limit: int = 64) -> list[tuple[str, bytes]]:
    """Small real captures (whole, or the first 256 KiB of a big one), uncompressed."""
    seeds = []
    captures = sorted((shared_data / "captures").iterdir()) if (shared_data / "captures").is_dir() else []
    pcapngs = [p for p in captures if p.suffix == ".pcapng"]
    pcaps = [p for p in captures if p.suffix != ".pcapng"]
    chosen = pcapngs[: limit // 2] + pcaps[: limit - min(len(pcapngs), limit // 2)]
    for path in chosen:
        seeds.append((path.name, path.read_bytes()[:MAX_SEED_BYTES]))
    for path in sorted((shared_data / "archive").rglob("*.pcap*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            seeds.append((path.name, fh.read(MAX_SEED_BYTES)))
    return seeds


CLASSIC_PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")


def whole_pcap_records(data: bytes) -> int | None:
    """Whole records of a classic pcap (None if not classic pcap)."""
    if data[:4] not in CLASSIC_PCAP_MAGICS:
        return None
    return len(packet_records(data))


def packet_records(data: bytes) -> list[tuple[int, int, int]] | None:
    """``(start, end, length_field_offset)`` of every whole packet record of a classic
    pcap or pcapng capture (``struct`` only; None for anything else). The length field is
    the captured length (pcap ``incl_len``, EPB captured length; -1 for other blocks)."""
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        records, pos, order = [], 0, "<"
        while pos + 12 <= len(data):
            if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
                order = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            btype, blen = struct.unpack(order + "II", data[pos:pos + 8])
            if blen < 12 or pos + blen > len(data):
                break
            if btype in (2, 3, 6):
                records.append((pos, pos + blen, pos + 20 if btype == 6 else -1))
            pos += blen
        return records
    if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        return None
    records, pos = [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack(order + "I", data[pos + 8:pos + 12])[0]
        if caplen > 262_144 or pos + 16 + caplen > len(data):
            break
        records.append((pos, pos + 16 + caplen, pos + 8))
        pos += 16 + caplen
    return records


def mutate_mid_file(data: bytes, records: list[tuple[int, int, int]], rng: random.Random
                    ) -> tuple[str, bytes, tuple[int, int]]:
    """One damage inside the file: ``(name, mutated, (first, end))``, the bytes actually
    changed being ``mutated[first:end]`` (same length as ``data``)."""
    kind = rng.choice(MID_FILE_KINDS)
    buf = bytearray(data)
    start, stop, length_at = records[rng.randrange(len(records))]
    pcapng = data[:4] == b"\x0a\x0d\x0d\x0a"
    if kind == "random_mid":
        first = rng.randrange(len(buf) // 4, max(len(buf) // 4 + 1, 3 * len(buf) // 4))
        end = min(len(buf), first + rng.randint(1, 4096))
        buf[first:end] = bytes(rng.getrandbits(8) for _ in range(end - first))
    elif kind == "zero_header":
        first, end = start, start + (8 if pcapng else 16)
        buf[first:end] = bytes(end - first)
    else:  # huge_incl: the captured length, or a pcapng block's length without one
        first = length_at if length_at >= 0 else start + 4
        end = first + 4
        big_endian = data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d") or \
            (pcapng and data[8:12] == b"\x1a\x2b\x3c\x4d")
        buf[first:end] = struct.pack(">I" if big_endian else "<I", rng.choice(
            [0xFFFFFFFF, 0x7FFFFFF0, 0x01000000, rng.randrange(1 << 24, 1 << 32)]))
    changed = [i for i in range(first, end) if buf[i] != data[i]]
    damaged = (changed[0], changed[-1] + 1) if changed else (first, first)
    return kind, bytes(buf), damaged


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of ``data``; returns ``(name, mutated)``."""
    kind = rng.choice(["bitflip", "truncate", "inflate", "random_tail", "bitflip_head",
                       "zero_run"])
    buf = bytearray(data)
    if kind in ("bitflip", "bitflip_head"):
        span = min(len(buf), 512) if kind == "bitflip_head" else len(buf)
        for _ in range(rng.randint(1, 16)):
            if span:
                i = rng.randrange(span)
                buf[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        buf = buf[: rng.randrange(len(buf) + 1)]
    elif kind == "inflate":
        # a length-like field near the start of some record/block gets a huge value
        if len(buf) >= 16:
            i = rng.randrange(0, min(len(buf) - 4, 4096)) & ~3
            value = rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 0x00FFFFFF, 0x10000000,
                                rng.randrange(1 << 32)])
            buf[i:i + 4] = struct.pack("<I" if rng.random() < 0.5 else ">I", value)
    elif kind == "random_tail":
        keep = min(len(buf), rng.choice([24, 28, 64, 128, 512]))
        buf = buf[:keep] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096)))
    elif kind == "zero_run":
        if buf:
            i = rng.randrange(len(buf))
            n = rng.randint(1, 256)
            buf[i:i + n] = bytes(min(n, len(buf) - i))
    return kind, bytes(buf)


def run_case(index: int, name: str, data: bytes, rng: random.Random, workdir: Path,
             case_timeout: float) -> Case:
    records = packet_records(data) if rng.random() < MID_FILE_SHARE else None
    damaged = None
    if records:
        kind, mutated, damaged = mutate_mid_file(data, records, rng)
    else:
        kind, mutated = mutate(data, rng)
    compress = rng.random() < 0.1
    path = workdir / ("case.pcap.gz" if compress else "case.pcap")
    path.write_bytes(gzip.compress(mutated, compresslevel=1) if compress else mutated)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(_Timeout()))
    signal.setitimer(signal.ITIMER_REAL, case_timeout)
    try:
        scan = FileScan(path, path.name)
        flows = sum(t.num_rows for t in scan.flows())
    except _Timeout:
        return Case(index, name, kind, False, f"hang: over {case_timeout} s")
    except Exception as exc:  # noqa: BLE001 - the point is to catch everything
        return Case(index, name, kind, False, f"raised {type(exc).__name__}: {exc}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    stats, errors = scan.stats, scan.errors
    if stats["packets_read"] != stats["packets_in_flows"] + stats["packets_skipped"]:
        return Case(index, name, kind, False, f"accounting broken: {stats}")
    if flows > stats["packets_in_flows"]:
        return Case(index, name, kind, False, "more flows than packets")
    reader = CaptureReader(path)
    offsets = [batch[:, OFFSET].copy() for batch in reader.batches()]
    if not reader.info.complete and not [e for e in reader.info.errors if e.fatal]:
        return Case(index, name, kind, False, "stopped early without a reported error")
    if damaged is not None:
        return _judge_resync(index, name, kind, records, damaged, offsets, len(mutated))
    if kind == "truncate" and not compress:
        expected = whole_pcap_records(mutated)
        if expected is not None and len(mutated) >= 24 and stats["packets_read"] != expected:
            return Case(index, name, kind, False,
                        f"truncated pcap: read {stats['packets_read']}, whole records {expected}")
    return Case(index, name, kind, True)


def _judge_resync(index: int, name: str, kind: str, records: list[tuple[int, int, int]],
                  damaged: tuple[int, int], offsets: list, size: int) -> Case:
    """A mid-file case against the records found before the damage (see module docstring)."""
    first, end = damaged
    read = np.concatenate(offsets) if offsets else np.zeros(0, dtype=np.int64)
    expected_after = sum(1 for start, _stop, _at in records if start >= end)
    recovered_after = int(np.count_nonzero(read >= end))
    before = sum(1 for _start, stop, _at in records if stop <= first)
    read_before = int(np.count_nonzero(read < first))
    detail = f"damage [{first}, {end}) of {size}: after it {recovered_after} of {expected_after}"
    if recovered_after > expected_after:
        return Case(index, name, kind, False, "packets invented: " + detail, expected_after, recovered_after)
    if read_before < before:
        return Case(index, name, kind, False, f"lost {before - read_before} packets before the damage; "
                    + detail, expected_after, recovered_after)
    return Case(index, name, kind, True, detail, expected_after, recovered_after)


def resync_summary(results: list[Case]) -> dict[str, dict[str, int]]:
    """Per mid-file mutation: cases, packets after the damage expected (a correct resync)
    and recovered, and the cases that recovered fewer."""
    summary: dict[str, dict[str, int]] = {}
    for r in results:
        if r.expected_after is None:
            continue
        entry = summary.setdefault(r.mutation, {"cases": 0, "expected": 0, "recovered": 0, "short_cases": 0})
        entry["cases"] += 1
        entry["expected"] += r.expected_after
        entry["recovered"] += r.recovered_after
        entry["short_cases"] += r.recovered_after < r.expected_after
    return summary


def run(cases: int, seed: int, shared_data: Path, case_timeout: float = 10.0) -> list[Case]:
    """Run ``cases`` fuzz cases; returns every case (``ok`` False for failures)."""
    rng = random.Random(seed)
    seeds = load_seeds(shared_data)
    if not seeds:
        raise FileNotFoundError(f"no captures under {shared_data}")
    results = []
    with tempfile.TemporaryDirectory(prefix="fuzz_capture_") as tmp:
        warm = Path(tmp) / "warmup.pcap"  # JIT compile / cache load is not a hang
        warm.write_bytes(seeds[0][1])
        for _ in FileScan(warm, warm.name).flows():
            pass
        for i in range(cases):
            name, data = seeds[rng.randrange(len(seeds))]
            results.append(run_case(i, name, data, rng, Path(tmp), case_timeout))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--case-timeout", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pipeline").setLevel(logging.CRITICAL)  # every case logs its errors
    start = time.perf_counter()
    results = run(args.cases, args.seed, args.shared_data, args.case_timeout)
    failures = [r for r in results if not r.ok]
    by_kind: dict[str, int] = {}
    for r in results:
        by_kind[r.mutation] = by_kind.get(r.mutation, 0) + 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(results)} cases in {time.perf_counter() - start:.0f} s, "
          f"{len(failures)} failures, peak RSS {peak:.0f} MiB; mutations: {by_kind}")
    for kind, entry in sorted(resync_summary(results).items()):
        print(f"{kind}: {entry['cases']} cases, packets after the damage: recovered {entry['recovered']:,} "
              f"of {entry['expected']:,} a correct resync recovers; {entry['short_cases']} cases short")
    for r in [r for r in results if r.ok and r.expected_after is not None
              and r.recovered_after < r.expected_after][:10]:
        print(f"SHORT case {r.index} {r.source} {r.mutation}: {r.detail}")
    for f in failures[:50]:
        print(f"FAIL case {f.index} {f.source} {f.mutation}: {f.detail}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
