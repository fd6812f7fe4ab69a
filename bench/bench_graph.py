"""Graph build + Leiden partition: benchmark on generated flows, and the dev nights.

Usage (from the repository root, with the venv's python):

    python bench/bench_graph.py generated --flows 100000 1000000 [--caps 0 100000] [--append docs/benchmarks.md]
    python bench/bench_graph.py dev-nights --warehouse /tmp/dev_warehouse \
        --labels ../shared/data/labels.csv [--train 2026-01-01 2026-01-02] [--test 2026-01-03]
    python bench/bench_graph.py slices --warehouse /work/wh/A --labels ../shared/data/labels.csv \
        --caps 100 200 [--dates 2026-01-01 2026-01-02 2026-01-03]

``generated`` times ``build_graph`` and ``partition_flows`` (each forced to completion)
on synthetic nights: a LAN of clients talking to a few hub servers (a resolver, a proxy)
and many quiet servers, with bursts of near-identical flows, so relay, similarity and
host co-membership edges all occur. Peak memory is the driver's plus Python workers'
peak RSS (sampled) and the JVM's; the time ratio between sizes shows the scaling.

With ``--caps`` each night's graph is built once and partitioned once per
``PartitionConfig.max_leiden_flows`` value (0: no cap), in the same session, so the
partition times compare; atoms are compared with the first cap's (adjusted Rand index).

``dev-nights`` fits the signature statistics on the training nights, writes
``graph_vertices``, ``graph_edges`` and ``atoms`` for every night with
``pipeline.store.warehouse`` and reports, on the test night, atom size and density per
attack kind against benign flows.

``slices`` partitions a warehouse's stored graphs with the cap off and with each of
``--caps`` (nothing is written) and compares the atoms: adjusted Rand index, share of
flows whose atom is unchanged, atom sizes, and per labelled attack (a ``labels.csv`` row)
the share of its flows in its largest atom.
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
    """Samples the RSS of this process and its children (Python workers, JVM) every 0.5 s;
    ``peak_worker_bytes``: the largest RSS of one Python worker (a Leiden task's)."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak_bytes = 0
        self.peak_worker_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self._process] + self._process.children(recursive=True)
                for proc in procs:
                    try:
                        rss = proc.memory_info().rss
                        total += rss
                        if proc is not self._process and proc.name().startswith("python"):
                            self.peak_worker_bytes = max(self.peak_worker_bytes, rss)
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


def bench_generated(spark, n_flows: int, caps: list[int] | None = None) -> list[dict]:
    """Time and peak memory of build + partition on ``n_flows`` generated flows: one row
    per ``max_leiden_flows`` in ``caps`` (None: the default config), same built graph."""
    import dataclasses

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
        build_s = time.monotonic() - start
    build_peak = memory.peak_bytes
    counts = dict(edges.groupBy("relationship").count().collect())
    configs = [partition.PartitionConfig()] if caps is None else [
        dataclasses.replace(partition.PartitionConfig(), max_leiden_flows=cap) for cap in caps]
    rows, reference = [], None
    for config in configs:
        with PeakMemory() as memory:
            start = time.monotonic()
            atoms = partition.partition_flows(spark, vertices, edges, config, flows)
            atoms = atoms.localCheckpoint(eager=True)
            partition_s = time.monotonic() - start
        table = atoms.select("flow_id", "atom_id", "component_id").toPandas()
        atoms.unpersist()
        sizes = table.groupby("atom_id").size()
        components = table.groupby("component_id").size().to_numpy()
        agreement = None
        if reference is None:
            reference = table
        else:
            agreement = atom_agreement(reference, table)
        rows.append({
            "flows": n_flows,
            "max_leiden_flows": config.max_leiden_flows,
            "edges": int(sum(counts.values())),
            "edges_by_relationship": {k: int(v) for k, v in sorted(counts.items())},
            "edge_bound": n_flows * (graph.GraphConfig().max_semantic_edges_per_flow + 2),
            "build_s": round(build_s, 1),
            "partition_s": round(partition_s, 1),
            "total_s": round(build_s + partition_s, 1),
            "peak_rss_gib": round(max(build_peak, memory.peak_bytes) / 2**30, 2),
            "partition_peak_rss_gib": round(memory.peak_bytes / 2**30, 2),
            "partition_peak_worker_mib": round(memory.peak_worker_bytes / 2**20),
            "atoms": int(len(sizes)),
            "largest_atom": int(sizes.max()),
            "largest_component": int(components.max()),
            "largest_leiden_unit": largest_leiden_unit(components, config.max_leiden_flows),
            "vs_first_cap": agreement,
        })
    return rows


