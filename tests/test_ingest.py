"""Night extraction: archive layout, accounting on every shared capture, truth counts,
bad input through Spark (reported, quarantined, night not failed) and rerun safety."""
from __future__ import annotations

import csv
import hashlib
import struct
from pathlib import Path

import capture_builder as cb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.ingest.extract import extract_night, extract_night_local, list_capture_files, process_file
from pipeline.store import schema
from pipeline.store.warehouse import read_arrow_partition

DAY = "2026-01-01"


def count_records_independently(path: Path) -> int:
    """Whole records in a (non-gzip) pcap or pcapng, walked with ``struct`` only."""
    data = path.read_bytes()
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        count, pos, order = 0, 0, "<"
        while pos + 12 <= len(data):
            if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
                order = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            btype, blen = struct.unpack(order + "II", data[pos:pos + 8])
            if blen < 12 or pos + blen > len(data):
                break
            count += btype in (2, 3, 6)
            pos += blen
        return count
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    count, pos = 0, 24
    while pos + 16 <= len(data):
        caplen = struct.unpack(order + "I", data[pos + 8:pos + 12])[0]
        if pos + 16 + caplen > len(data):
            break
        count += 1
        pos += 16 + caplen
    return count


def truth_rows(shared_data: Path) -> list[dict]:
    with open(shared_data / "truth.tsv", newline="") as fh:
        return [r for r in csv.DictReader(fh, delimiter="\t") if r["record"] == "night_file"]


def canonical_5tuples(flows: pa.Table) -> set:
    cols = [flows.column(c).to_pylist() for c in schema.FLOW_KEY_COLUMNS]
    return {tuple(sorted([(s, sp), (d, dp)])) + (p,) for s, d, sp, dp, p in zip(*cols)}


def test_list_capture_files_finds_nested_and_compressed_captures_sorted(tmp_path):
    night = tmp_path / DAY
    for name in ["b.pcap", "a/z.pcapng", "a/c.cap.gz", "d.pcap.gz", "notes.txt", "x.pcap.bak"]:
        cb.write(night / name, b"")
    cb.write(tmp_path / "2026-01-02" / "other.pcap", b"")
    found = [p.relative_to(night).as_posix() for p in list_capture_files(tmp_path, DAY)]
    assert found == ["a/c.cap.gz", "a/z.pcapng", "b.pcap", "d.pcap.gz"]
    assert list_capture_files(tmp_path, "2026-02-01") == []
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        list_capture_files(tmp_path, "01/01/2026")


def test_accounting_identity_and_record_counts_hold_on_every_shared_capture(shared_data):
    files = sorted((shared_data / "captures").iterdir()) + sorted(
        (shared_data / "archive").rglob("*.pcap*"))
    assert len(files) > 200
    formats, links = set(), set()
    for path in files:
        _flows, stats, errors = process_file(path, path.name)
        assert stats["packets_read"] == stats["packets_in_flows"] + stats["packets_skipped"], path
        assert stats["packets_skipped"] == sum(stats[f"skipped_{r}"] for r in schema.SKIP_REASONS)
        assert not [e for e in errors if e["fatal"]], (path, errors)
        if path.suffix != ".gz":
            assert stats["packets_read"] == count_records_independently(path), path
        formats.add(stats["file_format"])
        links.update(stats["link_types"].split(","))
    assert formats == {"pcap", "pcapng"} and len(links) >= 3


def test_packets_and_distinct_5_tuples_match_truth_for_every_archive_file(shared_data):
    rows = truth_rows(shared_data)
    assert len(rows) == 5
    for row in rows:
        path = shared_data / row["item"]
        partial, stats, _errors = process_file(path, row["item"])
        assert stats["packets_read"] == int(row["packets"]), row["item"]
        from pipeline.ingest.flows import finalize

        assert len(canonical_5tuples(finalize(partial))) == int(row["flows_5tuple"]), row["item"]
        assert stats["first_packet_ms"] == int(float(row["first_ts"]) * 1000)


