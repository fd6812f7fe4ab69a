"""Graph build + Leiden partition: benchmark on generated flows, and the dev nights.

Usage (from the repository root, with the venv's python):

    python bench/bench_graph.py generated --flows 100000 1000000 [--append docs/benchmarks.md]
    python bench/bench_graph.py dev-nights --warehouse /tmp/dev_warehouse \
        --labels ../shared/data/labels.csv [--train 2026-01-01 2026-01-02] [--test 2026-01-03]

``generated`` times ``build_graph`` and ``partition_flows`` (each forced to completion)
on synthetic nights: a LAN of clients talking to a few hub servers (a resolver, a proxy)
and many quiet servers, with bursts of near-identical flows, so relay, similarity and
host co-membership edges all occur. Peak memory is the driver's plus Python workers'
peak RSS (sampled) and the JVM's; the time ratio between sizes shows the scaling.

``dev-nights`` fits the signature statistics on the training nights, writes
``graph_vertices``, ``graph_edges`` and ``atoms`` for every night with
``pipeline.store.warehouse`` and reports, on the test night, atom size and density per
attack kind against benign flows.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pipeline.graph import build as graph  # noqa: E402
from pipeline.graph import partition, signatures
from pipeline.store import warehouse
from pipeline.store.schema import SPLT_LENGTH  # noqa: E402

log = logging.getLogger("bench_graph")


# ------------------------------------------------------------------- synthetic nights
def generated_flows(n_flows: int, seed: int = 0, hour_ms: int = 3_600_000) -> pd.DataFrame:
    """A synthetic night of ``n_flows`` flows (the columns ``build_graph`` reads)."""
    rng = np.random.default_rng(seed)
    n_clients = max(50, n_flows // 200)
    n_servers = max(20, n_flows // 50)
    clients = np.array([f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(n_clients)])
    servers = np.array([f"93.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(n_servers)])
    hubs = np.array(["10.255.0.53", "10.255.0.80"])  # a resolver and a proxy
    to_hub = rng.random(n_flows) < 0.3
    src = clients[rng.integers(0, n_clients, n_flows)]
    dst = np.where(to_hub, hubs[rng.integers(0, 2, n_flows)], servers[rng.integers(0, n_servers, n_flows)])
    # bursts: groups of 2-12 flows of one client with one template, within a few seconds
    burst = np.repeat(np.arange(n_flows), rng.integers(2, 13, n_flows))[:n_flows]
    base_time = rng.integers(0, hour_ms, n_flows)[burst]
    first_seen = base_time + rng.integers(0, 3_000, n_flows)
    src = src[burst]
    packets = np.clip(rng.poisson(12, n_flows)[burst] + rng.integers(-2, 3, n_flows), 1, None)
    templates = rng.integers(40, 1500, (n_flows, SPLT_LENGTH)) * rng.choice([-1, 1], (n_flows, SPLT_LENGTH))
    noise = rng.integers(-20, 21, (n_flows, SPLT_LENGTH))
    sizes = (templates[burst] + noise).astype(np.int32)
    lengths = np.minimum(packets, SPLT_LENGTH)
    return pd.DataFrame(
        {
            "flow_id": [f"{i:016x}" for i in rng.permutation(n_flows)],
            "src_ip": src,
            "dst_ip": dst,
            "first_seen_ms": first_seen.astype(np.int64),
            "bidirectional_packets": packets.astype(np.int64),
            "splt_signed_ps": [row[:k] for row, k in zip(sizes, lengths)],
        }
    )


class PeakMemory:
    """Samples the RSS of this process and its children (Python workers, JVM) every 0.5 s."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self._process] + self._process.children(recursive=True)
                for proc in procs:
                    try:
                        total += proc.memory_info().rss
                    except Exception:
                        pass
            except Exception:
                pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench_generated(spark, n_flows: int) -> dict:
    """Time and peak memory of build + partition on ``n_flows`` generated flows."""
    flows_pdf = generated_flows(n_flows)
    stats = signatures.fit_signature_normalisation(generated_flows(min(n_flows, 50_000), seed=1))
    schema = (
        "flow_id string, src_ip string, dst_ip string, first_seen_ms long, "
        "bidirectional_packets long, splt_signed_ps array<int>"
    )
    flows = spark.createDataFrame(flows_pdf, schema).repartition(8).localCheckpoint(eager=True)
    del flows_pdf
    with PeakMemory() as memory:
        start = time.monotonic()
        vertices, edges = graph.build_graph(flows, graph.GraphConfig(), stats)
        vertices = vertices.localCheckpoint(eager=True)
        edges = edges.localCheckpoint(eager=True)
        built = time.monotonic()
        atoms = partition.partition_flows(spark, vertices, edges, partition.PartitionConfig())
        atoms = atoms.localCheckpoint(eager=True)
        done = time.monotonic()
    counts = dict(edges.groupBy("relationship").count().collect())
    sizes = atoms.groupBy("atom_id").agg({"*": "count"}).toPandas().iloc[:, 1]
    return {
        "flows": n_flows,
        "edges": int(sum(counts.values())),
        "edges_by_relationship": {k: int(v) for k, v in sorted(counts.items())},
        "edge_bound": n_flows * (graph.GraphConfig().max_semantic_edges_per_flow + 2),
        "build_s": round(built - start, 1),
        "partition_s": round(done - built, 1),
        "total_s": round(done - start, 1),
        "peak_rss_gib": round(memory.peak_bytes / 2**30, 2),
        "atoms": int(len(sizes)),
        "largest_atom": int(sizes.max()),
    }


def machine() -> str:
    import psutil

    return (
        f"{platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs visible, Spark local[2], "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM (shared with other jobs)"
    )


