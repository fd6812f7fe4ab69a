"""RearView training: training-night flows -> a code-free artifact.

Training (:func:`train_rearview`):

1. The training nights' flows are ordered by night and start time. Per night, the last
   ``validation_fraction`` of flows (in start order, a contiguous time block, so the
   validation flows are not near-copies of training flows) are held out as *benign
   validation* flows; the rest are *training* flows.
2. Feature normalisation (``pipeline.detectors.features``) and the condition vocabulary are fitted
   on training flows. Condition of a flow = its triplet ``server_ip|server_port|protocol``
   (server = responder = ``dst``) when that triplet has ``>= min_triplet_sessions``
   training flows; otherwise its ``(port, protocol)`` when the rare triplets of that port
   and protocol pool at least that many; otherwise its protocol; a global condition covers
   protocols never seen in training.
3. Relationship novelty (:func:`cross_night_novelty`): a training-night flow is *novel*
   when its triplet has no training flow on the *other* training nights (a scored night:
   no training flow at all), which gives benign flows the novelty rate of a new night.
4. In a ``TorchDistributor`` worker (:func:`train_rearview_worker`): the conditional VAE
   and per-condition KDEs (stage 1); then ``ensemble_size`` independently seeded
   *members* (stage 2 + 3), each an anomaly-weighted GraphSAGE trained with DGI over the
   FIFO session graphs of the training flows (edge features: latent mean and novelty,
   :func:`edge_features`; vertex counts and both endpoints in the edge embedding,
   ``models.rearview_sage``) and the unsupervised classifier on the training flows'
   embeddings; the refined score is the members' mean standardised classifier score
   (:func:`ensemble_refined`). Operating threshold: the level that ``1 -
   threshold_quantile`` of the benign validation flows' refined scores exceed
   (:class:`TailModel`: a GPD fitted to the top 10 % of them, less noisy than the
   empirical quantile). Test labels are never read.

The classifiers are not serialised: the artifact stores the training embeddings each was
fitted on, and :func:`load_artifacts` refits them deterministically (fixed seeds), which
reproduces the same models with no pickle anywhere.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.kde import fit_conditional_kde, kde_probability
from models.rearview_training import screen_flows, train_cvae, train_edge_dgi
from pipeline.detectors import features
from pipeline.detectors.rearview.bursts import NUM_BURST_FEATURES
from pipeline.detectors.rearview.conditions import (
    NUM_FALLBACK_CELLS, assign_conditions, build_condition_vocabulary, cross_night_novelty, fallback_cells,
    order_flows, triplet_keys, validation_mask,
)
from pipeline.detectors.rearview.config import FLOW_COLUMNS, RearViewConfig
from pipeline.detectors.rearview.decision import (
    Calibration, RefinementMember, TailModel, decide_flows, ensemble_refined, member_seed,
)
from pipeline.detectors.rearview.session import edge_features, embed_windows, stream_windows
from pipeline.detectors.rearview.windows import eviction_count
from pipeline.store import model_store

log = logging.getLogger(__name__)


MODEL_NAME = "rearview"


def train_rearview_worker(inputs_path: str, out_dir: str, params: dict) -> dict | None:
    """``TorchDistributor`` entry point: train every RearView network, write tensors.

    ``inputs_path``: ``.npz`` (no pickle) with ``features [N, F]``, ``condition [N]``,
    ``is_train [N]``, ``night [N]``, ``src_vertex [N]``, ``dst_vertex [N]``, ``cell [N]``
    (fallback cell), ``novel [N]`` (:func:`cross_night_novelty`), ``first_seen_ms [N]``,
    ``service [N]`` (triplet ids, for the burst counts), rows in replay order per
    night. Writes ``vae``/``kde``/``sage``/``classifier_training``/``calibration``
    safetensors into ``out_dir``; returns JSON-able metrics with the calibrated threshold. Only rank 0
    trains (the data of a few nights fits one device); other ranks return ``None``.
    """
    from pipeline.detectors.distributed_training import distributed_context

    context = distributed_context(params["device"])
    if not context.is_main:
        return None
    device = context.device
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(params["cpu_threads"])
    with np.load(inputs_path, allow_pickle=False) as data:
        x, cond = data["features"], data["condition"]
        is_train, night = data["is_train"], data["night"]
        src, dst = data["src_vertex"], data["dst_vertex"]
        cell, novel = data["cell"], data["novel"]
        times, service = data["first_seen_ms"], data["service"]
    out = Path(out_dir)
    seed = params["seed"]
    vae, vae_history = train_cvae(
        x[is_train], cond[is_train], params["num_conditions"], params["global_condition"],
        epochs=params["vae_epochs"], learning_rate=params["vae_learning_rate"],
        batch_size=params["vae_batch_size"], condition_dropout=params["condition_dropout"],
        seed=seed, device=device,
    )
    err, norm, mu = screen_flows(vae, x, cond, device=device)
    train_rows = np.flatnonzero(is_train)
    global_ids = np.full(len(train_rows), params["global_condition"])
    g_err, g_norm, _ = screen_flows(vae, x[train_rows], global_ids, device=device)
    kde = fit_conditional_kde(
        np.concatenate([cond[train_rows], global_ids]), np.concatenate([err[train_rows], g_err]),
        np.concatenate([norm[train_rows], g_norm]), params["num_conditions"], params["kde_bandwidth"],
    )
    p = kde_probability(kde, cond, err, norm)

    queue, evict = params["queue_size"], params["evict"]
    edges = edge_features(mu, novel)

    def windows_of(rows: np.ndarray) -> list:
        return stream_windows(src[rows], dst[rows], edges[rows], p[rows], queue, evict, times_ms=times[rows],
                              service=service[rows], burst_window_ms=params["burst_window_ms"])

    graphs = []
    for n in np.unique(night):
        graphs += [g for _, _, g in windows_of(np.flatnonzero((night == n) & is_train))]
    night_rows = [np.flatnonzero(night == n) for n in np.unique(night)]
    night_windows = [windows_of(rows) for rows in night_rows]
    validation = ~is_train
    members, sage_state, train_embeddings, validation_embeddings, dgi_history = [], {}, {}, [], []
    for k in range(params["ensemble_size"]):
        encoder, history = train_edge_dgi(
            graphs, edges.shape[1] + (NUM_BURST_FEATURES if params["burst_window_ms"] > 0 else 0),
            epochs=params["sage_epochs"], learning_rate=params["sage_learning_rate"],
            seed=member_seed(seed, k), device=device,
        )
        z = np.zeros((len(x), encoder.out_dim), dtype=np.float32)
        for rows, windows in zip(night_rows, night_windows):
            z[rows] = embed_windows(windows, len(rows), encoder, queue, evict, device)
        members.append(RefinementMember.fit(encoder.cpu(), params["classifier"], z[is_train], member_seed(seed, k)))
        sage_state.update({f"member{k}.{name}": value for name, value in encoder.state_dict().items()})
        train_embeddings[f"member{k}"] = torch.from_numpy(z[is_train])
        validation_embeddings.append(z[validation])
        dgi_history.append(history)
    dgi_history = np.mean(dgi_history, axis=0).tolist()
    refined_validation = ensemble_refined(tuple(members), validation_embeddings)
    threshold = TailModel.fit(refined_validation).level(1.0 - params["threshold_quantile"])

    model_store.save_tensors(out / "vae.safetensors", vae.state_dict())
    model_store.save_tensors(out / "sage.safetensors", sage_state)
    model_store.save_tensors(out / "kde.safetensors", {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in kde.items()})
    model_store.save_tensors(out / "classifier_training.safetensors", train_embeddings)
    p_val = p[validation]
    calibration = Calibration(p_val.astype(np.float64), cell[validation].astype(np.int64),
                              refined_validation.astype(np.float64), threshold)
    model_store.save_tensors(out / "calibration.safetensors", {
        "p": torch.from_numpy(np.ascontiguousarray(calibration.p)),
        "cell": torch.from_numpy(np.ascontiguousarray(calibration.cell)),
        "refined": torch.from_numpy(np.ascontiguousarray(calibration.refined)),
    })
    config = RearViewConfig(**{f.name: params[f.name] for f in dataclasses.fields(RearViewConfig)})
    _, _, validation_alarm = decide_flows(p_val, calibration.cell, refined_validation,
                                          np.ones(len(p_val), dtype=bool), calibration, config)
    return {
        "threshold": threshold,
        "device": device,
        "train_flows": int(is_train.sum()),
        "validation_flows": int(validation.sum()),
        "session_graphs": len(graphs),
        "vae_loss_first": vae_history[0],
        "vae_loss_last": vae_history[-1],
        "dgi_loss_first": dgi_history[0],
        "dgi_loss_last": dgi_history[-1],
        "validation_screening_alarm_rate": float((p_val > params["screening_alarm_p"]).mean()),
        "validation_suspicious_rate": float((p_val > params["suspicious_p"]).mean()),
        "validation_refined_alarm_rate": float((refined_validation > threshold).mean()),
        "validation_alarm_rate": float(validation_alarm.mean()),
        "validation_cell_counts": np.bincount(calibration.cell, minlength=NUM_FALLBACK_CELLS).tolist(),
    }


# ---------------------------------------------------------------- training (driver)
def _collect(flows_df, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    columns = list(FLOW_COLUMNS) + [c for c in extra if c in flows_df.columns]
    missing = [c for c in FLOW_COLUMNS if c not in flows_df.columns]
    if missing:
        raise ValueError(f"RearView needs flow columns {missing} (pipeline.store.schema.FLOWS)")
    return flows_df.select(*columns).toPandas()


def train_rearview(spark, train_flows_df, config: RearViewConfig, out_dir: Path) -> dict:
    """Train RearView on the training nights' flows and write the artifact into ``out_dir``.

    ``train_flows_df``: Spark DataFrame with ``pipeline.store.schema.FLOWS`` columns plus
    ``date`` (one value per training night). Training runs through
    ``pipeline.detectors.distributed_training.run_training``. Returns JSON-able metrics.
    """
    from pipeline.detectors.distributed_training import run_training

    out_dir = Path(out_dir)
    flows = _collect(train_flows_df, extra=("date",))
    if len(flows) == 0:
        raise ValueError("train_rearview: no training flows")
    if "date" not in flows.columns:
        flows["date"] = pd.to_datetime(flows["first_seen_ms"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    flows = order_flows(flows, by_night=True)
    night = pd.factorize(flows["date"].astype(str), sort=True)[0].astype(np.int64)
    is_train = ~validation_mask(night, config.validation_fraction)
    normalisation = features.fit_normalisation(flows[is_train])
    vocab = build_condition_vocabulary(flows[is_train], config.min_triplet_sessions)
    seen_triplets = sorted(triplet_keys(flows[is_train]).unique().tolist())
    triplets = triplet_keys(flows)
    novel = cross_night_novelty(triplets, night, is_train)
    vertices, _ = pd.factorize(pd.concat([flows["src_ip"], flows["dst_ip"]], ignore_index=True))
    params = {
        **dataclasses.asdict(config),
        "device": config.device,
        "num_conditions": vocab["num_conditions"],
        "global_condition": vocab["global"],
        "evict": eviction_count(config.queue_size, config.evict_fraction),
    }
    scratch = Path(tempfile.mkdtemp(prefix="rearview-train-"))
    try:
        inputs = scratch / "inputs.npz"
        np.savez(
            inputs, features=features.apply_normalisation(flows, normalisation),
            condition=assign_conditions(vocab, flows), is_train=is_train, night=night,
            src_vertex=vertices[:len(flows)].astype(np.int64), dst_vertex=vertices[len(flows):].astype(np.int64),
            cell=fallback_cells(vocab, flows, novel), novel=novel,
            first_seen_ms=flows["first_seen_ms"].to_numpy(dtype=np.int64),
            service=pd.factorize(triplets)[0].astype(np.int64),
        )
        log.info("RearView training: %d flows (%d train, %d validation), %d conditions",
                 len(flows), is_train.sum(), (~is_train).sum(), vocab["num_conditions"])
        result = run_training(spark, train_rearview_worker, str(inputs), str(out_dir), params,
                              num_processes=config.num_processes, use_gpu=config.use_gpu)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model_store.save_json(out_dir / "config.json", dataclasses.asdict(config))
    model_store.save_json(out_dir / "normalisation.json", normalisation)
    model_store.save_json(out_dir / "conditions.json", {**vocab, "seen_triplets": seen_triplets})
    model_store.save_json(out_dir / "detector.json", {
        "threshold": result["threshold"], "classifier": config.classifier, "seed": config.seed,
        "num_features": len(features.FEATURE_COLUMNS),
        "training_nights": sorted(flows["date"].astype(str).unique().tolist()),
    })
    return {**result, "conditions": vocab["num_conditions"],
            "triplet_conditions": len(vocab["triplet"]),
            "port_protocol_conditions": len(vocab["port_protocol"]),
            "protocol_conditions": len(vocab["protocol"])}