@pytest.mark.slow
def test_spark_extraction_of_the_rotated_night_matches_truth_and_merges_across_files(
        spark, shared_data, tmp_path):
    summary = extract_night(spark, shared_data / "archive", "2026-01-02", tmp_path)
    truth = {r["item"].removeprefix("archive/"): r for r in truth_rows(shared_data)
             if r["night"] == "2026-01-02"}
    stats = read_arrow_partition(tmp_path, "ingest_stats", date="2026-01-02").to_pylist()
    assert sorted(s["capture_file"] for s in stats) == sorted(truth)
    for s in stats:
        assert s["packets_read"] == int(truth[s["capture_file"]]["packets"])
        assert s["packets_read"] == s["packets_in_flows"] + s["packets_skipped"]
        assert s["status"] == "ok"
    flows = read_arrow_partition(tmp_path, "flows", date="2026-01-02")
    assert flows.schema.equals(schema.FLOWS)
    assert summary["flows"] == flows.num_rows
    assert sum(flows.column("bidirectional_packets").to_pylist()) == summary["packets_in_flows"]
    assert len(set(flows.column("flow_id").to_pylist())) == flows.num_rows
    # per-file flows (split at rotation) outnumber the night's merged flows
    per_file = sum(process_file(shared_data / "archive" / name, name)[0].num_rows
                   for name in truth)
    assert flows.num_rows < per_file
    # every distinct 5-tuple of the night is present (README: 3,986)
    per_file_tuples = set()
    for name in truth:
        from pipeline.ingest.flows import finalize

        per_file_tuples |= canonical_5tuples(finalize(process_file(
            shared_data / "archive" / name, name)[0]))
    assert canonical_5tuples(flows) == per_file_tuples and len(per_file_tuples) == 3986
    # the Spark path and the single-process path give identical tables
    extract_night_local(shared_data / "archive", "2026-01-02", tmp_path / "local")
    local = read_arrow_partition(tmp_path / "local", "flows", date="2026-01-02")
    assert local.sort_by("flow_id").equals(flows.sort_by("flow_id"))


def _bad_archive(root: Path) -> dict[str, bytes]:
    good = cb.pcap_bytes(cb.tcp_conversation("10.0.0.9", "10.0.0.1", 50000, 80, cb.BASE_TS + 1),
                         linktype=101)
    files = {
        "good.pcap": good,
        "empty.pcap": b"",
        "text.pcap": b"this is not a capture\n" * 10,
        "cut.pcap": cb.pcap_bytes(cb.tcp_conversation("10.0.0.7", "10.0.0.1", 50002, 80,
                                                      cb.BASE_TS + 1), linktype=101)[:-7],
        "inflated.pcap": good[:24] + good[24:32] + struct.pack("<I", 0x7FFFFFFF) + good[36:],
        "bad.pcap.gz": b"\x1f\x8b\x08\x00" + b"\xff" * 40,
    }
    for name, data in files.items():
        cb.write(root / DAY / name, data)
    return files


@pytest.mark.slow
def test_bad_files_are_reported_and_quarantined_without_failing_the_night_and_rerun_is_safe(
        spark, tmp_path):
    archive, wh = tmp_path / "archive", tmp_path / "wh"
    files = _bad_archive(archive)
    other = "2026-01-05"
    cb.write(archive / other / "b.pcap", cb.pcap_bytes(cb.tcp_conversation(
        "10.0.0.8", "10.0.0.1", 50001, 80, cb.BASE_TS + 4 * 86400), linktype=101))
    extract_night(spark, archive, other, wh)
    digest_before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in archive.rglob("*")
                     if p.is_file()}
    summary = extract_night(spark, archive, DAY, wh)
    stats = {s["capture_file"]: s for s in
             read_arrow_partition(wh, "ingest_stats", date=DAY).to_pylist()}
    errors = read_arrow_partition(wh, "ingest_errors", date=DAY).to_pylist()
    status = {Path(k).name: v["status"] for k, v in stats.items()}
    # the inflated first record is skipped and the rest of its file read: partial
    assert status == {"good.pcap": "ok", "empty.pcap": "quarantined", "text.pcap": "quarantined",
                      "cut.pcap": "partial", "inflated.pcap": "partial",
                      "bad.pcap.gz": "quarantined"}
    assert summary["files"] == 6 and summary["files_bad"] == 5
    by_file = {Path(e["capture_file"]).name: e for e in errors}
    assert set(by_file) == {"empty.pcap", "text.pcap", "cut.pcap", "inflated.pcap", "bad.pcap.gz"}
    assert by_file["inflated.pcap"]["byte_offset"] == 24 and not by_file["inflated.pcap"]["fatal"]
    assert by_file["inflated.pcap"]["byte_length"] == 16 + struct.unpack("<I", files["good.pcap"][32:36])[0]
    assert by_file["inflated.pcap"]["packets_after"] == stats[f"{DAY}/inflated.pcap"]["packets_read"] == 9
    assert by_file["cut.pcap"]["byte_offset"] > 24
    for name, err in by_file.items():
        copy = Path(err["quarantine_path"])
        assert copy.is_file() and copy.read_bytes() == files[name]
        assert wh in copy.parents
    # the valid part of the cut file still gives its flow, and so do the records after the
    # inflated one (the good conversation without its SYN); the archive is untouched
    flows = read_arrow_partition(wh, "flows", date=DAY)
    assert sorted(Path(f).name for f in flows.column("capture_file").to_pylist()) == \
        ["cut.pcap", "good.pcap", "inflated.pcap"]
    inflated = flows.filter(pc.equal(flows.column("capture_file"), f"{DAY}/inflated.pcap"))
    assert inflated.column("bidirectional_packets").to_pylist() == [9]
    assert digest_before == {p: hashlib.sha256(p.read_bytes()).hexdigest()
                             for p in archive.rglob("*") if p.is_file()}
    for s in stats.values():
        assert s["packets_read"] == s["packets_in_flows"] + s["packets_skipped"]
    # rerun: same summary and flow ids, exactly this night replaced, the other untouched
    ids = sorted(flows.column("flow_id").to_pylist())
    assert extract_night(spark, archive, DAY, wh) == summary
    assert sorted(read_arrow_partition(wh, "flows", date=DAY).column("flow_id").to_pylist()) == ids
    assert read_arrow_partition(wh, "flows", date=other).num_rows == 1
    assert len(list((wh / "flows").iterdir())) == 2


