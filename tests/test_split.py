"""Byte-range splitting: one capture read as many ranges gives exactly what one task reads.

Every test compares a split read with the whole-file read of the same bytes: the partial
flows (every aggregate, bit for bit), the file's ``ingest_stats`` row and its
``ingest_errors`` rows (offsets, lengths, packets after). Ranges are cut at every kind of
place: exactly on a record start, inside a record header or payload, inside the file
header, inside pcapng blocks, every few KB; captures are the embedded sample night's
real traffic (as classic pcap and re-framed as pcapng), damaged near the cuts, and
hand-made flows that cross cuts in the ways the flow rules care about.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import replace
from pathlib import Path

import capture_builder as cb
import pyarrow as pa
import pytest

from pipeline.ingest.extract import (
    extract_night, extract_night_local, file_part_stem, process_file, read_file_split,
)
from pipeline.ingest.flows import FlowConfig
from pipeline.ingest.split import (
    GZIP_WARN_RANGES, RangePart, RangeSeam, join_ranges, plan_ranges,
)
from pipeline.store.warehouse import read_arrow_partition

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "sample" / "archive" / "2026-01-02" / "lan-20260102-000000.pcap"
CONFIG = FlowConfig(chunk_bytes=1 << 16)
ORDER = ["bidirectional_first_us", "s0", "s1", "d0", "d1", "sport", "dport", "proto", "vlan",
         "bidirectional_packets"]


def pcap_records(data: bytes) -> list[tuple[int, float, bytes]]:
    """``(offset, timestamp_s, frame)`` of each record of a little-endian µs pcap."""
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, usec, caplen, _orig = struct.unpack_from("<IIII", data, pos)
        out.append((pos, sec + usec / 1e6, data[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    return out


def parts_at(path: Path, cuts: list[int]) -> list[RangePart]:
    """Ranges of ``path`` ending at each of ``cuts`` (file offsets, increasing)."""
    bounds = [0] + list(cuts)
    return [RangePart(path.name, str(path), k, len(bounds), bounds[k],
                      bounds[k + 1] if k + 1 < len(bounds) else None) for k in range(len(bounds))]


def one_task(path: Path, config: FlowConfig = CONFIG):
    flows, stats, errors = process_file(path, path.name, config)
    stats.pop("flows")
    return flows.sort_by([(c, "ascending") for c in ORDER]), stats, errors


def split_read(path: Path, config: FlowConfig = CONFIG, parts: list[RangePart] | None = None):
    result = read_file_split(path, path.name, config, parts)
    assert result is not None, "the file was read whole"
    settled, seams = result
    joined, stats, errors, _first = join_ranges(seams, config)
    stats.pop("flows")
    flows = pa.concat_tables([settled, joined]).sort_by([(c, "ascending") for c in ORDER])
    return flows, stats, errors, seams


def assert_reads_like_one_task(path: Path, config: FlowConfig = CONFIG,
                               parts: list[RangePart] | None = None) -> list[RangeSeam]:
    flows, stats, errors = one_task(path, config)
    split_flows, split_stats, split_errors, seams = split_read(path, config, parts)
    assert split_stats == stats
    assert split_errors == errors
    assert split_flows.num_rows == flows.num_rows
    assert split_flows.equals(flows)
    return seams


def reread(seams: list[RangeSeam]) -> int:
    """Ranges read more than once."""
    return sum(1 for s in seams if s.part.attempt > 0)


# ------------------------------------------------------------------ real traffic, cut anywhere
def test_cuts_on_a_record_start_inside_a_header_inside_a_payload_and_in_the_file_header():
    data = SAMPLE.read_bytes()
    records = pcap_records(data)
    assert len(records) > 1000
    starts = [offset for offset, _ts, _frame in records]
    cuts = [10,                                  # inside the 24-byte file header
            starts[50],                          # exactly on a record start
            starts[100] + 1, starts[150] + 8,    # inside record headers
            starts[200] + 16 + 20,               # inside a payload
            starts[300] + 15, starts[301],       # header's last byte, then the next record
            starts[400] + 16 + len(records[400][2]) // 2]
    seams = assert_reads_like_one_task(SAMPLE, parts=parts_at(SAMPLE, cuts))
    # range 1 starts inside the header: its first record is the file's first, checked as such
    assert [s.part.attempt for s in seams[:2]] == [0, 1]
    assert reread(seams) == 1


@pytest.mark.parametrize("split_bytes", [2_000, 7_777, 100_000])
def test_tiny_ranges_of_a_real_capture_read_like_one_task(split_bytes):
    config = replace(CONFIG, split_bytes=split_bytes)
    seams = assert_reads_like_one_task(SAMPLE, config)
    assert len(seams) == -(-SAMPLE.stat().st_size // split_bytes)  # equal ranges, at most split_bytes
    assert reread(seams) == 0
    # flows open across cuts were rebuilt from their packets on the driver
    assert sum(len(s.packets) for s in seams) > 0


def test_ranges_smaller_than_a_record_own_nothing_and_hand_on_the_record_they_are_in():
    data = SAMPLE.read_bytes()
    offset, _ts, frame = next(r for r in pcap_records(data) if len(r[2]) > 1000)
    cuts = list(range(offset + 100, offset + 16 + len(frame), 50))
    seams = assert_reads_like_one_task(SAMPLE, parts=parts_at(SAMPLE, cuts))
    inside = seams[1:len(cuts)]
    assert all(s.stats["packets_read"] == 0 for s in inside)


def as_pcapng(path: Path, data: bytes, sections: int = 1) -> Path:
    """The sample's records re-framed as pcapng; with ``sections`` 2 the second half is a
    new big-endian section with a nanosecond interface."""
    records = pcap_records(data)
    half = len(records) // 2
    blob = cb.pcapng_shb() + cb.pcapng_idb(1, 6)
    blob += b"".join(cb.pcapng_epb(0, ts, frame) for _o, ts, frame in records[:half])
    if sections == 2:
        blob += cb.pcapng_shb(big_endian=True) + cb.pcapng_idb(1, 9, big_endian=True)
    blob += b"".join(cb.pcapng_epb(0, ts, frame, 9 if sections == 2 else 6, big_endian=sections == 2)
                     for _o, ts, frame in records[half:])
    return cb.write(path, blob)


def block_starts(data: bytes) -> list[int]:
    starts, pos, order = [], 0, "<"
    while pos + 12 <= len(data):
        if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        starts.append(pos)
        pos += struct.unpack_from(order + "I", data, pos + 4)[0]
    return starts


def test_pcapng_cut_inside_the_section_header_an_interface_block_and_packet_blocks(tmp_path):
    path = as_pcapng(tmp_path / "a.pcapng", SAMPLE.read_bytes())
    starts = block_starts(path.read_bytes())
    shb, idb, epb = starts[0], starts[1], starts[2]
    cuts = [shb + 5, idb + 4, epb + 30, starts[100], starts[200] + 9, starts[300] + 40]
    seams = assert_reads_like_one_task(path, parts=parts_at(path, cuts))
    assert seams[0].stats["file_format"] == "pcapng"
    assert_reads_like_one_task(path, replace(CONFIG, split_bytes=3_000))


def test_a_second_pcapng_section_changes_the_state_later_ranges_are_read_with(tmp_path):
    path = as_pcapng(tmp_path / "a.pcapng", SAMPLE.read_bytes(), sections=2)
    seams = assert_reads_like_one_task(path, replace(CONFIG, split_bytes=50_000))
    # the ranges after the second SHB resynchronised with the head's section, were re-read
    assert reread(seams) > 0
    assert all(s.part.entry is None or s.part.entry.section is not None for s in seams)


def test_an_interface_described_after_packets_and_undated_packets_at_a_cut(tmp_path):
    T = cb.BASE_TS
    udp = lambda i, port: cb.ether(cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(port, 53, bytes(40 + i % 7))))  # noqa: E731
    blob = cb.pcapng_shb() + cb.pcapng_idb(1, 6)
    blob += b"".join(cb.pcapng_epb(0, T + i, udp(i, 4000)) for i in range(60))
    blob += cb.pcapng_idb(1, 3)  # a second interface, described after packets
    blob += b"".join(cb.pcapng_epb(i % 2, T + 60 + i, udp(i, 4001)) for i in range(60))
    blob += b"".join(cb.pcapng_spb(udp(i, 4002)) for i in range(30))  # undated: the last time
    blob += b"".join(cb.pcapng_epb(1, T + 150 + i, udp(i, 4003)) for i in range(30))
    path = cb.write(tmp_path / "late.pcapng", blob)
    seams = assert_reads_like_one_task(path, replace(CONFIG, split_bytes=1_000))
    assert reread(seams) > 0


# ------------------------------------------------------------------ damage near cuts
def damaged(tmp_path: Path, edit) -> tuple[Path, list[int]]:
    data = bytearray(SAMPLE.read_bytes())
    starts = [offset for offset, _ts, _frame in pcap_records(bytes(data))]
    cuts = edit(data, starts)
    return cb.write(tmp_path / "damaged.pcap", bytes(data)), cuts


@pytest.mark.parametrize("kind", ["zeroed_header_on_the_cut", "inflated_length_before_the_cut",
                                  "garbage_across_the_cut", "cut_short_after_the_last_cut"])
def test_damage_near_a_range_boundary_is_reported_once_at_its_file_offset(tmp_path, kind):
    def edit(data, starts):
        s = starts[500]
        if kind == "zeroed_header_on_the_cut":
            data[s:s + 16] = bytes(16)
            return [starts[100], s, starts[900]]
        if kind == "inflated_length_before_the_cut":
            data[starts[499] + 8:starts[499] + 12] = struct.pack("<I", 0x7FFFFFF0)
            return [starts[100], s - 3, starts[900]]
        if kind == "garbage_across_the_cut":
            data[s - 700:s + 900] = bytes((i * 37) % 251 for i in range(1600))
            return [starts[100], s, s + 300, starts[900]]
        del data[len(data) - 25:]
        return [starts[100], len(data) - 2_000]

    path, cuts = damaged(tmp_path, edit)
    flows, stats, errors = one_task(path)
    assert errors and stats["status"] == "partial"
    assert_reads_like_one_task(path, parts=parts_at(path, cuts))
    assert_reads_like_one_task(path, replace(CONFIG, split_bytes=4_000))


# ------------------------------------------------------------------ flows across cuts
def udp_packet(port: int, size: int = 60) -> bytes:
    return cb.ether(cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(port, 123, bytes(size))))


def test_long_flows_active_timeout_and_a_syn_after_fin_across_cuts_match_one_task(tmp_path):
    T = cb.BASE_TS
    packets = [(T + 60.0 * i, udp_packet(5000)) for i in range(200)]          # 1/min, 3 h: active cuts
    packets += [(T + 7.0 * i + 0.5, udp_packet(5001, i % 90)) for i in range(1500)]  # steady 3 h
    for k in range(40):  # the same 5-tuple reused: SYN after FIN, every 4.5 min
        packets += [(ts, cb.ether(ip)) for ts, ip in cb.tcp_conversation(
            "10.0.0.9", "10.0.0.1", 50000, 443, T + 270.0 * k, data_packets=30, gap=2.0)]
    packets.sort(key=lambda p: p[0])
    path = cb.write(tmp_path / "long.pcap", cb.pcap_bytes(packets))
    flows, _stats, _errors = one_task(path)
    assert {1, 4} <= set(flows.column("reason").to_pylist())  # active and end-of-capture cuts
    for split_bytes in (1_500, 9_000, 40_000):
        seams = assert_reads_like_one_task(path, replace(CONFIG, split_bytes=split_bytes))
        assert reread(seams) == 0


def test_fragments_whose_first_fragment_is_in_an_earlier_range_are_read_with_its_ports(tmp_path):
    T = cb.BASE_TS
    packets = []
    for i in range(40):
        payload = cb.udp(6000 + i, 53, bytes(64))
        first = cb.ipv4("10.0.0.3", "10.0.0.4", 17, payload[:32], ident=i + 1, more_fragments=True)
        rest = cb.ipv4("10.0.0.3", "10.0.0.4", 17, payload[32:], ident=i + 1, fragment_offset=4)
        packets += [(T + 10.0 * i, cb.ether(first)), (T + 10.0 * i + 5.0, cb.ether(rest))]
    path = cb.write(tmp_path / "frag.pcap", cb.pcap_bytes(packets))
    starts = [offset for offset, _ts, _frame in pcap_records(path.read_bytes())]
    cuts = [starts[k] for k in range(1, len(starts), 2)]  # between each first and later fragment
    seams = assert_reads_like_one_task(path, parts=parts_at(path, cuts))
    assert reread(seams) > 0
    flows, _stats, _errors = one_task(path)
    assert flows.num_rows == 40  # every later fragment joined its first fragment's flow


def test_timestamps_going_back_across_a_cut_are_read_with_the_clock_before_it(tmp_path):
    T = cb.BASE_TS
    packets = [(T + i, udp_packet(7000 + i % 5)) for i in range(400)]
    packets += [(T + 100 + i, udp_packet(7000 + i % 5)) for i in range(400)]  # back by 300 s
    path = cb.write(tmp_path / "back.pcap", cb.pcap_bytes(packets))
    starts = [offset for offset, _ts, _frame in pcap_records(path.read_bytes())]
    seams = assert_reads_like_one_task(path, parts=parts_at(path, [starts[200], starts[400], starts[402]]))
    assert reread(seams) == 2
    # small steps back (reordering within the slack) need no second read
    jitter = [(T + i - (0.5 if i % 3 == 0 else 0.0), udp_packet(7100 + i % 7)) for i in range(600)]
    path = cb.write(tmp_path / "jitter.pcap", cb.pcap_bytes(jitter))
    seams = assert_reads_like_one_task(path, replace(CONFIG, split_bytes=2_000))
    assert reread(seams) == 0


# ------------------------------------------------------------------ planning
def test_plan_cuts_uncompressed_captures_larger_than_split_bytes_and_never_gzip(tmp_path, caplog):
    config = replace(CONFIG, split_bytes=400_000)
    size = SAMPLE.stat().st_size  # 1,481,086 bytes: 4 ranges of at most 400,000
    parts = plan_ranges(SAMPLE, "s.pcap", config)
    assert [(p.start, p.stop) for p in parts] == [(0, 370_271), (370_271, 740_543),
                                                  (740_543, 1_110_814), (1_110_814, None)]
    assert size == 1_481_086
    # a multiple of the tasks that run at once: 6 equal ranges on 3 cores
    assert [p.stop for p in plan_ranges(SAMPLE, "s.pcap", config, parallelism=3)][:-1] == [
        size * k // 6 for k in range(1, 6)]
    assert plan_ranges(SAMPLE, "s.pcap", replace(config, split_bytes=0)) is None
    assert plan_ranges(SAMPLE, "s.pcap", replace(config, split_bytes=size)) is None
    text = cb.write(tmp_path / "notes.pcap", b"not a capture at all\n" * 50_000)
    assert plan_ranges(text, "notes.pcap", config) is None
    # gzip: one task whatever its size; warned when larger than GZIP_WARN_RANGES ranges
    small = cb.write(tmp_path / "a.pcap.gz", SAMPLE.read_bytes(), compress=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.split"):
        assert plan_ranges(small, "a.pcap.gz", replace(config, split_bytes=small.stat().st_size - 1)) is None
        assert not caplog.records
        limit = small.stat().st_size // (GZIP_WARN_RANGES + 1)
        assert plan_ranges(small, "a.pcap.gz", replace(config, split_bytes=limit)) is None
    assert "gzip" in caplog.text and "one task" in caplog.text


def test_the_night_read_in_ranges_locally_gives_the_same_tables(tmp_path):
    archive = tmp_path / "archive"
    day = "2026-01-02"
    cb.write(archive / day / "a.pcap", SAMPLE.read_bytes())
    data = bytearray(SAMPLE.read_bytes())
    start = pcap_records(bytes(data))[2000][0]
    data[start:start + 16] = bytes(16)
    cb.write(archive / day / "b.pcap", bytes(data[:-11]))
    cb.write(archive / day / "c.pcap.gz", SAMPLE.read_bytes(), compress=True)
    for label, split_bytes in (("whole", 0), ("split", 30_000)):
        extract_night_local(archive, day, tmp_path / label, replace(CONFIG, split_bytes=split_bytes))
    assert_same_tables(tmp_path / "whole", tmp_path / "split", day)


def assert_same_tables(a: Path, b: Path, day: str) -> None:
    for table, key in (("flows", "flow_id"), ("ingest_stats", "capture_file"),
                       ("ingest_errors", "byte_offset")):
        x = read_arrow_partition(a, table, date=day).sort_by([("capture_file", "ascending"), (key, "ascending")])
        y = read_arrow_partition(b, table, date=day).sort_by([("capture_file", "ascending"), (key, "ascending")])
        assert x.num_rows == y.num_rows and x.num_rows > 0, table
        if table == "ingest_errors":  # the quarantined copy lies under each run's warehouse
            assert [q.replace(str(a), "") for q in x.column("quarantine_path").to_pylist()] == \
                [q.replace(str(b), "") for q in y.column("quarantine_path").to_pylist()]
            x, y = x.drop(["quarantine_path"]), y.drop(["quarantine_path"])
        assert x.equals(y), table


@pytest.mark.slow
def test_spark_reads_a_night_in_byte_ranges_into_the_tables_of_one_task_per_file(spark, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.ingest.split")
    archive = tmp_path / "archive"
    day = "2026-01-02"
    for f in (SAMPLE.parent).iterdir():
        cb.write(archive / day / f.name, f.read_bytes())
    data = bytearray(SAMPLE.read_bytes())
    split_bytes = 400_000
    parts = plan_ranges(SAMPLE, "x", replace(CONFIG, split_bytes=split_bytes),
                        spark.sparkContext.defaultParallelism)
    first = next(o for o, _ts, _frame in pcap_records(bytes(data)) if o >= parts[1].start)
    data[first:first + 16] = bytes(16)  # the first record of range 1: it is read a second time
    cb.write(archive / day / "damaged.pcap", bytes(data))
    summaries = {}
    for label, size in (("whole", 0), ("split", split_bytes)):
        summaries[label] = extract_night(spark, archive, day, tmp_path / label,
                                         replace(CONFIG, split_bytes=size))
    assert summaries["whole"] == summaries["split"]
    assert_same_tables(tmp_path / "whole", tmp_path / "split", day)
    stats = read_arrow_partition(tmp_path / "split", "ingest_stats", date=day)
    assert stats.num_rows == 3  # one row per capture file, however many ranges
    # the range starting on the damage was read again; its first read's files are gone
    assert f"{day}/damaged.pcap: byte range 1 [{parts[1].start}, {parts[1].stop}) read again" in caplog.text
    stem = file_part_stem(f"{day}/damaged.pcap")
    names = [p.name for p in (tmp_path / "split" / "flows" / f"date={day}").glob(f"{stem}-*.parquet")]
    assert names and not any(n.startswith(f"{stem}-r00001-0-") for n in names)
