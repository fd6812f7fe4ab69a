"""The capture reader: every supported format, link type and header chain, and bad input.

Expected values come from the hand-made files of ``capture_builder`` (what was written),
never from the reader itself.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import capture_builder as cb
import numpy as np
import pytest

from pipeline.ingest.capture import decode as D
from pipeline.ingest.capture.reader import CaptureReader
from pipeline.ingest.extract import process_file


def read_all(path, **kwargs):
    reader = CaptureReader(path, **kwargs)
    batches = [b.copy() for b in reader.batches()]
    packets = np.concatenate(batches) if batches else np.zeros((0, D.NCOL), np.int64)
    return packets, reader.info


def udp4(i=0, src="10.0.0.1", dst="10.0.0.2"):
    return cb.ipv4(src, dst, 17, cb.udp(1000 + i, 53, b"q" * 10))


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_pcap_in_both_byte_orders_and_resolutions_gives_microsecond_times(
        tmp_path, big_endian, nano):
    records = [(cb.BASE_TS + 1.25 + i, cb.ether(udp4(i))) for i in range(3)]
    path = cb.write(tmp_path / "a.pcap", cb.pcap_bytes(records, big_endian=big_endian, nano=nano))
    packets, info = read_all(path)
    assert info.file_format == "pcap" and info.errors == []
    expected_us = [round((cb.BASE_TS + 1.25 + i) * 1e6) for i in range(3)]
    assert packets[:, D.TS].tolist() == expected_us
    assert packets[:, D.SPORT].tolist() == [1000, 1001, 1002]
    assert packets[:, D.IPLEN].tolist() == [20 + 8 + 10] * 3


def test_gzip_compressed_capture_reads_like_the_plain_file(tmp_path):
    records = [(cb.BASE_TS + i, cb.ether(udp4(i))) for i in range(50)]
    data = cb.pcap_bytes(records)
    plain, _ = read_all(cb.write(tmp_path / "a.pcap", data))
    packed, info = read_all(cb.write(tmp_path / "a.pcap.gz", data, compress=True))
    assert info.errors == []
    assert np.array_equal(plain, packed)


def test_small_chunks_give_the_same_packets_as_one_big_chunk(tmp_path):
    records = [(cb.BASE_TS + i, cb.ether(udp4(i))) for i in range(300)]
    path = cb.write(tmp_path / "a.pcap", cb.pcap_bytes(records))
    whole, _ = read_all(path)
    chunked, info = read_all(path, chunk_bytes=4096, batch_rows=7)
    assert info.errors == [] and len(whole) == 300
    assert np.array_equal(whole, chunked)


@pytest.mark.parametrize("big_endian", [False, True])
def test_pcapng_with_two_interfaces_of_different_link_types_and_resolutions(tmp_path, big_endian):
    ip = udp4()
    records = [(0, cb.BASE_TS + 1.5, cb.ether(ip)), (1, cb.BASE_TS + 2.25, ip),
               (0, cb.BASE_TS + 3.0, cb.arp())]
    data = cb.pcapng_bytes([(1, 6), (101, 9)], records, big_endian=big_endian)
    packets, info = read_all(cb.write(tmp_path / "a.pcapng", data))
    assert info.file_format == "pcapng" and info.link_types == {1, 101}
    assert info.errors == []
    assert packets[:, D.TS].tolist() == [round((cb.BASE_TS + t) * 1e6) for t in (1.5, 2.25, 3.0)]
    assert packets[:, D.STATUS].tolist() == [D.OK, D.OK, D.NON_IP]
    assert packets[0, D.S1] == packets[1, D.S1] == int.from_bytes(bytes([10, 0, 0, 1]), "big")


@pytest.mark.parametrize("linktype, frame", [
    (1, cb.ether(udp4())),
    (1, cb.ether(udp4(), vlans=(42,))),
    (1, cb.ether(udp4(), vlans=(42, 7))),
    (101, udp4()),
    (228, udp4()),
    (113, cb.sll(udp4())),
    (276, cb.sll2(udp4())),
])
def test_every_supported_link_type_reaches_the_udp_ports(tmp_path, linktype, frame):
    path = cb.write(tmp_path / "a.pcap", cb.pcap_bytes([(cb.BASE_TS, frame)], linktype=linktype))
    packets, _ = read_all(path)
    assert packets[0, D.STATUS] == D.OK
    assert (packets[0, D.SPORT], packets[0, D.DPORT], packets[0, D.PROTO]) == (1000, 53, 17)


def test_vlan_id_is_the_outer_tag_and_absent_without_tag(tmp_path):
    frames = [cb.ether(udp4(), vlans=(42, 7)), cb.ether(udp4(), vlans=(9,)), cb.ether(udp4())]
    path = cb.write(tmp_path / "a.pcap", cb.pcap_bytes([(cb.BASE_TS, f) for f in frames]))
    packets, _ = read_all(path)
    assert packets[:, D.VLAN].tolist() == [42, 9, -1]


def test_ipv6_extension_headers_are_skipped_to_the_transport_header(tmp_path):
    payload = cb.tcp(40000, 443, cb.TCP_SYN)
    frame = cb.ether(cb.ipv6("2001:db8::1", "2001:db8::2", 0, payload,
                             extensions=cb.ipv6_hop_by_hop(6)), ethertype=0x86DD)
    path = cb.write(tmp_path / "a.pcap", cb.pcap_bytes([(cb.BASE_TS, frame)]))
    packets, _ = read_all(path)
    row = packets[0]
    assert row[D.STATUS] == D.OK and row[D.IPVER] == 6 and row[D.PROTO] == 6
    assert (row[D.SPORT], row[D.DPORT], row[D.FLAGS]) == (40000, 443, cb.TCP_SYN)
    assert row[D.IPLEN] == 40 + 8 + 20


def test_icmpv6_and_other_ip_protocols_are_decoded_without_ports(tmp_path):
    frames = [cb.ipv6("fe80::1", "ff02::1", 58, cb.icmp(135, 0)),
              cb.ipv4("10.0.0.1", "10.0.0.2", 47, b"\x00" * 8)]
    path = cb.write(tmp_path / "a.pcap", cb.pcap_bytes([(cb.BASE_TS, f) for f in frames],
                                                       linktype=101))
    packets, _ = read_all(path)
    assert packets[:, D.STATUS].tolist() == [D.OK, D.OK]
    assert packets[:, D.PROTO].tolist() == [58, 47]
    assert packets[0, D.ICMPTYPE] == 135
    assert packets[:, D.SPORT].tolist() == [0, 0]


def test_skip_reasons_non_ip_truncated_malformed_and_unsupported_link(tmp_path):
    good = udp4()
    frames = [cb.arp(), cb.ether(good[:22]), cb.ether(b"\x45" + good[1:2] + b"\x00\x05" + good[4:])]
    path = cb.write(tmp_path / "a.pcap", cb.pcap_bytes([(cb.BASE_TS, f) for f in frames]))
    packets, _ = read_all(path)
    assert packets[:, D.STATUS].tolist() == [D.NON_IP, D.TRUNCATED, D.MALFORMED_IP]
    odd = cb.write(tmp_path / "b.pcap", cb.pcap_bytes([(cb.BASE_TS, good)], linktype=147))
    packets, info = read_all(odd)
    assert packets[:, D.STATUS].tolist() == [D.UNSUPPORTED_LINK]
    assert [e.fatal for e in info.errors] == [False]


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a capture file"),
    (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap file header"),
])
def test_bad_files_are_reported_at_offset_zero_or_header(tmp_path, content, reason):
    packets, info = read_all(cb.write(tmp_path / "bad.pcap", content))
    assert len(packets) == 0
    assert len(info.errors) == 1 and info.errors[0].fatal
    assert reason in info.errors[0].reason


def test_unreadable_path_is_an_error_not_an_exception(tmp_path):
    packets, info = read_all(tmp_path)  # a directory cannot be read as a file
    assert len(packets) == 0 and "unreadable" in info.errors[0].reason


def test_truncation_at_every_byte_of_the_first_records_keeps_whole_records(tmp_path):
    records = [(cb.BASE_TS + i, cb.ether(udp4(i))) for i in range(3)]
    data = cb.pcap_bytes(records)
    record_len = 16 + len(records[0][1])
    for cut in range(len(data) + 1):
        packets, info = read_all(cb.write(tmp_path / "cut.pcap", data[:cut]))
        complete = max(0, (cut - 24) // record_len)
        assert len(packets) == complete, cut
        clean_end = cut >= 24 and (cut - 24) % record_len == 0
        assert (info.errors == []) == (clean_end and cut > 0), (cut, info.errors)
        if not clean_end and cut > 24:
            assert info.errors[0].byte_offset == 24 + complete * record_len


def test_truncated_pcapng_at_every_byte_keeps_whole_blocks(tmp_path):
    data = cb.pcapng_bytes([(1, 6)], [(0, cb.BASE_TS + i, cb.ether(udp4(i))) for i in range(2)])
    full, _ = read_all(cb.write(tmp_path / "full.pcapng", data))
    assert len(full) == 2
    block_ends, pos = set(), 0
    while pos < len(data):  # walk the block lengths the builder wrote
        pos += int.from_bytes(data[pos + 4:pos + 8], "little")
        block_ends.add(pos)
    for cut in range(len(data)):
        packets, info = read_all(cb.write(tmp_path / "cut.pcapng", data[:cut]))
        assert len(packets) <= 2
        assert (info.errors == []) == (cut in block_ends), cut
        assert np.array_equal(packets, full[: len(packets)])


def test_inflated_record_length_is_skipped_and_reading_resumes_at_the_next_record(tmp_path):
    records = [(cb.BASE_TS + i, cb.ether(udp4(i))) for i in range(4)]
    data = bytearray(cb.pcap_bytes(records))
    record_len = 16 + len(records[0][1])
    third = 24 + 2 * record_len
    data[third + 8: third + 12] = (0x7FFFFFF0).to_bytes(4, "little")
    packets, info = read_all(cb.write(tmp_path / "a.pcap", bytes(data)))
    assert packets[:, D.SPORT].tolist() == [1000, 1001, 1003]
    assert [(e.byte_offset, e.byte_length, e.fatal) for e in info.errors] == [(third, record_len, False)]
    assert "captured length 2147483632 over the limit 65535" in info.errors[0].reason
    assert info.complete and info.resyncs == 1 and info.bytes_skipped == record_len


def test_partially_corrupt_file_keeps_its_valid_part_with_status_partial(tmp_path):
    records = [(cb.BASE_TS + i, cb.ether(udp4(i))) for i in range(4)]
    data = cb.pcap_bytes(records)
    path = cb.write(tmp_path / "a.pcap", data[:-5])
    _flows, stats, errors = process_file(path, "a.pcap")
    assert stats["status"] == "partial" and stats["packets_read"] == 3
    assert errors[0]["byte_offset"] == 24 + 3 * (16 + len(records[0][1]))


def test_ipv4_total_length_zero_from_segmentation_offload_uses_the_captured_length(tmp_path):
    ip = cb.ipv4("10.0.0.1", "10.0.0.2", 6, cb.tcp(1, 2, cb.TCP_ACK, b"z" * 3000), total_length=0)
    path = cb.write(tmp_path / "a.pcap", cb.pcap_bytes([(cb.BASE_TS, ip)], linktype=101))
    packets, _ = read_all(path)
    assert packets[0, D.STATUS] == D.OK and packets[0, D.IPLEN] == len(ip)


def test_pcapng_simple_and_obsolete_packet_blocks_are_read(tmp_path):
    import struct

    frame = cb.ether(udp4())
    data = cb.pcapng_bytes([(1, 6)], [(0, cb.BASE_TS + 1.0, frame)])
    pad = b"\x00" * (-len(frame) % 4)
    spb_len = 16 + len(frame) + len(pad)
    spb = struct.pack("<III", 3, spb_len, len(frame)) + frame + pad + struct.pack("<I", spb_len)
    micros = round((cb.BASE_TS + 2.0) * 1e6)
    opb_len = 32 + len(frame) + len(pad)
    opb = struct.pack("<IIHHIIII", 2, opb_len, 0, 0, micros >> 32, micros & 0xFFFFFFFF,
                      len(frame), len(frame)) + frame + pad + struct.pack("<I", opb_len)
    packets, info = read_all(cb.write(tmp_path / "a.pcapng", data + spb + opb))
    assert info.errors == [] and len(packets) == 3
    assert packets[:, D.STATUS].tolist() == [D.OK] * 3
    # a simple packet block has no timestamp: it takes the previous packet's
    assert packets[:, D.TS].tolist() == [round((cb.BASE_TS + 1.0) * 1e6)] * 2 + [micros]


# ------------------------------------------------------------------ damage in the middle
SAMPLE_CAPTURE = Path(__file__).resolve().parent.parent / "sample" / "archive" / "2026-01-02" / \
    "lan-20260102-003000.pcap"


def pcap_record_spans(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of every whole record of a little-endian classic pcap (``struct`` only)."""
    spans, pos = [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack("<I", data[pos + 8:pos + 12])[0]
        if pos + 16 + caplen > len(data):
            break
        spans.append((pos, pos + 16 + caplen))
        pos += 16 + caplen
    return spans


def ten_records():
    """A 10-record pcap of varied sizes: ``(bytes, [(start, end)] per record)``."""
    frames = [cb.ether(cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(1000 + i, 53, b"q" * (10 + 3 * i))))
              for i in range(10)]
    data = cb.pcap_bytes([(cb.BASE_TS + i, f) for i, f in enumerate(frames)])
    return data, pcap_record_spans(data)


