"""A2GNN training: the training nights' atom graph -> a code-free artifact.

Training (:func:`train_a2gnn`): for every training night, Spark joins the flows with
their atoms and keeps the flow--flow edges (``SEMANTIC_RELATIONSHIPS``: relay, similarity,
fan-in) whose endpoints share an atom (the isolation mask drops the others anyway). The
nights are stacked into one :class:`~models.a2gnn_training.AtomGraph` (atom keys prefixed
by the date, so atoms of different nights stay apart), features are standardised with
statistics fitted on the training window (``pipeline.detectors.features``), and the graph is saved
as safetensors and trained through ``TorchDistributor`` (``pipeline.detectors.distributed_training``).
Artifact files:

* ``weights.safetensors``   the model's state dict;
* ``anchors.safetensors``   ``anchors [A, out_dim]``, ``scale [A]`` (per-anchor distance
  unit), ``train_scores [n]`` and ``atom_scores [a]`` (calibration statistics);
* ``config.json``           :class:`A2GNNConfig` + input width and feature columns;
* ``normalisation.json``    feature statistics of the training window;
* ``threshold.json``        final threshold, the flow and atom EVT thresholds and their
  parameters;
* ``metrics.json``          training metrics.
"""
from __future__ import annotations
import logging
import tempfile
from pathlib import Path
import pandas as pd
# torch and PyTorch Geometric (models.a2gnn_training) are imported inside the functions
# that train or embed: the driver of a scoring run never needs them (~8 s to import).
from models.a2gnn_config import A2GNNConfig, member_dir, member_seed
from pipeline.detectors import features
from pipeline.store import model_store
from pipeline.detectors.a2gnn.graphs import _night_tables, build_training_graph


log = logging.getLogger(__name__)


CONFIG_FILE = "config.json"


NORMALISATION_FILE = "normalisation.json"


THRESHOLD_FILE = "threshold.json"


METRICS_FILE = "metrics.json"


def train_a2gnn(spark, train_nights: list[dict], config: A2GNNConfig, out_dir: Path) -> dict:
    """Train A2GNN on ``train_nights`` and write the artifact files into ``out_dir``.

    Each night is ``{"date", "flows", "atoms", "edges"}`` (Spark DataFrames of the
    ``flows``, ``atoms`` and ``graph_edges`` tables). Returns JSON-able training metrics.
    Raises ``ValueError`` when the nights hold no flow.
    """
    from models.a2gnn_training import save_graph
    from pipeline.detectors.distributed_training import run_training

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not train_nights:
        raise ValueError("train_a2gnn needs at least one training night")
    nights = []
    for night in sorted(train_nights, key=lambda n: n["date"]):
        flows, edges = _night_tables(night)
        log.info("A2GNN training night %s: %d flows, %d intra-atom edges (directed)",
                 night["date"], len(flows), len(edges))
        nights.append((str(night["date"]), flows, edges))
    all_flows = pd.concat([flows for _, flows, _ in nights], ignore_index=True)
    if all_flows.empty:
        raise ValueError(f"no flows on training nights {[d for d, _, _ in nights]}")
    stats = features.fit_normalisation(all_flows)
    graph = build_training_graph(nights, stats)
    with tempfile.TemporaryDirectory(prefix="a2gnn-train-") as tmp:
        graph_path = Path(tmp) / "graph.safetensors"
        save_graph(graph_path, graph)
        metrics = run_training(
            spark, distributed_train, str(graph_path), config.to_dict(), str(out_dir),
            num_processes=config.num_processes, use_gpu=config.use_gpu, local_mode=config.local_mode,
        )
    metrics = dict(metrics)
    metrics["train_dates"] = [d for d, _, _ in nights]
    metrics["train_edges"] = int(graph.edge_index.shape[1])
    model_store.save_json(out_dir / CONFIG_FILE, {
        "model": "a2gnn", "config": config.to_dict(), "in_dim": int(graph.x.shape[1]),
        "feature_columns": list(features.FEATURE_COLUMNS),
    })
    model_store.save_json(out_dir / NORMALISATION_FILE, stats)
    model_store.save_json(out_dir / THRESHOLD_FILE, {
        "method": "evt_pot", "threshold": metrics["threshold"],
        "flow_threshold": metrics["flow_threshold"], "atom_threshold": metrics["atom_threshold"],
        "calibration": config.calibration, "anchor_scale": config.anchor_scale,
        "structure": config.structure, "quantile": config.evt_quantile, "risk": config.evt_risk,
        "members": metrics.get("members", []),
    })
    model_store.save_json(out_dir / METRICS_FILE, metrics)
    return metrics


# ------------------------------------------------------------- TorchDistributor entry
def distributed_train(graph_path: str, config_dict: dict, out_path: str) -> dict:
    """TorchDistributor ``train_fn``: train on the graph saved at ``graph_path``.

    ``graph_path``: safetensors with ``x``, ``atom``, ``edge_index`` (see
    :func:`models.a2gnn_training.save_graph`). For each of ``ensemble_size`` members, rank 0 writes
    ``weights.safetensors`` (state dict) and ``anchors.safetensors`` (``anchors``,
    ``train_scores``) into ``out_path`` (member 0) or ``out_path/member<k>``, and returns
    member 0's training metrics with its EVT thresholds plus ``members``: each member's
    seed and thresholds.
    """
    import dataclasses

    import numpy as np
    import torch

    from models.a2gnn_training import (
        check_detector_config, fit_detector, load_graph, save_trained, split_holdout, train_model,
    )
    from pipeline.detectors.distributed_training import distributed_context, init_process_group_if_needed

    config = A2GNNConfig.from_dict(config_dict)
    context = distributed_context(config.device)
    distributed = init_process_group_if_needed(context)
    torch.use_deterministic_algorithms(context.device == "cpu", warn_only=True)
    if config.cpu_threads > 0:
        torch.set_num_threads(config.cpu_threads)
    check_detector_config(config)
    full_graph = load_graph(graph_path)
    metrics: dict = {}
    members = []
    for member in range(config.ensemble_size):
        member_config = dataclasses.replace(config, seed=member_seed(config.seed, member))
        graph, holdout = full_graph, None
        if config.calibration == "holdout_atoms":
            graph, holdout = split_holdout(full_graph, config.holdout_fraction, member_config.seed)
        model, member_metrics = train_model(graph, member_config, torch.device(context.device),
                                            context.rank, context.world_size)
        if not context.is_main:
            continue
        detector = fit_detector(model, graph, member_config, holdout)
        save_trained(Path(out_path) / member_dir(member), model, detector)
        members.append({"seed": member_config.seed, "threshold": detector["threshold"],
                        "flow_threshold": detector["flow_threshold"],
                        "atom_threshold": detector["atom_threshold"]})
        if member == 0:
            metrics = dict(member_metrics)
            metrics.update({
                "threshold": detector["threshold"],
                "flow_threshold": detector["flow_threshold"],
                "atom_threshold": detector["atom_threshold"],
                "calibration_flows": int(detector["train_scores"].size),
                "calibration_atoms": int(detector["atom_scores"].size),
                "num_anchors": int(detector["anchors"].shape[0]),
                "train_score_quantiles": {
                    q: float(np.quantile(detector["train_scores"], float(q)))
                    for q in ("0.5", "0.9", "0.95", "0.99")
                },
            })
    if context.is_main:
        metrics["members"] = members
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return metrics if context.is_main else {}
