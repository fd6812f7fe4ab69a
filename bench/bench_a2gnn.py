"""A2GNN speed (generated flows) and detection quality (a labelled warehouse).

Usage::

    python bench/bench_a2gnn.py [--flows 100000 --flows 1000000] [--device cpu|cuda]
                                [--epochs 1] [--threads 2] [--json out.json]
    python bench/bench_a2gnn.py --quality WAREHOUSE --labels labels.csv
                                [--variant '{"calibration": "in_sample"}' ...] [--json out.json]
    python bench/bench_a2gnn.py --anchor-search [--anchor-flows 1000000] [--anchors 200000]
                                [--anchor-train-flows 50000] [--exact-flows N] [--json out.json]

Quality mode trains ``train_a2gnn`` on 2026-01-01 + 2026-01-02 of ``WAREHOUSE`` (flows,
atoms, graph_edges) once per variant (``A2GNNConfig`` overrides on top of the defaults,
``cpu_threads=1``; default: every detector variant of the benchmark table), scores
2026-01-03 with ``score_a2gnn`` and only then reads the labels, to measure (precision,
recall, F1, ROC AUC, PR AUC, flagged flows, recall per attack kind). No choice is made
from the labels.

The generated graph mimics a night's shape: atoms of 1-8 flows (mean ~3, a few of
size 30-60), chained intra-atom edges, features drawn around a dozen traffic profiles.
Training runs the real loop (:func:`models.a2gnn_training.train_model`, default
config); scoring is what a Spark scoring task does per bucket: eval-mode embedding by
atom batches plus the exact nearest-anchor search against every training atom's anchor.
Numbers are wall-clock on the named device, after one warm-up batch.

Anchor-search mode (``--anchor-search``; also part of ``make bench``) times the exact
nearest-anchor search against the faiss IVF-Flat index (``models.anchor_index``) on the
same embeddings: a model trained one epoch on ``--anchor-train-flows`` generated flows
embeds a generated training night of about 4.5 x ``--anchors`` flows (its atoms' means
are the anchors) and a generated night of ``--anchor-flows`` flows (the flows scored).
Index time includes building it. Reported: flows/s of each, their ratio, the share of
flows given the same anchor and the largest relative distance difference, with the
exact search run on the first ``--exact-flows`` flows (all by default; the exact cost
is linear in flows, so a prefix times it at a fraction of the wait).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.a2gnn_training import A2GNNConfig, AtomGraph, atom_anchors, embed, nearest_anchor, train_model  # noqa: E402
from models.anchor_index import ivf_parameters, uses_index  # noqa: E402
from pipeline.detectors.features import FEATURE_COLUMNS  # noqa: E402

log = logging.getLogger("bench_a2gnn")


def generated_graph(num_flows: int, seed: int = 0) -> AtomGraph:
    """About ``num_flows`` standardised flows in atoms, with chained intra-atom edges."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=num_flows // 4 + 1)
    big = rng.random(sizes.size) < 0.002
    sizes[big] = rng.integers(30, 61, size=int(big.sum()))
    sizes = sizes[np.cumsum(sizes) <= num_flows]
    atom = np.repeat(np.arange(sizes.size), sizes)
    profiles = rng.normal(size=(12, len(FEATURE_COLUMNS)))
    x = profiles[rng.integers(0, 12, sizes.size)][atom] + 0.3 * rng.normal(size=(atom.size, len(FEATURE_COLUMNS)))
    nodes = np.arange(atom.size)
    chained = nodes[1:][atom[1:] == atom[:-1]]  # node i linked to i - 1 in the same atom
    src, dst = chained - 1, chained
    return AtomGraph(x.astype(np.float32), atom, np.stack([np.r_[src, dst], np.r_[dst, src]]))


def bench(num_flows: int, device: str, epochs: int) -> dict:
    config = A2GNNConfig(epochs=epochs, device=device)
    train = generated_graph(num_flows, seed=1)
    test = generated_graph(num_flows, seed=2)
    started = time.perf_counter()
    model, metrics = train_model(train, config, torch.device(device))
    train_seconds = time.perf_counter() - started
    anchors = atom_anchors(embed(model, train, config, torch.device(device)), train.atom)
    embed(model, generated_graph(2_000, seed=3), config, torch.device(device))  # warm-up
    started = time.perf_counter()
    z = embed(model, test, config, torch.device(device))
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    nearest_anchor(z, anchors, search=config.anchor_search)
    search_seconds = time.perf_counter() - started
    return {
        "anchor_search": "index" if uses_index(config.anchor_search, anchors.shape[0]) else "exact",
        "flows": train.num_flows,
        "atoms": train.num_atoms,
        "edges": int(train.edge_index.shape[1]),
        "device": device,
        "threads": torch.get_num_threads(),
        "epochs": epochs,
        "train_seconds_per_epoch": metrics["seconds_per_epoch"],
        "train_seconds_total": train_seconds,
        "anchors": int(anchors.shape[0]),
        "score_embed_seconds": embed_seconds,
        "score_anchor_search_seconds": search_seconds,
        "score_flows_per_second": test.num_flows / (embed_seconds + search_seconds),
    }


