"""Spark side of the verdict: one night's evidence frame, the detectors' calibration, and
writing the verdict's scores and incidents.

The frame of a night (:func:`night_frame`) is assembled in Spark (flows, their history
as of the night, both detectors' score rows) and collected to the driver: the verdict's
arithmetic is per flow plus per-relationship counts, done in pandas
(:mod:`pipeline.verdict.scoring`). A night of a few million flows fits the driver.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.store import schema, warehouse

log = logging.getLogger(__name__)

BUILD_FILE = "_VERDICT.json"

_FLOW_KEYS = ("flow_id", "src_ip", "dst_ip", "src_port", "dst_port", "protocol", "first_seen_ms",
              "last_seen_ms", "community_id")
_A2GNN = {"score": "a2gnn_score", "atom_id": "atom_id", "atom_size": "atom_size", "atom_density": "atom_density",
          "nearest_anchor": "nearest_anchor", "anchor_distance": "anchor_distance"}
_REARVIEW = {"triplet": "triplet", "screening_probability": "screening_probability",
             "refined_score": "refined_score", "screening_prior": "screening_prior"}


def night_frame(spark, warehouse_root: Path, date: str, history_dates: list[str],
                versions: dict[str, str]) -> pd.DataFrame:
    """One row per flow of ``date``: key columns, entity keys, history counts as of the
    night (from ``relationship_nights`` of ``history_dates``, all before ``date``) and the
    score rows of each detector in ``versions`` (model -> version); a detector not in
    ``versions`` leaves its columns null."""
    from pyspark.sql import functions as F

    from pipeline.relationships import entity_columns, flow_history, read_nights

    flows = warehouse.read_partition(spark, warehouse_root, "flows", date=date)
    history = flow_history(flows, read_nights(spark, warehouse_root, history_dates), date)  # cuts at ``date``
    frame = entity_columns(flows).select(*_FLOW_KEYS, "service", "host_pair").join(history, "flow_id", "left")
    for model, renames in (("a2gnn", _A2GNN), ("rearview", _REARVIEW)):
        if model in versions:
            scores = warehouse.read_partition(spark, warehouse_root, "flow_scores", date=date, model=model,
                                              model_version=versions[model])
            frame = frame.join(scores.select("flow_id", *[F.col(c).alias(a) for c, a in renames.items()])
                               .dropDuplicates(["flow_id"]), "flow_id", "left")
        else:
            frame = frame.select("*", *[F.lit(None).alias(a) for a in renames.values()])
    pdf = frame.toPandas()
    pdf["history_nights"] = pdf["history_nights"].fillna(0).astype("int64")
    return pdf.sort_values("flow_id", kind="stable").reset_index(drop=True)


def a2gnn_calibration(artifact_dir: Path) -> dict:
    """A2GNN's benign training calibration (the detector owns its artifact's format)."""
    from pipeline.detectors.a2gnn import benign_calibration

    return benign_calibration(artifact_dir)


def rearview_calibration(artifact_dir: Path) -> dict:
    """RearView's benign validation flows: screening ``p`` and ``refined`` scores."""
    from pipeline.detectors.rearview import benign_calibration

    stored = benign_calibration(artifact_dir)
    return {"p": stored["p"].astype(np.float64), "refined": stored["refined"].astype(np.float64)}


def write_verdict(spark, warehouse_root: Path, date: str, version: str, scores: pd.DataFrame,
                  incidents: pd.DataFrame, build: dict) -> None:
    """Write the incidents partition, then the verdict's ``flow_scores`` partition (whose
    marker completes the task) with ``build`` (inputs, settings, calibration) recorded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    incidents_table = pa.Table.from_pandas(incidents, preserve_index=False) if len(incidents) \
        else schema.empty_table("incidents")
    warehouse.write_arrow_partition(incidents_table, warehouse_root, "incidents", date=date, model_version=version)
    rows = scores.drop(columns=["model_version"], errors="ignore")
    table = schema.conform("flow_scores", pa.Table.from_pandas(rows, preserve_index=False)) if len(rows) \
        else schema.empty_table("flow_scores")
    with warehouse.staged_partition(warehouse_root, "flow_scores", date=date, model="verdict",
                                    model_version=version) as staging:
        pq.write_table(table, staging / "part-00000.parquet", compression="zstd")
        (staging / BUILD_FILE).write_text(json.dumps(build, indent=1, sort_keys=True, default=str))
    log.info("verdict %s of %s: %d flows, %d flagged, %d incidents", version, date, len(rows),
             int(rows["is_anomaly"].sum()) if len(rows) else 0, len(incidents))
