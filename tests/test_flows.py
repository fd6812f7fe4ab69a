"""Flow assembly on hand-made captures whose flows are known before they are read.

Every expected number below is derived from what ``capture_builder`` wrote (packet
sizes, times, directions), or from a published reference value (Community ID).
"""
from __future__ import annotations

import math
from pathlib import Path

import capture_builder as cb
import numpy as np
import pandas as pd
import pytest

from pipeline.ingest.extract import extract_night_local, process_file
from pipeline.ingest.flows import FlowConfig, community_id, finalize, merge_partial_table
from pipeline.store.warehouse import read_arrow_partition

T0 = cb.BASE_TS


def flows_of(tmp_path: Path, packets: list[tuple[float, bytes]], config=FlowConfig(),
             linktype: int = 101) -> pd.DataFrame:
    """Write ``(ts, frame)`` records as one pcap and return its finished flows."""
    path = cb.write(tmp_path / "x.pcap", cb.pcap_bytes(packets, linktype=linktype))
    partial, stats, errors = process_file(path, "x.pcap", config)
    assert errors == []
    assert stats["packets_read"] == stats["packets_in_flows"] + stats["packets_skipped"]
    table = finalize(merge_partial_table(partial, config))
    return table.to_pandas().sort_values("first_seen_ms", kind="stable").reset_index(drop=True)


def test_tcp_conversation_gives_one_flow_with_per_direction_packets_bytes_and_flags(tmp_path):
    packets = cb.tcp_conversation("10.0.0.9", "10.0.0.1", 50000, 80, T0, data_packets=2,
                                  payload=100)
    flows = flows_of(tmp_path, packets)
    assert len(flows) == 1
    f = flows.iloc[0]
    # client: SYN, ACK, 2 x data(140 B), FIN, last ACK; server: SYN/ACK, 2 x ACK, FIN
    assert (f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.protocol) == (
        "10.0.0.9", 50000, "10.0.0.1", 80, 6)
    assert (f.src2dst_packets, f.dst2src_packets, f.bidirectional_packets) == (6, 4, 10)
    assert (f.src2dst_bytes, f.dst2src_bytes) == (4 * 40 + 2 * 140, 4 * 40)
    assert (f.src2dst_syn_packets, f.dst2src_syn_packets) == (1, 1)
    assert (f.src2dst_fin_packets, f.dst2src_fin_packets) == (1, 1)
    assert (f.src2dst_ack_packets, f.dst2src_ack_packets) == (5, 4)
    assert f.bidirectional_psh_packets == 2 and f.bidirectional_rst_packets == 0
    assert f.expiration_reason in ("fin", "end_of_capture")


def test_size_and_inter_arrival_statistics_match_numpy_on_the_written_sizes(tmp_path):
    sizes, times = [], []
    packets = []
    for i, (n, dt) in enumerate([(10, 0.0), (300, 0.25), (50, 0.5), (1000, 2.0), (7, 0.125)]):
        t = (times[-1] if times else T0) + dt
        ip = cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(4000, 53, b"a" * n))
        packets.append((t, ip))
        sizes.append(len(ip))
        times.append(t)
    f = flows_of(tmp_path, packets).iloc[0]
    piat_ms = np.diff(np.array(times)) * 1000
    assert f.bidirectional_mean_ps == pytest.approx(np.mean(sizes))
    assert f.bidirectional_stddev_ps == pytest.approx(np.std(sizes, ddof=1))
    assert (f.bidirectional_min_ps, f.bidirectional_max_ps) == (min(sizes), max(sizes))
    assert f.bidirectional_mean_piat_ms == pytest.approx(piat_ms.mean(), abs=1e-3)
    assert f.bidirectional_stddev_piat_ms == pytest.approx(np.std(piat_ms, ddof=1), abs=1e-3)
    assert f.bidirectional_min_piat_ms == pytest.approx(piat_ms.min(), abs=1e-3)
    assert f.bidirectional_max_piat_ms == pytest.approx(piat_ms.max(), abs=1e-3)
    assert f.bidirectional_duration_ms == pytest.approx((times[-1] - times[0]) * 1000, abs=1e-3)
    assert f.dst2src_packets == 0 and f.dst2src_mean_ps == 0
    assert list(f.splt_signed_ps) == sizes


