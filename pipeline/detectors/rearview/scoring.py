"""RearView scoring as Spark work: numbering, spans of FIFO windows, one task per span.

The driver side only: it reads the artifact's ``config.json`` and plans the tasks, and
never imports torch (~8 s); each task runs :func:`pipeline.detectors.rearview.inference.score_task` on
a worker, which loads the artifact once per worker process.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.detectors.rearview.config import FLOW_COLUMNS, RearViewConfig
from pipeline.detectors.rearview.windows import eviction_count, window_count
from pipeline.ordering import with_sequence_index
from pipeline.store import model_store, schema

log = logging.getLogger(__name__)

# Flows one Spark scoring task handles (its span of FIFO windows, see score_rearview):
# large enough that per-task overhead (artifact load, Arrow transfer) is small next to
# the work, small enough that a night splits into several tasks per core.
DEFAULT_FLOWS_PER_TASK = 25_000


def score_rearview(spark, flows_df, artifact_dir: Path, model_version: str,
                   flows_per_task: int = DEFAULT_FLOWS_PER_TASK):
    """Score a night's flows with a RearView artifact: Spark DataFrame of ``FLOW_SCORES``.

    The flows are numbered in replay order in the JVM (``pipeline.ordering``), the FIFO
    windows are cut into spans of ``max(1, flows_per_task // evict)`` consecutive windows,
    and each span is one ``applyInPandas`` group holding its flows plus the
    ``queue_size - evict`` flows of context its last window reaches into the next span
    (a flow is replicated into at most two spans). Equal to :func:`pipeline.detectors.rearview.inference.score_flows_local`.
    ``model_version`` is the artifact's version (the caller writes it as the
    ``model_version`` partition).
    """
    from pyspark.sql import functions as F

    config = RearViewConfig(**model_store.load_json(Path(artifact_dir) / "config.json"))
    queue = config.queue_size
    evict = eviction_count(queue, config.evict_fraction)
    indexed, num_flows = with_sequence_index(flows_df.select(*FLOW_COLUMNS), ["first_seen_ms", "flow_id"],
                                             "flow_index")
    windows = window_count(num_flows, queue, evict)
    per_task = max(1, int(flows_per_task) // evict)
    tasks = -(-windows // per_task)
    log.info("RearView %s: scoring %d flows in %d FIFO windows, %d Spark tasks",
             model_version, num_flows, windows, tasks)
    index = F.col("flow_index")
    first = F.greatest(F.lit(0), F.ceil((index - F.lit(queue - 1)) / F.lit(evict)).cast("long"))
    last = F.least(F.floor(index / F.lit(evict)).cast("long"), F.lit(max(windows - 1, 0)).cast("long"))
    replicated = indexed.withColumn(
        "task", F.explode(F.sequence(F.floor(first / per_task), F.floor(last / per_task)).cast("array<long>"))
    ).repartition(max(tasks, 1), "task")
    path = str(artifact_dir)

    def body(frame: pd.DataFrame) -> pd.DataFrame:
        from pipeline.detectors.rearview.inference import score_task  # torch: imported on the workers only

        return score_task(path, num_flows, per_task, frame)

    return replicated.groupBy("task").applyInPandas(body, schema=schema.spark_schema("flow_scores"))
