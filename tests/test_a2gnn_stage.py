"""A2GNN stage: train through TorchDistributor on warehouse nights, then score a night."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models.a2gnn_training import A2GNNConfig
from pipeline.detectors.a2gnn import score_a2gnn, train_a2gnn
from pipeline.detectors.features import FEATURE_COLUMNS
from pipeline.store import schema
from pipeline.store.warehouse import read_partition, write_arrow_partition

PROFILES = 6
INTEGER_COLUMNS = {f.name for f in schema.FLOWS if pa.types.is_integer(f.type)}


def synthetic_night(seed: int, benign_atoms: int = 120, attack_flows: int = 0):
    """``(flows, atoms, graph_edges)`` Arrow tables of one night.

    Benign flows come in small atoms (1-5 flows chained by relay edges) drawn from a few
    traffic profiles; attack flows form one dense atom with a profile never seen benign.
    Returns the tables and the set of attack flow ids.
    """
    rng = np.random.default_rng(seed)
    profiles = np.random.default_rng(99).uniform(0.0, 8.0, size=(PROFILES + 1, len(FEATURE_COLUMNS)))
    sizes = list(rng.integers(1, 6, benign_atoms)) + ([attack_flows] if attack_flows else [])
    rows, atoms, edges, attack_ids = [], [], [], set()
    flow_number = 0
    for atom_number, size in enumerate(sizes):
        attack = attack_flows and atom_number == len(sizes) - 1
        profile = PROFILES if attack else rng.integers(0, PROFILES)
        members = []
        for _ in range(size):
            flow_id = f"{seed:02d}{flow_number:014x}"
            flow_number += 1
            values = np.expm1(profiles[profile] + 0.2 * rng.normal(size=len(FEATURE_COLUMNS)).clip(-1, 1))
            row = {c: (round if c in INTEGER_COLUMNS else float)(max(v, 0.0))
                   for c, v in zip(FEATURE_COLUMNS, values)}
            row.update(flow_id=flow_id, src_ip=f"10.0.{seed}.{atom_number % 250}", dst_ip="10.0.9.9",
                       src_port=40000 + flow_number, dst_port=443, protocol=6,
                       first_seen_ms=1_767_225_600_000 + flow_number, last_seen_ms=1_767_225_600_500 + flow_number)
            rows.append(row)
            members.append(flow_id)
            if attack:
                attack_ids.add(flow_id)
        pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]] if attack \
            else list(zip(members, members[1:]))
        for a, b in pairs:
            edges.append({"src": f"flow:{a}", "dst": f"flow:{b}", "relationship": "relay", "weight": 0.5})
        internal = len(pairs)
        density = 2 * internal / (size * (size - 1)) if size > 1 else 0.0
        for flow_id in members:
            atoms.append({"flow_id": flow_id, "atom_id": f"{seed}-{atom_number}", "component_id": "c",
                          "atom_size": size, "atom_internal_edges": internal, "atom_density": density,
                          "atom_internal_weight": 0.5 * internal})
    # one cross-atom edge, which the isolation mask must ignore
    edges.append({"src": f"flow:{rows[0]['flow_id']}", "dst": f"flow:{rows[-1]['flow_id']}",
                  "relationship": "similarity", "weight": 0.9})
    return (schema.conform("flows", pa.Table.from_pylist(rows)),
            schema.conform("atoms", pa.Table.from_pylist(atoms)),
            schema.conform("graph_edges", pa.Table.from_pylist(edges)), attack_ids)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("a2gnn_warehouse")
    attack_ids = set()
    for date, seed, attack in (("2026-01-01", 1, 0), ("2026-01-02", 2, 0), ("2026-01-03", 3, 30)):
        flows, atoms, edges, ids = synthetic_night(seed, attack_flows=attack)
        attack_ids |= ids
        for table, data in (("flows", flows), ("atoms", atoms), ("graph_edges", edges)):
            write_arrow_partition(data, root, table, date=date)
    return root, attack_ids


def night(spark, root, date):
    return {"date": date, **{key: read_partition(spark, root, table, date=date)
                             for key, table in (("flows", "flows"), ("atoms", "atoms"), ("edges", "graph_edges"))}}


TINY = A2GNNConfig(hidden=16, heads=2, out_dim=8, epochs=3, atoms_per_batch=64, seed=5, cpu_threads=1,
                   calibration="holdout_atoms")


@pytest.fixture(scope="module")
def trained(spark, warehouse, tmp_path_factory):
    root, _ = warehouse
    out = tmp_path_factory.mktemp("a2gnn_artifact")
    nights = [night(spark, root, d) for d in ("2026-01-01", "2026-01-02")]
    return out, train_a2gnn(spark, nights, TINY, out)


def test_training_through_torchdistributor_writes_a_code_free_artifact(trained):
    out, metrics = trained

    assert sorted(p.name for p in out.iterdir()) == [
        "anchors.safetensors", "config.json", "metrics.json", "normalisation.json",
        "threshold.json", "weights.safetensors"]
    assert metrics["train_dates"] == ["2026-01-01", "2026-01-02"]
    # held-out calibration keeps atoms out of training, then adds their anchors
    assert metrics["num_anchors"] == metrics["train_atoms"] + metrics["calibration_atoms"]
    assert metrics["train_atoms"] > metrics["calibration_atoms"] > 0
    assert metrics["flow_threshold"] >= metrics["train_score_quantiles"]["0.95"]
    assert metrics["threshold"] == 1.0 and metrics["atom_threshold"] > 0


def test_scoring_a_night_gives_one_flow_scores_row_per_flow_with_anomalies_above_threshold(spark, warehouse, trained):
    root, attack_ids = warehouse
    out, metrics = trained
    test = night(spark, root, "2026-01-03")

    scores = score_a2gnn(spark, test["flows"], test["atoms"], test["edges"], out, "v-test").toPandas()

    assert list(scores.columns) == [f.name for f in schema.FLOW_SCORES]
    assert len(scores) == test["flows"].count() == scores["flow_id"].nunique()
    assert (scores["is_anomaly"] == (scores["score"] > scores["threshold"])).all()
    assert (scores["threshold"] == metrics["threshold"]).all()
    assert (scores["anchor_distance"] >= 0).all()
    attack = scores["flow_id"].isin(attack_ids)
    assert scores.loc[attack, "atom_size"].eq(30).all()
    assert scores.loc[attack, "score"].min() > scores.loc[~attack, "score"].median()
    assert scores.loc[attack, "is_anomaly"].mean() > 0.9


def test_scoring_the_same_night_twice_gives_identical_scores(spark, warehouse, trained):
    root, _ = warehouse
    out, _ = trained
    test = night(spark, root, "2026-01-03")

    first = score_a2gnn(spark, test["flows"], test["atoms"], test["edges"], out, "v").toPandas()
    second = score_a2gnn(spark, test["flows"], test["atoms"], test["edges"], out, "v").toPandas()

    merged = first.merge(second, on="flow_id")
    assert len(merged) == len(first)
    np.testing.assert_array_equal(merged["score_x"].to_numpy(), merged["score_y"].to_numpy())


def test_a_flow_unknown_to_the_atoms_table_is_scored_as_its_own_atom_with_null_atom_id(warehouse, trained):
    from pipeline.detectors.a2gnn.scoring import load_artifact, score_frame
    from pipeline.store.warehouse import read_arrow_partition

    root, _ = warehouse
    out, _ = trained
    flows = read_arrow_partition(root, "flows", date="2026-01-03").to_pandas().head(5)
    frame = flows.assign(atom_id=None, atom_size=None, atom_density=None,
                         atom_key=["solo:" + f for f in flows["flow_id"]], neighbours=None)

    scores = score_frame(frame, load_artifact(out), "v")

    assert scores["atom_id"].isna().all()
    assert scores["atom_size"].tolist() == [1] * 5
    assert (scores["score"] >= 0).all() and scores["nearest_anchor"].notna().all()


def test_an_ensemble_flags_a_flow_when_most_members_put_it_above_their_own_threshold(spark, warehouse,
                                                                                       tmp_path):
    from models.a2gnn_training import member_seed
    from pipeline.detectors.a2gnn.scoring import load_artifact

    root, attack_ids = warehouse
    nights = [night(spark, root, d) for d in ("2026-01-01", "2026-01-02")]
    metrics = train_a2gnn(spark, nights, A2GNNConfig(**{**TINY.to_dict(), "ensemble_size": 3}), tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["member1", "member2"]
    assert [m["seed"] for m in metrics["members"]] == [member_seed(TINY.seed, k) for k in range(3)]
    artifact = load_artifact(tmp_path)
    assert len(artifact["members"]) == 3
    assert not np.array_equal(artifact["members"][0]["anchors"], artifact["members"][1]["anchors"])
    test = night(spark, root, "2026-01-03")
    scores = score_a2gnn(spark, test["flows"], test["atoms"], test["edges"], tmp_path, "v").toPandas()
    assert (scores["threshold"] == 1.0).all()
    assert (scores["is_anomaly"] == (scores["score"] > 1.0)).all()
    assert scores.loc[scores["flow_id"].isin(attack_ids), "is_anomaly"].mean() > 0.9


def test_the_ensemble_score_is_the_median_of_each_members_score_over_its_threshold():
    from models.a2gnn_training import ensemble_scores

    scores = [np.array([1.0, 4.0]), np.array([3.0, 1.0]), np.array([10.0, 10.0])]
    thresholds = [2.0, 2.0, 5.0]   # ratios: [0.5, 2], [1.5, 0.5], [2, 2]
    np.testing.assert_allclose(ensemble_scores(scores, thresholds), [1.5, 2.0])