def test_only_flows_open_at_the_end_or_starting_within_the_idle_timeout_leave_their_task():
    from pipeline.ingest.extract import boundary_mask
    from pipeline.ingest.flows import PARTIAL_SCHEMA, R_EOC, R_FIN, FlowConfig

    first_us, idle_us = 1_000_000_000, 120 * 1_000_000
    starts = [first_us, first_us + idle_us - 1, first_us + idle_us + 1000, first_us + idle_us + 5000]
    reasons = [R_FIN, R_FIN, R_FIN, R_EOC]
    rows = {f.name: [None] * 4 for f in PARTIAL_SCHEMA}
    rows.update(bidirectional_first_us=starts, reason=reasons)
    partial = pa.Table.from_pydict(rows, schema=PARTIAL_SCHEMA)
    assert boundary_mask(partial, first_us, FlowConfig(idle_timeout_s=120)).tolist() == [True, True, False, True]


def _run_file_task(path: Path, staging: Path) -> list[dict]:
    """One file through the Spark task body, without Spark: the metas it returns."""
    import json

    from pipeline.ingest.extract import SIDE_SCHEMA, _file_task
    from pipeline.ingest.flows import FlowConfig

    batch = pa.RecordBatch.from_pydict({"path": [str(path)], "capture_file": [f"{DAY}/{path.name}"]})
    side = pa.Table.from_batches(list(_file_task(FlowConfig(), str(staging))(iter([batch]))), SIDE_SCHEMA)
    return [json.loads(m) for m in side.column("meta").to_pylist() if m is not None]


def _conversations(path: Path, count: int) -> Path:
    """``count`` TCP conversations 300 s apart (the last still open at the file's end)."""
    packets = []
    for i in range(count):
        packets += cb.tcp_conversation(f"10.0.1.{i + 1}", "10.0.0.1", 40000 + i, 80, cb.BASE_TS + 300 * i)
    cb.write(path, cb.pcap_bytes(packets, linktype=101))
    return path


def test_a_failing_scan_keeps_the_flows_written_before_it_and_reports_the_error(tmp_path):
    from pipeline.ingest.extract import FileScan, write_file_flows
    from pipeline.ingest.flows import FlowConfig

    scan = FileScan(_conversations(tmp_path / "a.pcap", 4), f"{DAY}/a.pcap")

    def flows_then_bug():  # the real file's partial flows, then a bug in the reader
        yield from scan.flows()
        raise RuntimeError("decoder bug")

    staging = tmp_path / "staging"
    staging.mkdir()
    written, boundary, error = write_file_flows(
        flows_then_bug(), lambda: scan.first_packet_us, FlowConfig(), staging, "part-a")
    assert isinstance(error, RuntimeError) and str(error) == "decoder bug"
    files = pa.concat_tables([pq_read(p) for p in sorted(staging.glob("part-*.parquet"))])
    # the middle two: the first conversation starts within the idle timeout of the file's
    # first packet and the last is open at the file's end (boundary flows, for the driver)
    assert files.num_rows == written == 2
    assert boundary.num_rows == 2
    assert not list(staging.glob(".*"))  # no temporary file left


def test_a_warehouse_that_cannot_be_written_fails_the_task_not_the_capture(tmp_path):
    capture = _conversations(tmp_path / "a.pcap", 3)
    with pytest.raises(OSError):
        _run_file_task(capture, tmp_path / "no-such-staging-dir")