def largest_leiden_unit(component_sizes: np.ndarray, cap: int) -> int:
    """Flows of the largest Leiden call: a component, or one time slice of one above ``cap``
    (``ceil(n / k)`` flows with ``k = ceil(n / cap)``, ``partition.time_slices``)."""
    n = np.asarray(component_sizes, np.int64)
    if cap > 0:
        k = -(-n // cap)
        n = np.where(n > cap, -(-n // k), n)
    return int(n.max()) if len(n) else 0


def atom_agreement(before: pd.DataFrame, after: pd.DataFrame) -> dict:
    """Adjusted Rand index of two atom assignments (``flow_id``, ``atom_id``) of the same
    flows, and the share of flows whose atom (as a set of flows) is unchanged."""
    from sklearn.metrics import adjusted_rand_score

    joined = before[["flow_id", "atom_id"]].merge(after[["flow_id", "atom_id"]], on="flow_id", suffixes=("_a", "_b"))
    if len(joined) != len(before) or len(joined) != len(after):
        raise ValueError("the two atom tables do not cover the same flows")
    pair = joined.groupby(["atom_id_a", "atom_id_b"])["flow_id"].transform("size")
    size_a = joined.groupby("atom_id_a")["flow_id"].transform("size")
    size_b = joined.groupby("atom_id_b")["flow_id"].transform("size")
    unchanged = (pair == size_a) & (pair == size_b)
    return {
        "adjusted_rand": round(float(adjusted_rand_score(joined["atom_id_a"], joined["atom_id_b"])), 4),
        "flows_in_unchanged_atoms": round(float(unchanged.mean()), 4),
    }


def machine() -> str:
    import psutil

    return (
        f"{platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs visible, Spark local[2], "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM (shared with other jobs)"
    )


def markdown_rows(results: list[dict]) -> str:
    caps = sorted({r["max_leiden_flows"] for r in results})
    lines = [
        f"### Graph build + partition, generated flows ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}. Command: `python bench/bench_graph.py generated --flows "
        + " ".join(str(f) for f in dict.fromkeys(r["flows"] for r in results))
        + (" --caps " + " ".join(str(r["max_leiden_flows"]) for r in results if r["flows"] == results[0]["flows"])
           if len(caps) > 1 else "") + "`.",
        "",
        "| flows | max_leiden_flows | edges (bound 12 x flows) | relay | similarity | build s | partition s "
        "| total s | peak RSS GiB | largest worker MiB | atoms | largest atom | largest component "
        "| largest Leiden call | ARI vs first cap |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rel = r["edges_by_relationship"]
        agreement = r.get("vs_first_cap")
        lines.append(
            f"| {r['flows']:,} | {r['max_leiden_flows']:,} | {r['edges']:,} | {rel.get('relay', 0):,} "
            f"| {rel.get('similarity', 0):,} | {r['build_s']} | {r['partition_s']} | {r['total_s']} "
            f"| {r['peak_rss_gib']} | {r['partition_peak_worker_mib']:,} | {r['atoms']:,} | {r['largest_atom']:,} | {r['largest_component']:,} "
            f"| {r['largest_leiden_unit']:,} | {agreement['adjusted_rand'] if agreement else '-'} |"
        )
    by_size = list({r["flows"]: r for r in reversed(results)}.values())[::-1]  # first row of each size
    if len(by_size) > 1:
        a, b = by_size[0], by_size[-1]
        lines += [
            "",
            f"Time ratio {b['flows']:,} / {a['flows']:,} flows: {b['total_s'] / a['total_s']:.1f}x "
            f"for {b['flows'] / a['flows']:.0f}x the flows.",
        ]
    for n in dict.fromkeys(r["flows"] for r in results):
        same = [r for r in results if r["flows"] == n]
        for r in same[1:]:
            lines += [
                "",
                f"Partition time at {n:,} flows, max_leiden_flows {r['max_leiden_flows']:,} / "
                f"{same[0]['max_leiden_flows']:,}: {r['partition_s'] / same[0]['partition_s']:.2f}x.",
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


# ------------------------------------------------------------------ time slices, dev nights
def compare_time_slices(spark, warehouse_dir: str, labels_path: str, caps: list[int],
                        dates: list[str] | None = None) -> dict:
    """Atoms of each stored night's graph with ``max_leiden_flows`` 0 (no cap) and each of
    ``caps``; per cap: agreement with the uncapped atoms, atom sizes, and per labelled attack
    the share of its flows in its largest atom. Also checks the uncapped atoms against the
    stored ``atoms`` partition. Writes nothing."""
    import dataclasses

    from pipeline.evaluation.labels import matching_label_rows, read_labels

    rules = read_labels(labels_path)
    if dates is None:
        dates = sorted(p.name.split("=", 1)[1] for p in (Path(warehouse_dir) / "graph_vertices").glob("date=*"))
    report = {}
    for date in dates:
        vertices = warehouse.read_partition(spark, warehouse_dir, "graph_vertices", date=date)
        edges = warehouse.read_partition(spark, warehouse_dir, "graph_edges", date=date)
        flows = warehouse.read_partition(spark, warehouse_dir, "flows", date=date)
        flow_table = flows.select("flow_id", "src_ip", "dst_ip", "first_seen_ms", "last_seen_ms").toPandas()
        flow_table["attack_row"] = matching_label_rows(flow_table, rules)
        night, base = {}, None
        for cap in [0, *caps]:
            config = dataclasses.replace(partition.PartitionConfig(), max_leiden_flows=cap)
            start = time.monotonic()
            atoms = partition.partition_flows(spark, vertices, edges, config, flows).toPandas()
            seconds = time.monotonic() - start
            row = {"partition_s": round(seconds, 1), **atom_size_summary(atoms, cap)}
            if base is None:
                base = atoms
                stored = warehouse.read_arrow_partition(warehouse_dir, "atoms", date=date).to_pandas()
                row["stored_atoms_reproduced"] = atom_agreement(stored, atoms)
            else:
                row["vs_no_cap"] = atom_agreement(base, atoms)
            row["attacks"] = attack_cohesion(flow_table, atoms, rules)
            night[f"cap={cap}"] = row
            log.info("%s cap=%d: %s", date, cap, json.dumps({k: v for k, v in row.items() if k != "attacks"}))
        report[date] = night
    return report


def atom_size_summary(atoms: pd.DataFrame, cap: int) -> dict:
    sizes = atoms.groupby("atom_id").size()
    components = atoms.groupby("component_id").size().to_numpy()
    return {
        "flows": int(len(atoms)),
        "atoms": int(len(sizes)),
        "largest_component": int(components.max()),
        "components_cut": int((components > cap).sum()) if cap else 0,
        "largest_leiden_unit": largest_leiden_unit(components, cap),
        "atom_size_median_per_flow": float(atoms["atom_size"].median()),
        "atom_size_p90_per_flow": float(atoms["atom_size"].quantile(0.9)),
        "largest_atom": int(sizes.max()),
        "flows_in_singletons": round(float((atoms["atom_size"] == 1).mean()), 4),
    }


def attack_cohesion(flow_table: pd.DataFrame, atoms: pd.DataFrame, rules) -> list[dict]:
    """Per labels row with flows: its flows, atoms, and the share in its largest atom."""
    joined = flow_table.merge(atoms[["flow_id", "atom_id"]], on="flow_id")
    rows = []
    for index, group in joined[joined["attack_row"] >= 0].groupby("attack_row"):
        counts = group["atom_id"].value_counts()
        rows.append({"attack": rules[index].attack, "row": int(index), "flows": int(len(group)),
                     "atoms": int(len(counts)), "share_in_largest_atom": round(float(counts.iloc[0] / len(group)), 4)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    gen = sub.add_parser("generated")
    gen.add_argument("--flows", type=int, nargs="+", default=[100_000, 1_000_000])
    gen.add_argument("--caps", type=int, nargs="+",
                     help="max_leiden_flows values to partition each night with (default: the config's)")
    gen.add_argument("--append", help="markdown file to append the table to")
    dev = sub.add_parser("dev-nights")
    dev.add_argument("--warehouse", default="/tmp/dev_warehouse")
    dev.add_argument("--labels", default=str(REPO_ROOT.parent / "shared" / "data" / "labels.csv"))
    dev.add_argument("--train", nargs="+", default=["2026-01-01", "2026-01-02"])
    dev.add_argument("--test", nargs="+", default=["2026-01-03"])
    cut = sub.add_parser("slices")
    cut.add_argument("--warehouse", required=True, help="warehouse with graph_vertices, graph_edges, flows")
    cut.add_argument("--labels", required=True)
    cut.add_argument("--caps", type=int, nargs="+", default=[100, 200])
    cut.add_argument("--dates", nargs="+", help="nights (default: every night with a stored graph)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from pipeline.spark import get_spark

    # the session's own metastore/checkpoints live apart from the data warehouse, so this
    # never contends for another job's Derby metastore lock
    spark = get_spark("/tmp/bench_graph_session", overrides={"spark.master": "local[2]"})
    if args.mode == "generated":
        results = []
        for n in args.flows:
            results += bench_generated(spark, n, args.caps)
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
    elif args.mode == "slices":
        report = compare_time_slices(spark, args.warehouse, args.labels, args.caps, args.dates)
        print(json.dumps(report, indent=1))
    else:
        report = run_dev_nights(spark, args.warehouse, args.labels, args.train, args.test)
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