def test_src_is_the_initiator_and_splt_signs_follow_direction(tmp_path):
    req = cb.ipv4("192.168.1.200", "10.0.0.1", 17, cb.udp(5353, 53, b"q"))
    rsp = cb.ipv4("10.0.0.1", "192.168.1.200", 17, cb.udp(53, 5353, b"rr"))
    f = flows_of(tmp_path, [(T0, req), (T0 + 0.01, rsp), (T0 + 0.02, req)]).iloc[0]
    assert (f.src_ip, f.dst_ip, f.src_port, f.dst_port) == ("192.168.1.200", "10.0.0.1", 5353, 53)
    assert list(f.splt_signed_ps) == [len(req), -len(rsp), len(req)]


@pytest.mark.parametrize("gap_s, flows_expected", [(100.0, 1), (119.0, 1), (121.0, 2)])
def test_idle_timeout_splits_a_key_after_120_s_of_silence(tmp_path, gap_s, flows_expected):
    ip = cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(4000, 53, b"x"))
    flows = flows_of(tmp_path, [(T0, ip), (T0 + gap_s, ip)])
    assert len(flows) == flows_expected
    if flows_expected == 2:
        assert flows.expiration_reason.tolist() == ["idle", "end_of_capture"]


def test_active_timeout_cuts_a_long_flow_every_1800_s(tmp_path):
    ip = cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(4000, 53, b"x"))
    packets = [(T0 + 60.0 * i, ip) for i in range(61)]  # one per minute for an hour
    flows = flows_of(tmp_path, packets)
    # a packet at t >= first + 1800 s starts a new flow: minutes 0-29, 30-59, 60
    assert flows.bidirectional_packets.tolist() == [30, 30, 1]
    assert flows.expiration_reason.tolist()[:2] == ["active", "active"]


def test_configurable_timeouts_are_used(tmp_path):
    ip = cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(4000, 53, b"x"))
    flows = flows_of(tmp_path, [(T0, ip), (T0 + 10, ip)], FlowConfig(idle_timeout_s=5))
    assert len(flows) == 2


@pytest.mark.parametrize("close, reason", [("fin", "fin"), ("rst", "rst")])
def test_a_new_syn_after_fin_or_rst_starts_a_new_flow_on_the_same_5_tuple(tmp_path, close, reason):
    first = cb.tcp_conversation("10.0.0.9", "10.0.0.1", 50000, 80, T0, close=close)
    second = cb.tcp_conversation("10.0.0.9", "10.0.0.1", 50000, 80, T0 + 5, close=close)
    flows = flows_of(tmp_path, first + second)
    assert len(flows) == 2
    assert flows.bidirectional_packets.tolist() == [len(first), len(second)]
    assert flows.expiration_reason.iloc[0] == reason


def test_same_5_tuple_on_two_vlans_gives_two_flows(tmp_path):
    ip = cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(4000, 53, b"x"))
    frames = [(T0, cb.ether(ip, vlans=(10,))), (T0 + 1, cb.ether(ip, vlans=(20,))),
              (T0 + 2, cb.ether(ip, vlans=(10,))), (T0 + 3, cb.ether(ip))]
    flows = flows_of(tmp_path, frames, linktype=1)
    counts = {(None if pd.isna(v) else int(v)): int(n) for v, n in
              zip(flows.vlan_id, flows.bidirectional_packets)}
    assert counts == {10: 2, 20: 1, None: 1}