def sports(packets) -> list[int]:
    return packets[:, D.SPORT].tolist()


def test_a_zeroed_record_header_in_the_middle_costs_only_that_record(tmp_path):
    data, spans = ten_records()
    damaged = bytearray(data)
    damaged[spans[4][0]:spans[4][0] + 16] = bytes(16)
    packets, info = read_all(cb.write(tmp_path / "a.pcap", bytes(damaged)))
    assert sports(packets) == [1000 + i for i in range(10) if i != 4]
    assert packets[:, D.OFFSET].tolist() == [start for i, (start, _end) in enumerate(spans) if i != 4]
    (error,) = info.errors
    assert (error.byte_offset, error.byte_length, error.fatal) == (spans[4][0], spans[5][0] - spans[4][0], False)
    assert "timestamp 0 s" in error.reason and error.packets_before == 4
    assert info.complete


def test_random_bytes_over_records_of_a_real_capture_lose_only_the_records_they_touch(tmp_path):
    data = SAMPLE_CAPTURE.read_bytes()
    spans = pcap_record_spans(data)
    clean, _ = read_all(SAMPLE_CAPTURE)
    first, end = spans[100][0] + 30, spans[140][0] + 7       # from a payload into a header
    damaged = bytearray(data)
    damaged[first:end] = np.random.default_rng(20).integers(0, 256, end - first, dtype=np.uint8).tobytes()
    packets, info = read_all(cb.write(tmp_path / "real.pcap", bytes(damaged)))
    # kept: records whose header lies before the damage (record 100's payload is damaged but
    # its header and length are intact) and every record wholly after it
    kept = [i for i, (start, stop) in enumerate(spans) if start + 16 <= first or start >= end]
    assert packets[:, D.OFFSET].tolist() == [spans[i][0] for i in kept]
    intact = [i for i in kept if i != 100]
    assert np.array_equal(np.delete(packets, kept.index(100), axis=0), clean[intact])
    (error,) = info.errors
    assert error.byte_offset == spans[101][0] and error.byte_offset + error.byte_length == spans[141][0]
    assert not error.fatal and error.packets_before == 101 and info.complete