FLOWS_PER_ATOM = 4.5
"""Mean flows per atom of :func:`generated_graph` (sizes 1-8, a few 30-60)."""


def bench_anchor_search(num_flows: int, num_anchors: int, train_flows: int, exact_flows: int | None,
                        device: str) -> dict:
    """Exact vs indexed nearest-anchor search on the same model embeddings (module doc)."""
    config = A2GNNConfig(epochs=1, device=device)
    model, _ = train_model(generated_graph(train_flows, seed=1), config, torch.device(device))
    training_night = generated_graph(round(num_anchors * FLOWS_PER_ATOM), seed=4)
    anchors = atom_anchors(embed(model, training_night, config, torch.device(device)), training_night.atom)
    z = embed(model, generated_graph(num_flows, seed=2), config, torch.device(device))
    threads = torch.get_num_threads()
    started = time.perf_counter()
    indexed_distance, indexed = nearest_anchor(z, anchors, search="index", threads=threads)
    index_seconds = time.perf_counter() - started
    prefix = z[:exact_flows] if exact_flows else z
    started = time.perf_counter()
    exact_distance, exact = nearest_anchor(prefix, anchors, search="exact")
    exact_seconds = time.perf_counter() - started
    relative = (indexed_distance[:prefix.shape[0]] - exact_distance) / np.maximum(exact_distance, 1e-12)
    parameters = ivf_parameters(anchors.shape[0])
    return {
        "flows": int(z.shape[0]), "anchors": int(anchors.shape[0]), "dim": int(z.shape[1]),
        "device": device, "threads": threads, "lists": parameters.lists, "probes": parameters.probes,
        "exact_flows": int(prefix.shape[0]),
        "exact_flows_per_second": prefix.shape[0] / exact_seconds,
        "index_seconds": index_seconds,
        "index_flows_per_second": z.shape[0] / index_seconds,
        "speedup": (z.shape[0] / index_seconds) / (prefix.shape[0] / exact_seconds),
        "same_anchor_share": float((indexed[:prefix.shape[0]] == exact).mean()),
        "max_relative_distance_difference": float(relative.max()),
        "flows_farther_than_1e-6": int((relative > 1e-6).sum()),
    }


def write_anchor_section(results: list[dict]) -> None:
    """The exact vs index table as '## A2GNN: exact vs indexed anchor search' of docs/benchmarks.md."""
    from bench.benchlib import replace_section, stamp

    rows = ["| flows (exact on) | anchors x dim | device, threads | lists, probes | exact flows/s | "
            "index flows/s (with build) | speedup | same anchor | max relative distance difference |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(
            f"| {r['flows']:,} ({r['exact_flows']:,}) | {r['anchors']:,} x {r['dim']} | "
            f"{r['device']}, {r['threads']} | {r['lists']:,}, {r['probes']:,} | {r['exact_flows_per_second']:,.0f} | "
            f"{r['index_flows_per_second']:,.0f} | {r['speedup']:.1f}x | {100 * r['same_anchor_share']:.3f} % | "
            f"{r['max_relative_distance_difference']:.2e} |")
    replace_section("A2GNN: exact vs indexed anchor search", "\n".join([
        stamp(), "",
        "Command: `python bench/bench_a2gnn.py --anchor-search` (part of `make bench`; module doc). "
        "Same embeddings, same run, same threads; the exact search runs on the first flows "
        "(in brackets), the index on all of them, its build included. Relative distance "
        "difference = (indexed - exact) / exact per flow; negative when the exact float32 "
        "arg-min picked a near tie. Parameters: `models/anchor_index.py`.", "", *rows]))


QUALITY_VARIANTS = {
    "default": {},
    "authors (in_sample, no scale, no structure)": {"calibration": "in_sample", "anchor_scale": "none",
                                                    "structure": "none"},
    "holdout_atoms": {"anchor_scale": "none", "structure": "none"},
    "holdout_atoms + radius": {"structure": "none"},
    "holdout_atoms + atom_shift": {"anchor_scale": "none"},
    "own_atom_out + radius + atom_shift": {"calibration": "own_atom_out"},
}


