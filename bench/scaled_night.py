"""Generate a big night for benchmarks: a real capture repeated with remapped addresses.

Copy ``k`` of every packet has ``k`` added (mod 256) to the second octet of both IPv4
addresses, so the copies' flows stay distinct while keeping the original's packet sizes,
timing and protocol mix. Copies are interleaved record by record, so the output stays
in time order, like a capture of a network ``copies`` times larger. IPv6 and non-IP
frames are copied unchanged. Checksums are not recomputed (no parser here checks them).
"""
from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

_ETH_IPV4 = b"\x08\x00"
_VLAN = b"\x81\x00"


def _records(data: bytes, byte_order: str) -> list[tuple[int, int]]:
    """``(offset, length)`` of every record (header included) of a classic pcap body."""
    spans, offset = [], 24
    header = struct.Struct(byte_order + "IIII")
    while offset + 16 <= len(data):
        incl = header.unpack_from(data, offset)[2]
        spans.append((offset, 16 + incl))
        offset += 16 + incl
    return spans


def _second_octets(data: bytes, spans: list[tuple[int, int]]) -> np.ndarray:
    """Absolute byte positions of the second octet of IPv4 source and destination."""
    positions = []
    for offset, length in spans:
        frame = offset + 16
        ethertype, ip = data[frame + 12:frame + 14], frame + 14
        if ethertype == _VLAN:
            ethertype, ip = data[frame + 16:frame + 18], frame + 18
        if ethertype == _ETH_IPV4 and ip + 20 <= offset + length:
            positions += [ip + 13, ip + 17]
    return np.asarray(positions, dtype=np.int64)


def write_scaled(source: Path, target: Path, copies: int) -> dict:
    """Write ``copies`` interleaved remapped copies of ``source`` (classic pcap, Ethernet)."""
    raw = gzip.open(source).read() if source.suffix == ".gz" else source.read_bytes()
    magic = raw[:4]
    byte_order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    spans = _records(raw, byte_order)
    base = np.frombuffer(raw, dtype=np.uint8)
    positions = _second_octets(raw, spans)
    versions = []
    for k in range(copies):
        copy = base.copy()
        copy[positions] = (copy[positions].astype(np.int64) + k) % 256
        versions.append(copy.tobytes())
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb", buffering=1 << 22) as out:
        out.write(raw[:24])
        for offset, length in spans:
            for version in versions:
                out.write(version[offset:offset + length])
    return {"packets": len(spans) * copies, "bytes": target.stat().st_size, "copies": copies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--copies", type=int, required=True)
    args = parser.parse_args()
    print(write_scaled(args.source, args.target, args.copies))


if __name__ == "__main__":
    main()