def test_a_plausible_but_wrong_record_length_skips_that_record_and_nothing_else(tmp_path):
    data, spans = ten_records()
    damaged = bytearray(data)
    start = spans[3][0]
    length = spans[3][1] - start - 16
    damaged[start + 8:start + 16] = struct.pack("<II", length + 20, length + 20)  # lands inside record 4
    packets, info = read_all(cb.write(tmp_path / "a.pcap", bytes(damaged)))
    assert sports(packets) == [1000 + i for i in range(10) if i != 3]
    (error,) = info.errors
    assert (error.byte_offset, error.byte_length, error.fatal) == (start, spans[4][0] - start, False)


def test_a_shortened_record_length_keeps_the_record_and_skips_its_leftover_bytes(tmp_path):
    data, spans = ten_records()
    damaged = bytearray(data)
    start = spans[3][0]
    length = spans[3][1] - start - 16
    damaged[start + 8:start + 12] = struct.pack("<I", length - 4)
    packets, info = read_all(cb.write(tmp_path / "a.pcap", bytes(damaged)))
    assert sports(packets) == [1000 + i for i in range(10)]
    (error,) = info.errors
    assert (error.byte_offset, error.byte_length, error.fatal) == (spans[4][0] - 4, 4, False)


def test_a_damaged_first_record_costs_only_the_first_record(tmp_path):
    data, spans = ten_records()
    zeroed = bytearray(data)
    zeroed[24:40] = bytes(16)
    packets, info = read_all(cb.write(tmp_path / "a.pcap", bytes(zeroed)))
    assert sports(packets) == [1000 + i for i in range(1, 10)]
    assert [(e.byte_offset, e.byte_length) for e in info.errors] == [(24, spans[1][0] - 24)]
    # a first record two years off does not set the file's time window: the others agree
    late = bytearray(data)
    late[24:28] = struct.pack("<I", int(cb.BASE_TS) + 2 * 365 * 86_400)
    packets, info = read_all(cb.write(tmp_path / "b.pcap", bytes(late)))
    assert sports(packets) == [1000 + i for i in range(1, 10)]
    assert [(e.byte_offset, e.byte_length) for e in info.errors] == [(24, spans[1][0] - 24)]
    assert "inconsistent with the records after it" in info.errors[0].reason