def pq_read(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(path)


# ------------------------------------------------------------------ damage and odd entries
def _three_conversations() -> tuple[bytes, list[int]]:
    """Three TCP conversations as one pcap: ``(bytes, record offsets)``."""
    packets = []
    for i in range(3):
        packets += cb.tcp_conversation(f"10.0.2.{i + 1}", "10.0.0.1", 41000 + i, 80, cb.BASE_TS + 10 * i)
    data = cb.pcap_bytes(packets, linktype=101)
    offsets, pos = [], 24
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack("<I", data[pos + 8:pos + 12])[0]
    return data, offsets


def test_a_skipped_range_is_one_ingest_errors_row_and_the_packets_after_it_are_counted(tmp_path):
    data, offsets = _three_conversations()
    damaged = bytearray(data)
    damaged[offsets[12]:offsets[12] + 16] = bytes(16)          # a header in the second conversation
    _flows, stats, errors = process_file(cb.write(tmp_path / "a.pcap", bytes(damaged)), "a.pcap")
    assert [{k: v for k, v in e.items() if k != "reason"} for e in errors] == [dict(
        capture_file="a.pcap", byte_offset=offsets[12], byte_length=offsets[13] - offsets[12],
        fatal=False, quarantine_path=None, packets_after=len(offsets) - 13)]
    assert errors[0]["reason"].startswith("corrupt pcap record header (timestamp 0 s")
    assert stats["packets_read"] == len(offsets) - 1 == stats["packets_in_flows"]
    assert (stats["status"], stats["bytes_skipped"], stats["resyncs"]) == \
        ("partial", offsets[13] - offsets[12], 1)


def test_bytes_skipped_adds_up_the_error_lengths_of_a_file_cut_after_damage(tmp_path):
    data, offsets = _three_conversations()
    damaged = bytearray(data[:-3])
    damaged[offsets[5] + 8:offsets[5] + 12] = struct.pack("<I", 0xFFFFFFFF)
    _flows, stats, errors = process_file(cb.write(tmp_path / "a.pcap", bytes(damaged)), "a.pcap")
    assert [(e["byte_offset"], e["fatal"], e["packets_after"]) for e in errors] == [
        (offsets[5], False, len(offsets) - 7), (offsets[-1], True, 0)]
    assert stats["bytes_skipped"] == sum(e["byte_length"] for e in errors) == \
        (offsets[6] - offsets[5]) + (len(data) - 3 - offsets[-1])
    assert stats["packets_read"] == len(offsets) - 2 and stats["status"] == "partial"


def test_a_directory_named_like_a_capture_is_reported_in_ingest_errors_never_skipped(tmp_path):
    archive, wh = tmp_path / "archive", tmp_path / "wh"
    data, offsets = _three_conversations()
    cb.write(archive / DAY / "good.pcap", data)
    (archive / DAY / "x.pcap").mkdir()
    cb.write(archive / DAY / "x.pcap" / "inner.pcap", data)    # a capture inside it is still read
    names = [p.relative_to(archive / DAY).as_posix() for p in list_capture_files(archive, DAY)]
    assert names == ["good.pcap", "x.pcap", "x.pcap/inner.pcap"]
    summary = extract_night_local(archive, DAY, wh)
    errors = read_arrow_partition(wh, "ingest_errors", date=DAY).to_pylist()
    assert errors == [dict(capture_file=f"{DAY}/x.pcap", byte_offset=0, fatal=True, quarantine_path=None,
                           reason="unreadable file: not a regular file (a directory)",
                           byte_length=None, packets_after=0)]
    stats = {s["capture_file"]: s for s in read_arrow_partition(wh, "ingest_stats", date=DAY).to_pylist()}
    assert (stats[f"{DAY}/x.pcap"]["status"], stats[f"{DAY}/x.pcap"]["file_bytes"]) == ("quarantined", 0)
    assert stats[f"{DAY}/x.pcap/inner.pcap"]["packets_read"] == len(offsets)
    assert summary["files"] == 3 and summary["files_bad"] == 1
    assert not (wh / "quarantine").exists()  # nothing to copy: the error row says why


def test_ingest_tables_written_before_the_damage_columns_read_them_as_null():
    before = Path(__file__).resolve().parent / "data" / "warehouse_before_layout"
    stats = read_arrow_partition(before, "ingest_stats", date="2026-01-03")
    assert stats.schema.equals(schema.INGEST_STATS) and stats.num_rows == 1
    assert stats.column("bytes_skipped").to_pylist() == [None] and stats.column("resyncs").to_pylist() == [None]
    errors = read_arrow_partition(before, "ingest_errors", date="2026-01-03")
    assert errors.schema.equals(schema.INGEST_ERRORS)
