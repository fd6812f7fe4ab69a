"""Byte-range splitting benchmark: one large capture through the extract stage on Spark,
split into byte ranges vs read by one task, ratio measured in the same run.

Builds one classic pcap of ``--gigabytes`` by concatenating replicas of a real night
(``archive/2026-01-03``, whole records): replica ``k`` is shifted by ``k`` hours and has
the second octet of every IPv4 address moved by ``k`` (mod 256), so the file stays in time
order and its replicas' flows are new flows. Then, in one Spark session (``local[2]`` by
default: 2 cores), ``extract_night`` runs on a night holding only that file, first with
``split_bytes = 0`` (one task), then with ``--split-bytes`` (parallel byte ranges),
alternated ``--repeat`` times (medians reported, so other jobs' load hits both alike);
each is timed from the call to the written tables (Spark session start-up and warm-up
nights, split and not, that load the numba code of workers and driver, excluded). The two nights' ``flows``,
``ingest_stats`` and ``ingest_errors`` must be equal. The capture is deleted afterwards
(``--keep`` keeps it). Writes the ``## Byte-range splitting`` section of
docs/benchmarks.md.

    python bench/bench_split.py [--gigabytes 5] [--split-bytes 268435456] [--master local[2]] [--repeat 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.benchlib import REPO_ROOT, replace_section, stamp  # noqa: E402

log = logging.getLogger("bench_split")
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "archive" / "2026-01-03" / "lan-20260103.pcap"
DAY = "2026-02-01"


def _layout(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of every record header of a little-endian µs pcap, and of the second octet
    of the IPv4 source and destination of its Ethernet (optionally 802.1Q) frames."""
    assert data[:4] == b"\xd4\xc3\xb2\xa1", "bench source must be a little-endian µs pcap"
    records, octets, pos = [], [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        if pos + 16 + caplen > len(data):
            break
        records.append(pos)
        frame = pos + 16
        ethertype, ip = data[frame + 12:frame + 14], frame + 14
        if ethertype == b"\x81\x00":
            ethertype, ip = data[frame + 16:frame + 18], frame + 18
        if ethertype == b"\x08\x00" and ip + 20 <= frame + caplen:
            octets += [ip + 13, ip + 17]
        pos += 16 + caplen
    return np.asarray(records, np.int64), np.asarray(octets, np.int64)


def build_capture(source: Path, target: Path, target_bytes: int) -> tuple[int, int]:
    """Write replicas of ``source`` until ``target`` holds ``target_bytes``; returns
    ``(bytes, packets)``."""
    data = source.read_bytes()
    records, octets = _layout(data)
    body = np.frombuffer(data, dtype=np.uint8)[24:records[-1] + 16 + struct.unpack_from(
        "<I", data, int(records[-1]) + 8)[0]].copy()
    records, octets = records - 24, octets - 24
    seconds = body[records[:, None] + np.arange(4)].astype(np.uint32)
    sec = seconds[:, 0] | (seconds[:, 1] << 8) | (seconds[:, 2] << 16) | (seconds[:, 3] << 24)
    written, packets, k = 24, 0, 0
    with open(target, "wb", buffering=1 << 22) as out:
        out.write(data[:24])
        while written < target_bytes:
            replica = body.copy()
            shifted = sec + np.uint32(3600 * k)
            for b in range(4):
                replica[records + b] = ((shifted >> np.uint32(8 * b)) & np.uint32(0xFF)).astype(np.uint8)
            replica[octets] = ((body[octets].astype(np.int64) + k) % 256).astype(np.uint8)
            out.write(replica.tobytes())
            written += len(replica)
            packets += len(records)
            k += 1
    return written, packets


def _tables_equal(a: Path, b: Path) -> bool:
    from pipeline.store.warehouse import read_arrow_partition

    for table, key in (("flows", "flow_id"), ("ingest_stats", "capture_file"),
                       ("ingest_errors", "capture_file")):
        x = read_arrow_partition(a, table, date=DAY).sort_by(key)
        y = read_arrow_partition(b, table, date=DAY).sort_by(key)
        if not x.equals(y):
            log.error("%s differs between the runs", table)
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=5.0, help="capture size (GB, 1e9 bytes)")
    parser.add_argument("--split-bytes", type=int, default=256 << 20)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=3, help="alternated runs of each; medians")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--workdir", type=Path, default=None, help="where the capture is built")
    parser.add_argument("--keep", action="store_true", help="keep the capture and warehouses")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("py4j", "pipeline.ingest.capture.reader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from pipeline.ingest.extract import TASKS_PER_CORE, extract_night
    from pipeline.ingest.flows import FlowConfig
    from pipeline.ingest.split import plan_ranges
    from pipeline.spark import get_spark

    root = Path(tempfile.mkdtemp(prefix="bench_split_", dir=args.workdir))
    try:
        capture = root / "archive" / DAY / "big.pcap"
        capture.parent.mkdir(parents=True)
        start = time.perf_counter()
        size, packets = build_capture(args.source, capture, int(args.gigabytes * 1e9))
        os.sync()  # the capture's writeback would otherwise overlap the first timed runs
        log.info("built %s: %.2f GB, %d packets in %.0f s", capture, size / 1e9, packets,
                 time.perf_counter() - start)
        warm = root / "warm"
        (warm / DAY).mkdir(parents=True)
        shutil.copy(args.source, warm / DAY / "a.pcap")
        shutil.copy(args.source, warm / DAY / "b.pcap")
        spark = get_spark(root / "spark", overrides={"spark.master": args.master})
        for split_bytes in (0, 4 << 20):  # load both paths' compiled code in workers and driver
            extract_night(spark, warm, DAY, root / f"wh-warm-{split_bytes}", FlowConfig(split_bytes=split_bytes))
        runs, summaries = {"one task": [], "byte ranges": []}, {}
        for trial in range(args.repeat):  # alternated, so load from other jobs hits both alike
            for label, split_bytes in (("one task", 0), ("byte ranges", args.split_bytes)):
                warehouse = root / f"wh-{split_bytes}"
                shutil.rmtree(warehouse, ignore_errors=True)
                start = time.perf_counter()
                summaries[label] = extract_night(spark, root / "archive", DAY, warehouse,
                                                 FlowConfig(split_bytes=split_bytes))
                runs[label].append(time.perf_counter() - start)
                log.info("%s, run %d: %.1f s, %s", label, trial + 1, runs[label][-1], summaries[label])
        parallelism = spark.sparkContext.defaultParallelism
        ranges = len(plan_ranges(capture, capture.name, FlowConfig(split_bytes=args.split_bytes),
                                 parallelism))
        spark_tasks = min(ranges, TASKS_PER_CORE * parallelism)
        spark.stop()
        timings = {label: statistics.median(values) for label, values in runs.items()}
        equal = _tables_equal(root / "wh-0", root / f"wh-{args.split_bytes}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    ratio = timings["one task"] / timings["byte ranges"]
    flows = summaries["one task"]["flows"]
    lines = ["| read as | ranges | Spark tasks | seconds (median) | runs | MB/s |",
             "|---|---:|---:|---:|---|---:|"]
    for label, pieces, tasks in (("one task", 1, 1), ("byte ranges", ranges, spark_tasks)):
        lines.append(f"| {label} | {pieces} | {tasks} | {timings[label]:.1f} | "
                     f"{', '.join(f'{t:.1f}' for t in runs[label])} | {size / 1e6 / timings[label]:,.0f} |")
    body = "\n".join([
        stamp(),
        "",
        f"One classic pcap of {size / 1e9:.2f} GB ({packets:,} packets, {flows:,} flows): "
        f"`{args.source.name}` replicated (k-hour shift, second IPv4 octet + k, whole records). "
        f"`extract_night` on Spark `{args.master}`, split off (`split_bytes = 0`) then on "
        f"(`split_bytes = {args.split_bytes}`: {ranges} equal ranges, dealt to {spark_tasks} Spark "
        f"tasks), alternated {args.repeat} times "
        "in one session after warm-up nights; wall time from the call to the written tables "
        "(medians).",
        "",
        *lines,
        "",
        f"Speed-up with byte ranges: **{ratio:.2f}x**; tables equal row for row: "
        f"**{'yes' if equal else 'NO'}**.",
        "",
        f"Command: `python bench/bench_split.py --gigabytes {args.gigabytes:g} --repeat {args.repeat}` "
        "(the issue's target: `--gigabytes 5`, >= 1.8x on 2 cores).",
    ])
    print(body)
    if not args.no_write:
        replace_section("Byte-range splitting", body)
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
