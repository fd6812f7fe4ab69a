"""Mutated real captures (bit flips, truncations, inflated lengths, random tails, gzip):
the parser never raises, never hangs, keeps its accounting and reports every early stop.
``make fuzz`` runs the same with 10,000+ cases (bench/fuzz_capture.py)."""
from __future__ import annotations

import random

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