def test_damage_with_no_record_after_it_ends_the_file_with_the_rest_as_its_length(tmp_path):
    data, spans = ten_records()
    damaged = data[:spans[7][0]] + np.random.default_rng(3).integers(
        0, 256, len(data) - spans[7][0], dtype=np.uint8).tobytes()
    packets, info = read_all(cb.write(tmp_path / "a.pcap", damaged))
    assert sports(packets) == [1000 + i for i in range(7)]
    (error,) = info.errors
    assert (error.byte_offset, error.byte_length, error.fatal) == (spans[7][0], len(data) - spans[7][0], True)
    assert "rest of the data is unreadable" in error.reason and not info.complete


@pytest.mark.parametrize("damage", ["zeroed_header", "wrong_trailer"])
def test_a_corrupt_pcapng_block_is_skipped_and_the_blocks_after_it_are_read(tmp_path, damage):
    data = cb.pcapng_bytes([(1, 6)], [(0, cb.BASE_TS + i, cb.ether(udp4(i))) for i in range(8)])
    blocks, pos = [], 0
    while pos < len(data):
        blocks.append(pos)
        pos += int.from_bytes(data[pos + 4:pos + 8], "little")
    epbs = blocks[2:]
    target, after = epbs[3], epbs[4]
    damaged = bytearray(data)
    if damage == "zeroed_header":
        damaged[target:target + 8] = bytes(8)
    else:
        damaged[after - 4:after] = b"\x01\x00\x00\x00"
    packets, info = read_all(cb.write(tmp_path / "a.pcapng", bytes(damaged)))
    assert sports(packets) == [1000 + i for i in range(8) if i != 3]
    (error,) = info.errors
    assert (error.byte_offset, error.byte_length, error.fatal) == (target, after - target, False)
    assert error.reason.startswith("corrupt pcapng block header") and info.complete


