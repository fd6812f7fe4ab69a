"""RearView throughput on CPU: screening flows/s and refinement flows/s on generated flows.

Usage::

    .venv/bin/python bench/bench_rearview.py --flows 1000000 [--train-flows 20000] [--device cpu]

Trains a small RearView model on generated benign flows (few epochs: throughput does
not depend on training length), then times, on ``--flows`` generated flows in start
order:

* screening: feature normalisation + condition lookup + conditional VAE + KDE
  probabilities (``pipeline.detectors.rearview.inference.screen``), one pass;
* refinement: FIFO windows -> session graphs -> anomaly-weighted GraphSAGE edge
  embeddings -> classifier score, for every ensemble member (``stream_windows`` once,
  ``embed_windows`` per member, +
  ``ensemble_refined``).

Prints one JSON line with flows/s and ms per flow (the paper claims < 2 ms per flow).

Detection quality on a warehouse's real flows (labels read only to measure)::

    .venv/bin/python bench/bench_rearview.py --evaluate-dev /tmp/dev_warehouse [--config '{"classifier": "cblof"}']

trains once, scores the test night with Spark under the configured ``decision_rule``,
then re-decides the same scored flows under every decision variant (``VARIANTS``: they
differ only in thresholds calibrated on the benign validation flows, not in training).

Generated flows: a LAN of clients talking to a few dozen services; per-service
log-normal sizes and timings (``synthetic_flows``, also used by the tests).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.detectors.features import FEATURE_COLUMNS

log = logging.getLogger("bench_rearview")
QUALITY_HEADING = "### Detection quality"
"""A subsection of the RearView section written by hand (dev-archive evaluation); kept
when the benchmark rewrites the section."""
VARIANTS = {
    "paper": {"decision_rule": "paper"},
    "calibrated": {"decision_rule": "calibrated", "novelty_prior": False},
    "calibrated_novelty": {"decision_rule": "calibrated", "novelty_prior": True},
    "fused": {"decision_rule": "fused", "novelty_prior": False},
    "fused_novelty": {"decision_rule": "fused", "novelty_prior": True},
}
"""Decision variants re-applied to one trained artifact (``RearViewConfig`` overrides)."""


def synthetic_flows(num_flows: int, seed: int = 0, start_ms: int = 1_767_225_600_000,
                    duration_ms: int = 3_600_000, num_clients: int = 40, num_services: int = 12) -> pd.DataFrame:
    """``num_flows`` benign-looking flows with every ``pipeline.store.schema.FLOWS`` column the
    detectors read (identity, times, ``FEATURE_COLUMNS``). Deterministic in ``seed``.

    Each service (server IP, port, protocol) has its own log-normal packet count, packet
    size and inter-arrival time; clients pick services with Zipf-like popularity.
    """
    rng = np.random.default_rng(seed)
    service_rng = np.random.default_rng(1234)          # same services for every seed
    servers = np.array([f"10.1.0.{i + 1}" for i in range(num_services)])
    ports = service_rng.choice([53, 80, 123, 443, 1883, 8080, 8883, 5353], size=num_services)
    protocols = np.where(np.isin(ports, [53, 123, 5353]), 17, 6)
    mean_packets = service_rng.uniform(1.0, 3.5, size=num_services)
    mean_size = service_rng.uniform(4.0, 7.0, size=num_services)
    mean_piat = service_rng.uniform(1.0, 6.0, size=num_services)
    popularity = 1.0 / np.arange(1, num_services + 1)
    service = rng.choice(num_services, size=num_flows, p=popularity / popularity.sum())
    client = rng.integers(0, num_clients, size=num_flows)
    first = start_ms + np.sort(rng.integers(0, duration_ms, size=num_flows))
    packets = np.maximum(1, np.round(np.exp(rng.normal(mean_packets[service], 0.3)))).astype(np.int64)
    size = np.exp(rng.normal(mean_size[service], 0.2))
    piat = np.exp(rng.normal(mean_piat[service], 0.3))
    duration = piat * (packets - 1)
    frame = {
        "flow_id": [f"{i:016x}" for i in rng.permutation(num_flows) + seed * 10**9],
        "community_id": None,
        "src_ip": np.char.add("10.0.0.", (client + 2).astype(str)),
        "dst_ip": servers[service],
        "src_port": rng.integers(1024, 65535, size=num_flows).astype(np.int32),
        "dst_port": ports[service].astype(np.int32),
        "protocol": protocols[service].astype(np.int16),
        "first_seen_ms": first.astype(np.int64),
        "last_seen_ms": (first + duration).astype(np.int64),
    }
    for column in FEATURE_COLUMNS:
        frame[column] = np.zeros(num_flows)
    up = np.maximum(1, packets // 2)
    for direction, count in (("bidirectional", packets), ("src2dst", up), ("dst2src", packets - up)):
        frame[f"{direction}_packets"] = count
        frame[f"{direction}_bytes"] = np.round(count * size)
        frame[f"{direction}_duration_ms"] = duration
        for stat, scale in (("min_ps", 0.8), ("mean_ps", 1.0), ("max_ps", 1.2), ("stddev_ps", 0.1)):
            frame[f"{direction}_{stat}"] = size * scale * (count > 0)
        for stat, scale in (("min_piat_ms", 0.5), ("mean_piat_ms", 1.0), ("max_piat_ms", 2.0), ("stddev_piat_ms", 0.3)):
            frame[f"{direction}_{stat}"] = piat * scale * (count > 1)
    frame["bidirectional_syn_packets"] = np.where(protocols[service] == 6, 2, 0)
    frame["bidirectional_ack_packets"] = np.where(protocols[service] == 6, packets - 1, 0)
    return pd.DataFrame(frame)


def evaluate_dev(warehouse: Path, labels: Path, out: Path, train_dates: list[str], test_date: str,
                 config_overrides: dict, keep: Path | None = None) -> dict:
    """Train on ``train_dates`` of a warehouse's flows, score ``test_date``, measure.

    Labels are read only after scoring, for the metrics (stage 1 alone: ``p > 0.95`` and
    ROC AUC on ``p``; stages 1+2+3: ``is_anomaly`` and ``score``; refined score alone
    above the validation threshold; every ``VARIANTS`` decision; the novelty baseline:
    triplet never seen in training). ``keep``: also copy the artifact and the labelled
    scored flows there.
    """
    from pyspark.sql import functions as F
    from sklearn.metrics import roc_auc_score

    from pipeline.detectors import rearview as rv
    from pipeline.detectors.rearview import conditions, decision, inference
    from pipeline.detectors.rearview.windows import eviction_count
    from pipeline.evaluation.labels import BENIGN, label_flows, read_labels
    from pipeline.evaluation.metrics import binary_metrics, per_kind_detection
    from pipeline.spark import get_spark
    from pipeline.store import warehouse as wh

    spark = get_spark(out / "spark", overrides={"spark.master": "local[2]"})
    artifact = out / "artifact"
    artifact.mkdir(parents=True, exist_ok=True)
    config = rv.RearViewConfig(**config_overrides)
    train = None
    for date in train_dates:
        frame = wh.read_partition(spark, warehouse, "flows", date=date).withColumn("date", F.lit(date))
        train = frame if train is None else train.unionByName(frame)
    started = time.perf_counter()
    training = rv.train_rearview(spark, train, config, artifact)
    training_s = time.perf_counter() - started
    test = wh.read_partition(spark, warehouse, "flows", date=test_date)
    started = time.perf_counter()
    scores = rv.score_rearview(spark, test, artifact, "dev").toPandas()
    scoring_s = time.perf_counter() - started
    flows = test.select("flow_id", "src_ip", "dst_ip", "first_seen_ms", "last_seen_ms").toPandas()
    flows["kind"] = label_flows(flows, read_labels(labels)).to_numpy()
    merged = flows.merge(scores.drop(columns=["src_ip", "dst_ip", "first_seen_ms", "last_seen_ms"]), on="flow_id")
    attack = (merged["kind"] != BENIGN).to_numpy()
    p, refined = merged["screening_probability"].to_numpy(), merged["refined_score"].to_numpy()
    rules = {
        "stage1": (p, p > config.screening_alarm_p),
        "stage123": (merged["score"].to_numpy(), merged["is_anomaly"].to_numpy()),
    }
    art = inference.load_artifacts(str(artifact))
    replay = conditions.order_flows(merged)
    triggered = pd.Series(decision.triggered_windows(
        replay["screening_probability"].to_numpy(), art.config.queue_size,
        eviction_count(art.config.queue_size, art.config.evict_fraction), art.config.suspicious_p,
    ), index=replay["flow_id"]).reindex(merged["flow_id"]).to_numpy()
    cells = conditions.fallback_cells(art.vocab, merged, conditions.unseen_triplets(art.seen_triplets, merged))
    for name, overrides in VARIANTS.items():
        variant = dataclasses.replace(art.config, **overrides)
        score, _, flagged = decision.decide_flows(p, cells, refined, triggered, art.calibration, variant)
        rules["variant_" + name] = (score, flagged)
    novel = ~merged["triplet"].isin(list(art.seen_triplets)).to_numpy()
    rules["novelty_baseline"] = (novel.astype(float), novel)
    rules["refined_only"] = (refined, refined > art.calibration.refined_threshold)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        merged.assign(cell=cells, triggered=triggered).to_parquet(keep / "scored.parquet")
        shutil.copytree(artifact, keep / "artifact", dirs_exist_ok=True)
    result = {"training": training, "training_s": training_s, "scoring_s": scoring_s,
              "config": dataclasses.asdict(config),
              "test_cell_counts": np.bincount(cells, minlength=conditions.NUM_FALLBACK_CELLS).tolist()}
    for name, (score, flagged) in rules.items():
        result[name] = binary_metrics(attack, score, flagged)
        result[name + "_per_kind"] = per_kind_detection(merged["kind"].to_numpy(), flagged)
    benign = merged["kind"] == BENIGN
    result["roc_auc_per_kind"] = {
        kind: {name: roc_auc_score(np.r_[np.zeros(benign.sum()), np.ones((merged["kind"] == kind).sum())],
                                   np.r_[values[benign], values[merged["kind"] == kind]])
               for name, values in (("screening", p), ("refined", refined))}
        for kind in sorted(set(merged["kind"])) if kind != BENIGN
    }
    spark.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--train-flows", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--evaluate-dev", type=Path, metavar="WAREHOUSE",
                        help="instead: train on --train-dates of this warehouse, score --test-date, measure")
    parser.add_argument("--labels", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/labels.csv")
    parser.add_argument("--train-dates", default="2026-01-01,2026-01-02")
    parser.add_argument("--test-date", default="2026-01-03")
    parser.add_argument("--config", default="{}", help="JSON overrides of RearViewConfig (both modes)")
    parser.add_argument("--keep", type=Path, help="with --evaluate-dev: keep artifact + scored flows here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.evaluate_dev:
        with tempfile.TemporaryDirectory(prefix="eval-rearview-") as tmp:
            result = evaluate_dev(args.evaluate_dev, args.labels, Path(tmp), args.train_dates.split(","),
                                  args.test_date, json.loads(args.config), args.keep)
        print(json.dumps(result, indent=1))
        return

    import torch

    from pipeline.detectors import rearview as rv
    from pipeline.detectors.rearview import conditions, decision, inference, session
    from pipeline.detectors.rearview.windows import eviction_count
    from pipeline.spark import get_spark

    config = rv.RearViewConfig(**{"vae_epochs": 3, "sage_epochs": 5, "device": args.device,
                                  **json.loads(args.config)})
    with tempfile.TemporaryDirectory(prefix="bench-rearview-") as tmp:
        spark = get_spark(Path(tmp) / "spark", overrides={"spark.master": "local[2]"})
        train = synthetic_flows(args.train_flows, seed=1)
        train["date"] = "2026-01-01"
        out = Path(tmp) / "artifact"
        out.mkdir()
        rv.train_rearview(spark, spark.createDataFrame(train), config, out)
        spark.stop()
        art = inference.load_artifacts(str(out))

        flows = conditions.order_flows(synthetic_flows(args.flows, seed=2))
        started = time.perf_counter()
        _, p, mu = inference.screen(flows, art)
        screening_s = time.perf_counter() - started

        started = time.perf_counter()
        edges = session.edge_features(mu, conditions.unseen_triplets(art.seen_triplets, flows))
        evict = eviction_count(config.queue_size, config.evict_fraction)
        windows = session.stream_windows(flows["src_ip"].to_numpy(), flows["dst_ip"].to_numpy(), edges, p,
                                    config.queue_size, evict, **session.burst_inputs(flows, art.config))
        decision.ensemble_refined(art.members, [
            session.embed_windows(windows, len(flows), member.encoder, config.queue_size, evict)
            for member in art.members])
        refinement_s = time.perf_counter() - started
    result = {
        "flows": args.flows, "device": args.device, "torch_threads": torch.get_num_threads(),
        "screening_flows_per_s": args.flows / screening_s,
        "screening_ms_per_flow": 1000 * screening_s / args.flows,
        "refinement_flows_per_s": args.flows / refinement_s,
        "refinement_ms_per_flow": 1000 * refinement_s / args.flows,
        "total_ms_per_flow": 1000 * (screening_s + refinement_s) / args.flows,
    }
    print(json.dumps(result))
    if not args.no_docs:
        write_docs_section(result)


def write_docs_section(result: dict) -> None:
    """Replace the ``## RearView`` section of docs/benchmarks.md with ``result``."""
    try:
        import benchlib
    except ImportError:  # imported as bench.bench_rearview
        from bench import benchlib
    import os

    kept = ""
    if benchlib.BENCHMARKS_MD.exists():
        text = benchlib.BENCHMARKS_MD.read_text()
        section_start = text.find("\n## RearView\n")
        if section_start >= 0:
            section_end = text.find("\n## ", section_start + 1)
            section = text[section_start:section_end if section_end >= 0 else len(text)]
            start = section.find(QUALITY_HEADING)
            if start >= 0:
                kept = "\n" + section[start:].strip() + "\n"
    body = f"""{benchlib.stamp()} Load average at the end: {os.getloadavg()[0]:.1f}.

Command: `.venv/bin/python bench/bench_rearview.py --flows {result['flows']}` (generated flows,
{result['device']}, {result['torch_threads']} torch thread(s), one process).

| stage | flows/s | ms per flow |
|---|---:|---:|
| screening (features, conditions, conditional VAE, KDE) | {result['screening_flows_per_s']:,.0f} | {result['screening_ms_per_flow']:.4f} |
| refinement (FIFO graphs, GraphSAGE edge embeddings, classifier; every ensemble member) | {result['refinement_flows_per_s']:,.0f} | {result['refinement_ms_per_flow']:.4f} |
| both | {result['flows'] / (result['flows'] * result['total_ms_per_flow'] / 1000):,.0f} | {result['total_ms_per_flow']:.4f} |

The paper claims under 2 ms per flow; screening is the cheap first stage.
""" + kept
    benchlib.replace_section("RearView", body)


if __name__ == "__main__":
    main()
