"""Record boundaries found from any byte offset: the pure functions a reader resynchronises
with and a byte-range splitter starts a task with.

Record offsets are computed from what ``capture_builder`` wrote, never by the code under test.
"""
from __future__ import annotations

import struct

import capture_builder as cb
import numpy as np
import pytest

from pipeline.ingest.capture import boundary as B


def udp_frame(i: int) -> bytes:
    return cb.ether(cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(1000 + i, 53, b"q" * (10 + i))))


def pcap_file(count: int = 8, big_endian: bool = False, nano: bool = False, start: float = cb.BASE_TS):
    """``(bytes, record offsets)`` of a classic pcap with ``count`` records of varied size."""
    records = [(start + 0.5 * i, udp_frame(i)) for i in range(count)]
    offsets = [24]
    for _ts, frame in records:
        offsets.append(offsets[-1] + 16 + len(frame))
    return cb.pcap_bytes(records, big_endian=big_endian, nano=nano), offsets[:-1]


def pcapng_file(count: int = 6, big_endian: bool = False):
    """``(bytes, block offsets of the packet blocks)``: SHB, one IDB, ``count`` EPBs."""
    data = cb.pcapng_bytes([(1, 6)], [(0, cb.BASE_TS + i, udp_frame(i)) for i in range(count)],
                           big_endian=big_endian)
    order = ">" if big_endian else "<"
    blocks, pos = [], 0
    while pos < len(data):
        blocks.append(pos)
        pos += struct.unpack(order + "I", data[pos + 4:pos + 8])[0]
    return data, blocks[2:]


def anchored(data: bytes) -> B.PcapFraming:
    """The framing a reader or splitter derives from the file's head."""
    return B.pcap_anchor(data, 24, B.pcap_framing(data[:24]))


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nano", [False, True])
def test_a_pcap_boundary_is_found_exactly_on_a_record_and_from_inside_one(big_endian, nano):
    data, offsets = pcap_file(big_endian=big_endian, nano=nano)
    framing = anchored(data)
    assert (framing.swapped, framing.nano) == (big_endian, nano)
    for i, offset in enumerate(offsets):
        assert B.find_record_boundary(data, offset, framing) == offset
        if i + 1 < len(offsets):  # from every byte inside record i: the start of record i + 1
            inside = [B.find_record_boundary(data, p, framing) for p in range(offset + 1, offsets[i + 1])]
            assert inside == [offsets[i + 1]] * (offsets[i + 1] - offset - 1), i
    # inside the last record there is no boundary left
    assert B.find_record_boundary(data, offsets[-1] + 1, framing) is None


def test_a_splitter_finds_the_first_record_from_inside_the_global_header():
    data, offsets = pcap_file()
    framing = B.pcap_framing(data[:24])
    assert not framing.anchor_known
    assert [B.find_record_boundary(data, p, framing) for p in range(0, 25)] == [offsets[0]] * 25
    assert B.pcap_anchor(data, 0, framing).ts_min_s == int(cb.BASE_TS) - B.TS_BEFORE_S


def test_the_time_window_is_a_day_before_and_366_days_after_the_first_record():
    data, _offsets = pcap_file()
    framing = anchored(data)
    assert (framing.ts_min_s, framing.ts_max_s) == (int(cb.BASE_TS) - 86_400, int(cb.BASE_TS) + 366 * 86_400)


@pytest.mark.parametrize("field, value, fault", [
    (8, 70_000, B.FAULT_CAPLEN),                      # incl_len over the 65,535 limit
    (0, 0, B.FAULT_TIME),                             # timestamp at the epoch
    (0, int(cb.BASE_TS) + 400 * 86_400, B.FAULT_TIME),  # 400 days after the first record
    (4, 1_000_000, B.FAULT_FRACTION),                 # a microsecond fraction of a whole second
    (12, 0, B.FAULT_ORIG_LEN),
    (12, B.MAX_ORIG_LEN + 1, B.FAULT_ORIG_LEN),
    (12, 20, B.FAULT_CAPLEN_OVER_ORIG),               # orig_len below incl_len
])
def test_each_plausibility_rule_rejects_the_header_that_breaks_it(field, value, fault):
    data, offsets = pcap_file()
    framing = anchored(data)
    damaged = bytearray(data)
    third = offsets[2]
    damaged[third + field:third + field + 4] = struct.pack("<I", value)
    b = np.frombuffer(bytes(damaged), dtype=np.uint8)
    assert B.pcap_header_fault(b, third, False, False, framing.caplen_limit,
                               framing.ts_min_s, framing.ts_max_s) == fault
    # a boundary search from the damaged record lands on the next one
    assert B.find_record_boundary(bytes(damaged), third, framing) == offsets[3]
    # records whose chain runs through it are no boundary either: a splitter starts after it
    assert B.chain_verdict(bytes(damaged), offsets[1], framing, True) == B.BROKEN
    assert B.find_record_boundary(bytes(damaged), offsets[0], framing) == offsets[3]