def test_damaged_files_read_in_small_chunks_give_the_same_packets_and_errors(tmp_path):
    data = SAMPLE_CAPTURE.read_bytes()
    spans = pcap_record_spans(data)
    damaged = bytearray(data)
    rng = np.random.default_rng(9)
    for k in (50, 300, 301, 400):
        damaged[spans[k][0]:spans[k][0] + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    path = cb.write(tmp_path / "a.pcap", bytes(damaged))
    whole, info = read_all(path)
    chunked, chunked_info = read_all(path, chunk_bytes=4096, batch_rows=7)
    assert len(whole) == len(spans) - 4 and len(info.errors) == 3   # 300 and 301 are one range
    assert np.array_equal(whole, chunked) and chunked_info.errors == info.errors


def test_a_gzip_stream_cut_midway_keeps_every_packet_before_the_cut(tmp_path):
    records = [(cb.BASE_TS + i * 0.001, cb.ether(udp4(i % 100))) for i in range(40_000)]
    data = cb.pcap_bytes(records)
    packed = gzip.compress(data)
    cut = packed[: len(packed) // 2]
    readable = zlib.decompressobj(31).decompress(cut)          # what the cut still holds
    whole = len(pcap_record_spans(readable))
    assert 0 < whole < len(records)
    packets, info = read_all(cb.write(tmp_path / "cut.pcap.gz", cut))
    assert len(packets) == whole
    assert np.array_equal(packets, read_all(cb.write(tmp_path / "a.pcap", data))[0][:whole])
    (error,) = info.errors
    last_end = pcap_record_spans(readable)[-1][1]
    assert (error.byte_offset, error.byte_length, error.fatal) == (last_end, len(readable) - last_end, True)
    assert f"the compressed file ends at byte {len(cut)}" in error.reason


def test_a_cut_short_last_record_keeps_every_earlier_record_and_reports_the_tail(tmp_path):
    data, spans = ten_records()
    packets, info = read_all(cb.write(tmp_path / "a.pcap", data[:-5]))
    assert sports(packets) == [1000 + i for i in range(9)]
    (error,) = info.errors
    assert (error.byte_offset, error.byte_length, error.fatal) == (spans[9][0], spans[9][1] - 5 - spans[9][0], True)
    assert error.reason.startswith("truncated pcap record")


def test_a_directory_named_like_a_capture_is_reported_not_opened(tmp_path):
    (tmp_path / "x.pcap").mkdir()
    packets, info = read_all(tmp_path / "x.pcap")
    assert len(packets) == 0
    assert [(e.byte_offset, e.reason, e.fatal) for e in info.errors] == [
        (0, "unreadable file: not a regular file (a directory)", True)]
