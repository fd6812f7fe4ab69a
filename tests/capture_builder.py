"""Hand-made capture files for tests: packets and file formats packed with ``struct``.

Independent of the parser under test: every header is written from its RFC layout, so a
test can state the flows it expects (packets, bytes, directions) before reading them.
Times are float seconds since the epoch unless a name says otherwise.
"""
from __future__ import annotations

import gzip
import ipaddress
import struct
from pathlib import Path

BASE_TS = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


# ------------------------------------------------------------------ L4
def tcp(sport: int, dport: int, flags: int = TCP_ACK, payload: bytes = b"") -> bytes:
    """20-byte TCP header (no options) + payload."""
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(icmp_type: int, code: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BBHHH", icmp_type, code, 0, 1, 1) + payload


# ------------------------------------------------------------------ L3
def ipv4(src: str, dst: str, proto: int, l4: bytes, ident: int = 1, more_fragments: bool = False,
         fragment_offset: int = 0, total_length: int | None = None) -> bytes:
    """IPv4 header (20 bytes) + ``l4``; ``fragment_offset`` in 8-byte units."""
    frag = (0x2000 if more_fragments else 0) | fragment_offset
    length = 20 + len(l4) if total_length is None else total_length
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, ident, frag, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + l4


def ipv6(src: str, dst: str, next_header: int, payload: bytes, extensions: bytes = b"") -> bytes:
    """IPv6 header (40 bytes) + ``extensions`` (already chained) + ``payload``."""
    body = extensions + payload
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), next_header, 64,
                         ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return header + body


def ipv6_hop_by_hop(next_header: int) -> bytes:
    """An 8-byte Hop-by-Hop options header (PadN only)."""
    return struct.pack("!BB6s", next_header, 0, b"\x01\x04\x00\x00\x00\x00")


def ipv6_fragment(next_header: int, offset_units: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset_units << 3) | int(more), ident)


# ------------------------------------------------------------------ L2
def ether(ip_packet: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = ()) -> bytes:
    """Ethernet II frame; ``vlans`` are 802.1Q (outer first; outer uses 0x88A8 for QinQ)."""
    frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if (len(vlans) > 1 and i == 0) else 0x8100
        frame += struct.pack("!HH", tpid, vid)
    return frame + struct.pack("!H", ethertype) + ip_packet


def sll(ip_packet: bytes, protocol: int = 0x0800) -> bytes:
    """Linux cooked v1 (DLT 113): 16-byte header."""
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", protocol) + ip_packet


def sll2(ip_packet: bytes, protocol: int = 0x0800) -> bytes:
    """Linux cooked v2 (DLT 276): 20-byte header."""
    return struct.pack("!HHIHBB8s", protocol, 0, 2, 1, 0, 6,
                       b"\x02\x00\x00\x00\x00\x01\x00\x00") + ip_packet


def arp() -> bytes:
    return ether(bytes(28), ethertype=0x0806)


# ------------------------------------------------------------------ files
def pcap_bytes(records: list[tuple[float, bytes]], linktype: int = 1, big_endian: bool = False,
               nano: bool = False, snaplen: int = 65535) -> bytes:
    """Classic pcap: global header + one record per ``(timestamp_s, frame)``."""
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    scale = 1_000_000_000 if nano else 1_000_000
    for ts, frame in records:
        units = round(ts * 1_000_000) * (scale // 1_000_000)  # exact to the µs
        sec, frac = divmod(units, scale)
        out.append(struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame)
    return b"".join(out)


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _block(order: str, block_type: int, body: bytes) -> bytes:
    body = _pad4(body)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def pcapng_shb(big_endian: bool = False) -> bytes:
    """A Section Header Block (no options, section length unknown)."""
    order = ">" if big_endian else "<"
    return _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def pcapng_idb(linktype: int, exponent: int, big_endian: bool = False) -> bytes:
    """An Interface Description Block with ``if_tsresol`` = 10^-``exponent`` s."""
    order = ">" if big_endian else "<"
    options = struct.pack(order + "HHB", 9, 1, exponent) + b"\x00" * 3
    options += struct.pack(order + "HH", 0, 0)
    return _block(order, 1, struct.pack(order + "HHI", linktype, 0, 0) + options)


def pcapng_epb(iface: int, ts: float, frame: bytes, exponent: int = 6, big_endian: bool = False) -> bytes:
    """An Enhanced Packet Block on interface ``iface`` (whose resolution is 10^-``exponent``)."""
    order = ">" if big_endian else "<"
    micros = round(ts * 1_000_000)
    units = micros * 10 ** (exponent - 6) if exponent >= 6 else micros // 10 ** (6 - exponent)
    body = struct.pack(order + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(frame),
                       len(frame)) + frame
    return _block(order, 6, body)


def pcapng_spb(frame: bytes, big_endian: bool = False) -> bytes:
    """A Simple Packet Block (interface 0, no timestamp)."""
    order = ">" if big_endian else "<"
    return _block(order, 3, struct.pack(order + "I", len(frame)) + frame)


def pcapng_bytes(interfaces: list[tuple[int, int]], records: list[tuple[int, float, bytes]],
                 big_endian: bool = False) -> bytes:
    """pcapng: SHB, one IDB per ``(linktype, tsresol exponent of 10)``, one EPB per
    ``(interface, timestamp_s, frame)``."""
    out = [pcapng_shb(big_endian)]
    out += [pcapng_idb(linktype, exponent, big_endian) for linktype, exponent in interfaces]
    out += [pcapng_epb(iface, ts, frame, interfaces[iface][1], big_endian) for iface, ts, frame in records]
    return b"".join(out)


def write(path: Path, data: bytes, compress: bool = False) -> Path:
    """Write ``data`` (gzip-compressed when ``compress``), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def tcp_conversation(client: str, server: str, cport: int, sport: int, start: float,
                     data_packets: int = 2, gap: float = 0.1, close: str = "fin",
                     payload: int = 100) -> list[tuple[float, bytes]]:
    """A TCP exchange as IPv4 packets ``(ts, ip_packet)``: handshake, ``data_packets``
    client->server data packets each answered by an ACK, then FIN/FIN/ACK or a RST."""
    c2s = lambda flags, data=b"": ipv4(client, server, 6, tcp(cport, sport, flags, data))  # noqa: E731
    s2c = lambda flags, data=b"": ipv4(server, client, 6, tcp(sport, cport, flags, data))  # noqa: E731
    packets = [c2s(TCP_SYN), s2c(TCP_SYN | TCP_ACK), c2s(TCP_ACK)]
    for _ in range(data_packets):
        packets += [c2s(TCP_PSH | TCP_ACK, b"x" * payload), s2c(TCP_ACK)]
    if close == "fin":
        packets += [c2s(TCP_FIN | TCP_ACK), s2c(TCP_FIN | TCP_ACK), c2s(TCP_ACK)]
    elif close == "rst":
        packets += [c2s(TCP_RST)]
    return [(start + i * gap, p) for i, p in enumerate(packets)]
