"""RearView throughput on CPU: screening flows/s and refinement flows/s on generated flows.

Usage::

    .venv/bin/python bench/bench_rearview.py --flows 1000000 [--train-flows 20000] [--device cpu]

Trains a small RearView model on generated benign flows (few epochs: throughput does
not depend on training length), then times, on ``--flows`` generated flows in start
order:

* screening: feature normalisation + condition lookup + conditional VAE + KDE
  probabilities (``pipeline.rearview_stage.screen``), one pass;
* refinement: FIFO windows -> session graphs -> anomaly-weighted GraphSAGE edge
  embeddings -> classifier score (``refine_stream`` + ``refined_scores``).

Prints one JSON line with flows/s and ms per flow (the paper claims < 2 ms per flow).
Generated flows: a LAN of clients talking to a few dozen services; per-service
log-normal sizes and timings (``synthetic_flows``, also used by the tests).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.features import FEATURE_COLUMNS

log = logging.getLogger("bench_rearview")


def synthetic_flows(num_flows: int, seed: int = 0, start_ms: int = 1_767_225_600_000,
                    duration_ms: int = 3_600_000, num_clients: int = 40, num_services: int = 12) -> pd.DataFrame:
    """``num_flows`` benign-looking flows with every ``pipeline.schema.FLOWS`` column the
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--train-flows", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from models.rearview_training import embed_edges  # noqa: F401  (import cost outside timing)
    from pipeline import rearview_stage as rv
    from pipeline.rearview_windows import eviction_count
    from pipeline.spark import get_spark

    config = rv.RearViewConfig(vae_epochs=3, sage_epochs=5, device=args.device)
    with tempfile.TemporaryDirectory(prefix="bench-rearview-") as tmp:
        spark = get_spark(Path(tmp) / "spark", overrides={"spark.master": "local[2]"})
        train = synthetic_flows(args.train_flows, seed=1)
        train["date"] = "2026-01-01"
        out = Path(tmp) / "artifact"
        out.mkdir()
        rv.train_rearview(spark, spark.createDataFrame(train), config, out)
        spark.stop()
        art = rv.load_artifacts(str(out))

        flows = rv.order_flows(synthetic_flows(args.flows, seed=2))
        started = time.perf_counter()
        _, p, mu = rv.screen(flows, art)
        screening_s = time.perf_counter() - started

        started = time.perf_counter()
        z = rv.refine_stream(flows["src_ip"].to_numpy(), flows["dst_ip"].to_numpy(), mu, p, art.encoder,
                             config.queue_size, eviction_count(config.queue_size, config.evict_fraction))
        rv.refined_scores(art.classifier, z)
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

    body = f"""{benchlib.stamp()} Load average at the end: {os.getloadavg()[0]:.1f}.

Command: `.venv/bin/python bench/bench_rearview.py --flows {result['flows']}` (generated flows,
{result['device']}, {result['torch_threads']} torch thread(s), one process).

| stage | flows/s | ms per flow |
|---|---:|---:|
| screening (features, conditions, conditional VAE, KDE) | {result['screening_flows_per_s']:,.0f} | {result['screening_ms_per_flow']:.4f} |
| refinement (FIFO graphs, GraphSAGE edge embeddings, classifier) | {result['refinement_flows_per_s']:,.0f} | {result['refinement_ms_per_flow']:.4f} |
| both | {result['flows'] / (result['flows'] * result['total_ms_per_flow'] / 1000):,.0f} | {result['total_ms_per_flow']:.4f} |

The paper claims under 2 ms per flow; screening is the cheap first stage.
"""
    benchlib.replace_section("RearView", body)


if __name__ == "__main__":
    main()
