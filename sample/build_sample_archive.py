"""Build the embedded sample archive (``sample/archive``) from redistributable captures.

Only sources whose licence allows redistribution are used (see ``sample/SOURCES.md``):
IoT Sentinel device-setup captures (MIT repository, Aalto dataset: cite Miettinen et al.,
ICDCS 2017) and nDPI's test traces (LGPL-3.0). Each night replays a seeded selection of
benign captures at seeded offsets inside 00:00-01:00 UTC; the third night also replays
two attack traces from nDPI (an nmap SYN scan and DNS exfiltration) and gets
``sample/labels.csv`` in the dev archive's format.

Run: ``python sample/build_sample_archive.py ../shared/data/captures sample``
(the result is committed; rebuilding is only needed to change it).
"""
from __future__ import annotations

import calendar
import datetime as dt
import gzip
import random
import struct
import sys
from pathlib import Path

NIGHTS = ("2026-01-01", "2026-01-02", "2026-01-03")
BENIGN_IOT = (
    "iots-Aria-C-7__Setup-C-7-STA.pcap", "iots-D-LinkDayCam-C-2__Setup-C-2-STA.pcap",
    "iots-D-LinkHomeHub-C-2__Setup-C-2-STA.pcap", "iots-HueSwitch-C-1__Setup-C-1-STA.pcap",
    "iots-TP-LinkPlugHS100-C-10__Setup-C-10-STA.pcap", "iots-HomeMaticPlug-C-10__Setup-C-10-STA.pcap",
    "iots-D-LinkSiren-C-10__Setup-C-10-STA.pcap", "iots-MAXGateway-C-1__Setup-C-1-STA.pcap",
)
BENIGN_NDPI = (
    "ndpi-443-curl__443-curl.pcap", "ndpi-443-git__443-git.pcap", "ndpi-ftp__ftp.pcap", "ndpi-modbus__modbus.pcap", "ndpi-firefox__firefox.pcap",
    "ndpi-facebook__facebook.pcap", "ndpi-smtp__smtp.pcap", "ndpi-nntp__nntp.pcap",
    "ndpi-pop3_stls__pop3_stls.pcap", "ndpi-imap-starttls__imap-starttls.pcap",
    "ndpi-dns_dot__dns_dot.pcap", "ndpi-exe_download__exe_download.pcap",
)
ATTACKS = (  # (kind, file, packets kept)
    ("scan", "ndpi-synscan__synscan.pcap", 60),
    ("exfil", "ndpi-dnsexfil__dns_exfiltration.pcap", 300),
)


def read_pcap(path: Path) -> list[tuple[float, bytes, int]]:
    """Records ``(timestamp_s, frame, original_length)`` of a classic little-endian pcap."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise ValueError(f"{path}: not a little-endian classic pcap")
    scale = 1e-6 if magic == 0xA1B2C3D4 else 1e-9
    if struct.unpack("<I", data[20:24])[0] != 1:
        raise ValueError(f"{path}: not Ethernet")
    records, offset = [], 24
    while offset + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack("<IIII", data[offset:offset + 16])
        records.append((sec + frac * scale, data[offset + 16:offset + 16 + incl], orig))
        offset += 16 + incl
    return records


def shifted(records, start_s: float, stretch: float = 1.0):
    first = records[0][0]
    return [(start_s + (ts - first) * stretch, frame, orig) for ts, frame, orig in records]


def write_pcap(path: Path, records, compress: bool = False) -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    body = bytearray(header)
    for ts, frame, orig in records:
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec == 1_000_000:
            sec, usec = sec + 1, 0
        body += struct.pack("<IIII", sec, usec, len(frame), orig) + frame
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.GzipFile(path, "wb", mtime=0) as handle:
            handle.write(bytes(body))
    else:
        path.write_bytes(bytes(body))


def ip_pair(frame: bytes) -> tuple[str, str] | None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    return ".".join(map(str, frame[26:30])), ".".join(map(str, frame[30:34]))


def build(captures: Path, out: Path, seed: int = 7) -> None:
    rng = random.Random(seed)
    labels = ["attack,a,b,start,end"]
    for night in NIGHTS:
        midnight = calendar.timegm(dt.date.fromisoformat(night).timetuple())
        packets = []
        for name in BENIGN_IOT + tuple(n for n in BENIGN_NDPI if rng.random() < 0.8):
            records = read_pcap(captures / name)
            span = records[-1][0] - records[0][0]
            start = midnight + 60 + rng.uniform(0, max(1.0, 3300 - span))
            packets += shifted(records, start, rng.uniform(0.9, 1.1))
        if night == NIGHTS[-1]:
            for kind, name, keep in ATTACKS:
                records = read_pcap(captures / name)[:keep]
                start = midnight + rng.uniform(600, 3000)
                attack = shifted(records, start)
                packets += attack
                pairs = {ip_pair(f) for _, f, _ in attack} - {None}
                attacker = max({a for a, _ in pairs}, key=lambda a: sum(p[0] == a for p in pairs))
                victims = {b for a, b in pairs if a == attacker} | {a for a, b in pairs if b == attacker}
                for victim in sorted(victims - {attacker}):
                    labels.append(f"{kind},{attacker},{victim},{int(attack[0][0]) - 1},{int(attack[-1][0]) + 3}")
        packets.sort(key=lambda r: r[0])
        packets = [p for p in packets if p[0] < midnight + 86400]
        folder = out / "archive" / night
        compact = night.replace("-", "")
        if night == NIGHTS[1]:  # rotated files, tcpdump -G style
            cut = midnight + 1800
            write_pcap(folder / f"lan-{compact}-000000.pcap", [p for p in packets if p[0] < cut])
            write_pcap(folder / f"lan-{compact}-003000.pcap", [p for p in packets if p[0] >= cut])
        else:
            write_pcap(folder / f"lan-{compact}.pcap.gz", packets, compress=True)
    (out / "labels.csv").write_text("\n".join(labels) + "\n")


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