def markdown_rows(results: list[dict]) -> str:
    lines = [
        f"### Graph build + partition, generated flows ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}. Command: `python bench/bench_graph.py generated --flows "
        + " ".join(str(r["flows"]) for r in results) + "`.",
        "",
        "| flows | edges (bound 12 x flows) | relay | similarity | build s | partition s | total s | peak RSS GiB | atoms | largest atom |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rel = r["edges_by_relationship"]
        lines.append(
            f"| {r['flows']:,} | {r['edges']:,} | {rel.get('relay', 0):,} | {rel.get('similarity', 0):,} "
            f"| {r['build_s']} | {r['partition_s']} | {r['total_s']} | {r['peak_rss_gib']} "
            f"| {r['atoms']:,} | {r['largest_atom']:,} |"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        lines += [
            "",
            f"Time ratio {b['flows']:,} / {a['flows']:,} flows: {b['total_s'] / a['total_s']:.1f}x "
            f"for {b['flows'] / a['flows']:.0f}x the flows.",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- dev nights
def run_dev_nights(spark, warehouse_dir: str, labels_path: str, train: list[str], test: list[str]) -> dict:
    from pipeline.evaluation.labels import label_flows, read_labels

    train_flows = None
    for date in train:
        df = warehouse.read_partition(spark, warehouse_dir, "flows", date=date)
        train_flows = df if train_flows is None else train_flows.unionByName(df)
    stats = signatures.fit_signature_normalisation(train_flows)
    stats_path = Path(warehouse_dir) / "graph_signature_stats.json"
    stats_path.write_text(json.dumps(stats, indent=1))
    log.info("signature stats (fitted on %s) -> %s", train, stats_path)

    report = {}
    for date in train + test:
        flows = warehouse.read_partition(spark, warehouse_dir, "flows", date=date)
        start = time.monotonic()
        vertices, edges = graph.build_graph(flows, graph.GraphConfig(), stats)
        warehouse.write_spark_partition(vertices, warehouse_dir, "graph_vertices", date=date)
        warehouse.write_spark_partition(edges, warehouse_dir, "graph_edges", date=date)
        vertices = warehouse.read_partition(spark, warehouse_dir, "graph_vertices", date=date)
        edges = warehouse.read_partition(spark, warehouse_dir, "graph_edges", date=date)
        atoms = partition.partition_flows(spark, vertices, edges, partition.PartitionConfig())
        warehouse.write_spark_partition(atoms, warehouse_dir, "atoms", date=date)
        log.info("%s: graph + atoms written in %.0f s", date, time.monotonic() - start)
        counts = dict(edges.groupBy("relationship").count().collect())
        report[date] = {"edges": {k: int(v) for k, v in counts.items()}}
    (Path(warehouse_dir) / "ATOMS_READY").touch()

    rules = read_labels(labels_path)
    for date in test:
        flows = warehouse.read_partition(spark, warehouse_dir, "flows", date=date).select(
            "flow_id", "src_ip", "dst_ip", "first_seen_ms", "last_seen_ms"
        ).toPandas()
        atoms = warehouse.read_arrow_partition(warehouse_dir, "atoms", date=date).to_pandas()
        flows["attack"] = label_flows(flows, rules)
        joined = flows.merge(atoms, on="flow_id")
        report[date]["dichotomy"] = dichotomy_table(joined)
    return report


def dichotomy_table(joined: pd.DataFrame) -> list[dict]:
    """Per attack kind (and benign): flows, median / mean atom size and density."""
    rows = []
    for kind, group in joined.groupby("attack"):
        rows.append(
            {
                "kind": kind,
                "flows": int(len(group)),
                "atoms": int(group["atom_id"].nunique()),
                "median_atom_size": float(group["atom_size"].median()),
                "mean_atom_size": round(float(group["atom_size"].mean()), 1),
                "median_density": round(float(group["atom_density"].median()), 3),
                "mean_density": round(float(group["atom_density"].mean()), 3),
                "share_in_singletons": round(float((group["atom_size"] == 1).mean()), 3),
            }
        )
    return sorted(rows, key=lambda r: (r["kind"] != "benign", r["kind"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    gen = sub.add_parser("generated")
    gen.add_argument("--flows", type=int, nargs="+", default=[100_000, 1_000_000])
    gen.add_argument("--append", help="markdown file to append the table to")
    dev = sub.add_parser("dev-nights")
    dev.add_argument("--warehouse", default="/tmp/dev_warehouse")
    dev.add_argument("--labels", default=str(REPO_ROOT.parent / "shared" / "data" / "labels.csv"))
    dev.add_argument("--train", nargs="+", default=["2026-01-01", "2026-01-02"])
    dev.add_argument("--test", nargs="+", default=["2026-01-03"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from pipeline.spark import get_spark

    # the session's own metastore/checkpoints live apart from the data warehouse, so this
    # never contends for another job's Derby metastore lock
    spark = get_spark("/tmp/bench_graph_session", overrides={"spark.master": "local[2]"})
    if args.mode == "generated":
        results = []
        for n in args.flows:
            results.append(bench_generated(spark, n))
            log.info("result: %s", json.dumps(results[-1]))
        table = markdown_rows(results)
        print(table)
        if args.append:
            with open(args.append, "a") as handle:
                handle.write("\n" + table)
        else:
            from bench.benchlib import replace_section, stamp

            replace_section("Graph and partition: latest make bench run",
                            f"{stamp()}\n\nCommand: `python bench/bench_graph.py generated` (part of "
                            f"`make bench`); analysis in the section above.\n\n{table}")
    else:
        report = run_dev_nights(spark, args.warehouse, args.labels, args.train, args.test)
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
