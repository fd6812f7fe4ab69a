"""Mutated real captures (bit flips, truncations, inflated lengths, random tails, gzip):
the parser never raises, never hangs, keeps its accounting and reports every early stop;
damage in the middle of a file (random bytes, a zeroed header, a huge captured length)
costs no packet whose record lies wholly after it. ``make fuzz`` runs the same with
10,000+ cases (bench/fuzz_capture.py)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from bench import fuzz_capture


@pytest.mark.fuzz
def test_200_mutated_real_captures_are_parsed_or_reported_never_crash_or_hang(shared_data):
    results = fuzz_capture.run(cases=200, seed=20260101, shared_data=shared_data,
                               case_timeout=10.0)
    failures = [f"{r.index} {r.source} {r.mutation}: {r.detail}" for r in results if not r.ok]
    assert failures == []
    assert {r.mutation for r in results} >= {"bitflip", "truncate", "inflate", "random_tail"}


def test_truncation_mutation_check_counts_whole_records_independently():
    header = b"\xd4\xc3\xb2\xa1" + bytes(20)
    record = (10).to_bytes(4, "little") * 2 + (3).to_bytes(4, "little") * 2 + b"abc"
    assert fuzz_capture.whole_pcap_records(header + record * 2 + record[:5]) == 2
    assert fuzz_capture.whole_pcap_records(b"junk" * 10) is None
    name, data = fuzz_capture.mutate(header + record, random.Random(3))
    assert isinstance(data, bytes) and name


@pytest.mark.fuzz
def test_mid_file_damage_recovers_every_packet_a_correct_resync_recovers(shared_data, monkeypatch):
    monkeypatch.setattr(fuzz_capture, "MID_FILE_SHARE", 1.0)
    results = fuzz_capture.run(cases=120, seed=20260102, shared_data=shared_data, case_timeout=10.0)
    assert [f"{r.index} {r.source} {r.mutation}: {r.detail}" for r in results if not r.ok] == []
    summary = fuzz_capture.resync_summary(results)
    assert set(summary) == set(fuzz_capture.MID_FILE_KINDS)
    for kind, entry in summary.items():
        assert entry["expected"] > 0 and entry["recovered"] == entry["expected"], (kind, entry)


def test_mid_file_mutations_report_the_bytes_they_changed_and_the_records_after_them():
    header = b"\xd4\xc3\xb2\xa1" + bytes(20)
    records = [(1_767_225_600 + i).to_bytes(4, "little") + bytes(4) + (3).to_bytes(4, "little") * 2 + b"abc"
               for i in range(40)]
    data = header + b"".join(records)
    spans = fuzz_capture.packet_records(data)
    assert spans == [(24 + 19 * i, 24 + 19 * (i + 1), 24 + 19 * i + 8) for i in range(40)]
    rng = random.Random(4)
    for _ in range(30):
        kind, mutated, (first, end) = fuzz_capture.mutate_mid_file(data, spans, rng)
        assert len(mutated) == len(data) and first < end
        assert mutated[:first] == data[:first] and mutated[end:] == data[end:]
        assert mutated[first] != data[first] and mutated[end - 1] != data[end - 1]


def test_a_reader_that_invents_or_loses_packets_around_the_damage_fails_the_case():
    records = [(24 + 100 * i, 124 + 100 * i, 32 + 100 * i) for i in range(10)]
    read_all = [np.array([r[0] for r in records if r[0] < 300 or r[0] >= 424])]
    ok = fuzz_capture._judge_resync(0, "s", "zero_header", records, (324, 340), read_all, 1024)
    assert ok.ok and (ok.expected_after, ok.recovered_after) == (6, 6)
    short = fuzz_capture._judge_resync(0, "s", "zero_header", records, (324, 340), [np.array([24, 124, 224])], 1024)
    assert short.ok and short.recovered_after == 0       # reported as short, not a failure
    invented = fuzz_capture._judge_resync(0, "s", "zero_header", records, (324, 340),
                                          [np.array([24, 124, 224, 350] + list(range(424, 1024, 100)))], 1024)
    assert not invented.ok and "invented" in invented.detail
    lost = fuzz_capture._judge_resync(0, "s", "zero_header", records, (324, 340), [np.array([24, 424])], 1024)
    assert not lost.ok and "lost 2 packets before the damage" in lost.detail