def quality(warehouse: str, labels_csv: str, variants: dict[str, dict], artifacts: str,
            train_dates=("2026-01-01", "2026-01-02"), test_date="2026-01-03") -> list[dict]:
    """Train/score each variant on ``warehouse``; flow-level metrics against ``labels_csv``."""
    from pathlib import Path

    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    from pipeline.detectors.a2gnn import score_a2gnn, train_a2gnn
    from pipeline.evaluation.labels import label_flows, read_labels
    from pipeline.spark import get_spark
    from pipeline.store.warehouse import read_partition

    spark = get_spark(str(Path(artifacts) / "spark-warehouse"), overrides={"spark.master": "local[2]"})

    def night(date: str) -> dict:
        return {"date": date, **{key: read_partition(spark, warehouse, table, date=date) for key, table in
                                 (("flows", "flows"), ("atoms", "atoms"), ("edges", "graph_edges"))}}

    results = []
    for number, (name, overrides) in enumerate(variants.items()):
        config = A2GNNConfig(**{"cpu_threads": 1, **overrides})
        out = Path(artifacts) / f"variant-{number}"
        started = time.perf_counter()
        metrics = train_a2gnn(spark, [night(d) for d in train_dates], config, out)
        test = night(test_date)
        scores = score_a2gnn(spark, test["flows"], test["atoms"], test["edges"], out, name).toPandas()
        seconds = time.perf_counter() - started
        kinds = label_flows(scores, read_labels(labels_csv))
        attack = (kinds != "benign").to_numpy()
        precision, recall, f1, _ = precision_recall_fscore_support(
            attack, scores["is_anomaly"], average="binary", zero_division=0)
        result = {
            "variant": name, "overrides": overrides, "precision": precision, "recall": recall, "f1": f1,
            "roc_auc": roc_auc_score(attack, scores["score"]),
            "pr_auc": average_precision_score(attack, scores["score"]),
            "flagged": int(scores["is_anomaly"].sum()), "flows": len(scores), "attacks": int(attack.sum()),
            "threshold": metrics["threshold"], "flow_threshold": metrics["flow_threshold"],
            "atom_threshold": metrics["atom_threshold"], "seconds": seconds,
            "flag_rate_by_kind": {k: float(scores.loc[(kinds == k).to_numpy(), "is_anomaly"].mean())
                                  for k in sorted(set(kinds))},
        }
        log.info("%s", json.dumps(result))
        results.append(result)
    return results


def write_section(results: list[dict]) -> None:
    """The speed table as the '## A2GNN: latest make bench run' section of docs/benchmarks.md."""
    from bench.benchlib import replace_section, stamp

    rows = ["| flows | atoms (= anchors) | edges | device, threads | train s/epoch | embed s | "
            "anchor search | anchor search s | scoring flows/s |", "|---:|---:|---:|---|---:|---:|---|---:|---:|"]
    for r in results:
        rows.append(
            f"| {r['flows']:,} | {r['atoms']:,} | {r['edges']:,} | {r['device']}, {r['threads']} | "
            f"{r['train_seconds_per_epoch']:.1f} | {r['score_embed_seconds']:.1f} | {r['anchor_search']} | "
            f"{r['score_anchor_search_seconds']:.1f} | {r['score_flows_per_second']:,.0f} |")
    replace_section("A2GNN: latest make bench run", "\n".join([
        stamp(), "",
        "Command: `python bench/bench_a2gnn.py` (part of `make bench`; generated nights, default "
        "`A2GNNConfig`, one training epoch; scoring = atom-batched embedding + nearest-anchor "
        "search against every training atom's anchor as `anchor_search = auto` does it: exact below "
        "32,768 anchors, the IVF-Flat index from there, its build included). Analysis in '## A2GNN'.",
        "", *rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, action="append", help="flows per night (repeatable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--quality", metavar="WAREHOUSE", help="measure detection quality on this warehouse")
    parser.add_argument("--labels", default="../shared/data/labels.csv", help="labels CSV (quality mode)")
    parser.add_argument("--variant", action="append", help="JSON A2GNNConfig overrides (quality mode)")
    parser.add_argument("--artifacts", default="/tmp/a2gnn-quality", help="artifact folder (quality mode)")
    parser.add_argument("--anchor-search", action="store_true", help="time exact vs indexed anchor search")
    parser.add_argument("--anchor-flows", type=int, default=1_000_000, help="flows searched (anchor-search mode)")
    parser.add_argument("--anchors", type=int, default=200_000, help="about this many anchors (anchor-search mode)")
    parser.add_argument("--anchor-train-flows", type=int, default=50_000,
                        help="flows the embedding model trains on (anchor-search mode)")
    parser.add_argument("--exact-flows", type=int, default=0,
                        help="exact search on the first N flows only (anchor-search mode; 0: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quality:
        variants = {v: json.loads(v) for v in args.variant} if args.variant else QUALITY_VARIANTS
        results = quality(args.quality, args.labels, variants, args.artifacts)
    elif args.anchor_search:
        results = [bench_anchor_search(args.anchor_flows, args.anchors, args.anchor_train_flows,
                                       args.exact_flows or None, args.device)]
        if not args.json:
            write_anchor_section(results)
    else:
        results = []
        for flows in args.flows or [100_000, 1_000_000]:
            results.append(bench(flows, args.device, args.epochs))
            log.info("%s", json.dumps(results[-1]))
            if not args.json:  # make bench: the table after every size, so a long run keeps what it measured
                write_section(results)
    for result in results:
        log.info("%s", json.dumps(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