def test_a_chain_ending_exactly_at_the_end_of_the_file_confirms_the_last_records():
    data, offsets = pcap_file(count=3)
    framing = anchored(data)
    assert B.find_record_boundary(data, offsets[2], framing) == offsets[2]
    # the same bytes as a non-final buffer: the end may not be the file's, so undecided
    assert B.find_record_boundary(data, offsets[2], framing, final=False) is None
    assert B.scan_record_boundary(data, offsets[2], framing, final=False) == (None, offsets[2])


def test_zeroed_and_random_bytes_hold_no_boundary():
    data, _offsets = pcap_file()
    framing = anchored(data)
    rng = np.random.default_rng(5)
    assert B.find_record_boundary(bytes(4096), 0, framing) is None
    assert B.find_record_boundary(rng.integers(0, 256, 1 << 16, dtype=np.uint8), 0, framing) is None
    # even with the window still open, zeros are no record (orig_len 0)
    assert B.find_record_boundary(bytes(4096), 0, B.pcap_framing(data[:24])) is None


def test_a_streaming_scan_resumes_where_it_left_and_agrees_with_the_whole_buffer():
    data, offsets = pcap_file(count=12)
    framing = anchored(data)
    damaged = bytearray(data)
    damaged[offsets[3]:offsets[7] + 5] = np.random.default_rng(1).integers(
        0, 256, offsets[7] + 5 - offsets[3], dtype=np.uint8).tobytes()
    whole = B.find_record_boundary(bytes(damaged), offsets[3], framing)
    assert whole == offsets[8]
    # the same search fed 64 bytes at a time: drop what was rejected, append, scan again
    kept, base, found, longest = b"", offsets[3], None, 0
    for piece in range(offsets[3], len(damaged), 64):
        kept += bytes(damaged[piece:piece + 64])
        longest = max(longest, len(kept))
        found, resume = B.scan_record_boundary(kept, 0, framing, final=piece + 64 >= len(damaged))
        if found is not None:
            found += base
            break
        kept, base = kept[resume:], base + resume
    assert found == whole
    assert longest < 3 * (16 + 64) + 64  # only an undecided chain's bytes are kept


@pytest.mark.parametrize("big_endian", [False, True])
def test_a_pcapng_boundary_is_a_known_block_with_a_matching_trailer(big_endian):
    data, blocks = pcapng_file(big_endian=big_endian)
    framing = B.PcapngFraming(swapped=big_endian, interfaces=1)
    for i, offset in enumerate(blocks):
        assert B.find_record_boundary(data, offset, framing) == offset
        if i + 1 < len(blocks):
            assert B.find_record_boundary(data, offset + 1, framing) == blocks[i + 1]
            assert B.find_record_boundary(data, offset + 4, framing) == blocks[i + 1]
    # from the file's start the section header block itself is the first boundary
    assert B.find_record_boundary(data, 0, framing) == 0


def test_a_pcapng_packet_block_naming_an_undescribed_interface_is_no_boundary():
    data, blocks = pcapng_file()
    assert B.find_record_boundary(data, blocks[1], B.PcapngFraming(False, interfaces=1)) == blocks[1]
    # no interface described (its IDB was lost): no packet block can be trusted
    assert B.find_record_boundary(data, blocks[0], B.PcapngFraming(False, interfaces=0)) is None


def test_a_pcapng_block_with_a_wrong_trailer_is_skipped():
    data, blocks = pcapng_file()
    damaged = bytearray(data)
    end = blocks[2] + int.from_bytes(data[blocks[2] + 4:blocks[2] + 8], "little")
    damaged[end - 4:end] = b"\xff\xff\x00\x00"
    framing = B.PcapngFraming(False, interfaces=1)
    assert B.find_record_boundary(bytes(damaged), blocks[2], framing) == blocks[3]
    assert "trailing block length" in B.describe_damage(bytes(damaged), blocks[2], framing)


def test_damage_is_described_by_the_rule_it_breaks():
    data, offsets = pcap_file()
    framing = anchored(data)
    zeroed = bytearray(data)
    zeroed[offsets[1]:offsets[1] + 16] = bytes(16)
    assert "timestamp 0 s (1970-01-01T00:00:00Z) outside the file's window" in \
        B.describe_damage(bytes(zeroed), offsets[1], framing)
    huge = bytearray(data)
    huge[offsets[1] + 8:offsets[1] + 12] = struct.pack("<I", 0xFFFFFFFF)
    assert B.describe_damage(bytes(huge), offsets[1], framing) == "captured length 4294967295 over the limit 65535"