def test_ipv6_flow_has_compressed_addresses_and_ipv6_sizes(tmp_path):
    a = cb.ipv6("2001:db8:0:0::1", "2001:db8::2", 6, cb.tcp(40000, 443, cb.TCP_SYN))
    b = cb.ipv6("2001:db8::2", "2001:db8::1", 6, cb.tcp(443, 40000, cb.TCP_SYN | cb.TCP_ACK))
    f = flows_of(tmp_path, [(T0, a), (T0 + 0.001, b)]).iloc[0]
    assert (f.ip_version, f.src_ip, f.dst_ip) == (6, "2001:db8::1", "2001:db8::2")
    assert (f.src2dst_bytes, f.dst2src_bytes) == (60, 60)


def test_ip_fragments_join_the_flow_of_their_first_fragment(tmp_path):
    data = b"d" * 64
    first = cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(4000, 9999, data[:32]), ident=77,
                    more_fragments=True)
    later = cb.ipv4("10.0.0.1", "10.0.0.2", 17, data[32:], ident=77, fragment_offset=5)
    other = cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(4001, 9999, b"z"), ident=78)
    flows = flows_of(tmp_path, [(T0, first), (T0 + 0.001, later), (T0 + 0.002, other)])
    by_port = flows.set_index("src_port")
    assert by_port.loc[4000, "bidirectional_packets"] == 2
    assert by_port.loc[4000, "ip_fragment_packets"] == 2
    assert by_port.loc[4000, "bidirectional_bytes"] == len(first) + len(later)
    assert by_port.loc[4001, "ip_fragment_packets"] == 0


def test_ipv6_fragment_header_is_counted_and_joined(tmp_path):
    payload = cb.udp(4000, 9999, b"p" * 16)
    first = cb.ipv6("2001:db8::1", "2001:db8::2", 44, payload,
                    extensions=cb.ipv6_fragment(17, 0, True, 5))
    later = cb.ipv6("2001:db8::1", "2001:db8::2", 44, b"q" * 16,
                    extensions=cb.ipv6_fragment(17, 3, False, 5))
    flows = flows_of(tmp_path, [(T0, first), (T0 + 0.001, later)])
    assert len(flows) == 1
    assert flows.ip_fragment_packets.iloc[0] == 2 and flows.src_port.iloc[0] == 4000


def test_icmp_echo_request_and_reply_are_one_flow_with_community_id(tmp_path):
    req = cb.ipv4("10.0.0.1", "10.0.0.2", 1, cb.icmp(8, 0))
    rep = cb.ipv4("10.0.0.2", "10.0.0.1", 1, cb.icmp(0, 0))
    flows = flows_of(tmp_path, [(T0, req), (T0 + 0.001, rep)])
    assert len(flows) == 1 and flows.bidirectional_packets.iloc[0] == 2
    assert flows.community_id.iloc[0].startswith("1:")


def test_community_id_matches_the_published_v1_example():
    # Community ID spec / Zeek docs: 128.232.110.120:34855 -> 66.35.250.204:80 TCP, seed 0
    assert community_id("128.232.110.120", "66.35.250.204", 6, 34855, 80, 0, 0) == \
        "1:LQU9qZlK+B5F3KDmev6m5PMibrg="


def test_flow_id_is_stable_across_reruns_and_differs_between_flows(tmp_path):
    packets = cb.tcp_conversation("10.0.0.9", "10.0.0.1", 50000, 80, T0) + \
        cb.tcp_conversation("10.0.0.9", "10.0.0.1", 50001, 80, T0 + 1)
    ids_a = flows_of(tmp_path, packets).flow_id.tolist()
    ids_b = flows_of(tmp_path, packets).flow_id.tolist()
    assert ids_a == ids_b and len(set(ids_a)) == 2
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids_a)


