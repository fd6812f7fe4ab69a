import pandas as pd
import pytest

from pipeline.evaluation.labels import BENIGN, label_flows, read_labels


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "attack,a,b,start,end\n"
        "scan,10.10.86.51,10.10.173.153,100,110\n"
        "dos,58.144.227.0/24,10.10.216.55,200,201\n"
        "exfil,6.93.26.252,*,300,400\n"
    )
    return read_labels(path)


def _flow(src, dst, first_s, last_s):
    return {"src_ip": src, "dst_ip": dst, "first_seen_ms": int(first_s * 1000), "last_seen_ms": int(last_s * 1000)}


def test_pair_matches_in_either_direction_only_inside_the_window(rules):
    flows = pd.DataFrame([
        _flow("10.10.86.51", "10.10.173.153", 101, 102),   # attacker -> victim
        _flow("10.10.173.153", "10.10.86.51", 109, 130),   # victim -> attacker, overlaps end
        _flow("10.10.86.51", "10.10.173.153", 111, 120),   # after the window
        _flow("10.10.86.51", "10.10.1.1", 101, 102),       # other peer
    ])
    assert label_flows(flows, rules).tolist() == ["scan", "scan", BENIGN, BENIGN]


def test_cidr_attacker_and_wildcard_victim(rules):
    flows = pd.DataFrame([
        _flow("58.144.227.17", "10.10.216.55", 200.5, 200.5),
        _flow("58.144.228.17", "10.10.216.55", 200.5, 200.5),
        _flow("10.10.57.32", "6.93.26.252", 350, 351),
        _flow("10.10.57.32", "6.93.26.252", 500, 501),
    ])
    assert label_flows(flows, rules).tolist() == ["dos", BENIGN, "exfil", BENIGN]


def test_shared_labels_parse(shared_data):
    rules = read_labels(shared_data / "labels.csv")
    assert {r.attack for r in rules} >= {"scan", "dos", "c2"}
    assert all(r.start_ms < r.end_ms for r in rules)