def test_flows_straddling_rotated_files_are_merged_like_one_file(tmp_path):
    conversations = []
    for k in range(5):
        conversations += cb.tcp_conversation(f"10.0.1.{k + 1}", "10.0.0.1", 40000 + k, 443,
                                             T0 + k * 7.0, data_packets=20, gap=0.5, close="fin")
    ip = cb.ipv4("10.0.0.5", "10.0.0.6", 17, cb.udp(123, 123, b"t"))
    conversations += [(T0 + 30 * i, ip) for i in range(12)]  # one UDP flow across all files
    conversations.sort(key=lambda r: r[0])
    archive = tmp_path / "archive"
    day = "2026-01-01"
    cb.write(archive / "single" / day / "all.pcap", cb.pcap_bytes(conversations, linktype=101))
    cuts = [0, len(conversations) // 3, 2 * len(conversations) // 3, len(conversations)]
    for i in range(3):
        part = conversations[cuts[i]:cuts[i + 1]]
        cb.write(archive / "rotated" / day / f"part-{i}.pcap", cb.pcap_bytes(part, linktype=101))
    tables = {}
    for layout in ("single", "rotated"):
        extract_night_local(archive / layout, day, tmp_path / f"wh-{layout}")
        tables[layout] = read_arrow_partition(tmp_path / f"wh-{layout}", "flows", date=day) \
            .to_pandas().drop(columns=["capture_file"]).sort_values("flow_id") \
            .reset_index(drop=True)
    single, rotated = tables["single"], tables["rotated"]
    assert len(single) == 6
    assert single.bidirectional_packets.sum() == len(conversations)
    pd.testing.assert_frame_equal(single.drop(columns=["splt_signed_ps"]),
                                  rotated.drop(columns=["splt_signed_ps"]),
                                  check_exact=False, rtol=1e-9)
    assert [list(s) for s in single.splt_signed_ps] == [list(s) for s in rotated.splt_signed_ps]


def test_flow_columns_follow_the_schema_and_sizes_are_ip_bytes(tmp_path):
    from pipeline.store import schema

    ip = cb.ipv4("10.0.0.1", "10.0.0.2", 17, cb.udp(4000, 53, b"x" * 3))
    path = cb.write(tmp_path / "x.pcap", cb.pcap_bytes([(T0, cb.ether(ip))]))
    table = finalize(process_file(path, "x.pcap")[0])
    assert table.schema.equals(schema.FLOWS)
    assert table.column("bidirectional_bytes").to_pylist() == [20 + 8 + 3]
    assert math.isclose(table.column("first_seen_ms")[0].as_py(), T0 * 1000)


def test_fast_community_id_equals_the_communityid_package_on_a_real_night(shared_data):
    import ipaddress

    from pipeline.ingest.flows import community_id_packed

    path = shared_data / "archive" / "2026-01-03" / "lan-20260103.pcap"
    flows = finalize(process_file(path, path.name)[0]).to_pandas()
    extra = pd.DataFrame({"src_ip": ["2001:db8::1", "10.0.0.1", "10.0.0.2"],
                          "dst_ip": ["2001:db8::2", "10.0.0.2", "10.0.0.1"],
                          "protocol": [17, 47, 6], "src_port": [53, 0, 80],
                          "dst_port": [40000, 0, 50000]})
    rows = pd.concat([flows[extra.columns], extra], ignore_index=True)
    rows = rows[~rows.protocol.isin([1, 58])]
    assert len(rows) > 3000
    for r in rows.itertuples():
        fast = community_id_packed(int(r.protocol), ipaddress.ip_address(r.src_ip).packed,
                                   ipaddress.ip_address(r.dst_ip).packed, int(r.src_port),
                                   int(r.dst_port))
        assert fast == community_id(r.src_ip, r.dst_ip, int(r.protocol), int(r.src_port),
                                    int(r.dst_port), 0, 0), r
    by_flow = flows.set_index("flow_id")
    sample = flows[~flows.protocol.isin([1, 58])].head(200)
    for r in sample.itertuples():
        assert by_flow.loc[r.flow_id, "community_id"] == community_id(
            r.src_ip, r.dst_ip, int(r.protocol), int(r.src_port), int(r.dst_port), 0, 0)
