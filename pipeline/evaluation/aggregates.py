"""The nightly (unlabelled) evaluation summary from Spark aggregates.

Without labels the summary needs only counts, a threshold and a histogram per detector,
so nothing night-sized has to reach the driver: every figure here is one Spark
aggregation, and the driver's memory no longer grows with the night (the pandas path of
``pipeline.evaluation.night`` held the night's keys and both models' scores there, +191 MiB at
212k flows). The results equal that path's exactly (``tests/test_evaluate.py``):

* histograms: ``bins`` equal-width bins between the finite minimum and maximum,
  half-open except the last, as ``numpy.histogram`` (``metrics.score_histograms``);
  computed as ``count(x < edge)`` at each of the ``bins + 1`` edges in one pass;
* a model's ``scored_flows`` / ``flagged``: its rows of the night (one per flow of the
  night's ``flows``, the table contract); a NaN or null score is unscored, a null flag
  is False;
  ``threshold``: the exact median of the non-null, non-NaN thresholds;
* ``novelty_lookup``: 1.0 for a flow whose ``dst_ip|dst_port|protocol`` (nulls as empty
  fields) no training night's flow has, else 0.0 (``pipeline.evaluation.baselines``).
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.evaluation.baselines import TRIPLET_COLUMNS

HISTOGRAM_BINS = 40


def _finite(column):
    from pyspark.sql import functions as F

    return F.col(column).isNotNull() & ~F.isnan(column) & (F.abs(F.col(column)) != float("inf"))


def _range(column):
    """Aggregates ``(low, high)``: the finite minimum and maximum of ``column``."""
    from pyspark.sql import functions as F

    finite = F.when(_finite(column), F.col(column))
    return [F.min(finite).alias("low"), F.max(finite).alias("high")]


def histogram(df, column: str, bins: int = HISTOGRAM_BINS, value_range: tuple | None = None) -> dict:
    """``{"edges": [bins + 1], "all": [bins]}`` of ``df[column]``'s finite values.

    ``value_range``: ``(low, high)`` of those values when already aggregated (one pass
    instead of two); ``None`` lows mean no finite value.
    """
    from pyspark.sql import functions as F

    if value_range is None:
        row = df.agg(*_range(column)).first()
        value_range = (row["low"], row["high"])
    low, high = value_range
    if low is None:
        return {"edges": [], "all": []}
    low, high = float(low), float(high)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    x = F.col(column)
    below = df.agg(*[F.count(F.when(_finite(column) & (x < float(e)), 1)).alias(f"e{k}")
                     for k, e in enumerate(edges[:-1])], F.count(F.when(_finite(column), 1)).alias("total")).first()
    cumulative = [int(below[f"e{k}"]) for k in range(bins)] + [int(below["total"])]
    return {"edges": [float(e) for e in edges],
            "all": [cumulative[k + 1] - cumulative[k] for k in range(bins)]}


def flow_totals(flows_df) -> dict:
    """``{"flows", "packets", "bytes", "hosts"}`` of a night's flows (one job, one shuffle)."""
    from pyspark.sql import functions as F

    row = flows_df.agg(F.count("*").alias("flows"),
                       F.sum("bidirectional_packets").alias("packets"),
                       F.sum("bidirectional_bytes").alias("bytes")).first()
    hosts = (flows_df.select(F.col("src_ip").alias("host"))
             .union(flows_df.select(F.col("dst_ip").alias("host")))
             .where(F.col("host").isNotNull()).distinct().count())
    return {"flows": int(row["flows"]), "packets": int(row["packets"] or 0),
            "bytes": int(row["bytes"] or 0), "hosts": int(hosts)}


def model_entry(scores_df) -> dict:
    """Counts, threshold and histogram of one model's scores of a night (two passes).

    ``scores_df``: the night's ``flow_scores`` rows of one model version
    (``score, threshold, is_anomaly``), one per flow of the night's ``flows`` table (the
    table's contract: ``pipeline.store.schema``; the pandas path aligned them by ``flow_id``).
    """
    from pyspark.sql import functions as F

    row = scores_df.agg(
        F.count(F.when(F.col("score").isNotNull() & ~F.isnan("score"), 1)).alias("scored"),
        F.count(F.when(F.col("is_anomaly"), 1)).alias("flagged"),
        F.percentile(F.when(F.col("threshold").isNotNull() & ~F.isnan("threshold"), F.col("threshold")),
                     F.lit(0.5)).alias("threshold"),
        *_range("score"),
    ).first()
    threshold = row["threshold"]
    return {"scored_flows": int(row["scored"]), "flagged": int(row["flagged"]),
            "threshold": None if threshold is None or not math.isfinite(threshold) else float(threshold),
            "histogram": histogram(scores_df, "score", value_range=(row["low"], row["high"]))}


def _triplet():
    from pyspark.sql import functions as F

    return F.concat_ws("|", *[F.coalesce(F.col(c).cast("string"), F.lit("")) for c in TRIPLET_COLUMNS])


def novelty_entry(flows_df, training_flows_df) -> dict:
    """The novelty lookup baseline's counts and histogram (threshold 0.5 on its 0/1 score)."""
    from pyspark.sql import functions as F

    known = training_flows_df.select(_triplet().alias("triplet")).distinct().withColumn("known", F.lit(1.0))
    values = (flows_df.select(_triplet().alias("triplet")).join(known, "triplet", "left")
              .select((F.lit(1.0) - F.coalesce("known", F.lit(0.0))).alias("novel"))
              .localCheckpoint(eager=True))
    row = values.agg(F.count("*").alias("flows"), F.sum("novel").alias("flagged"), *_range("novel")).first()
    return {"scored_flows": int(row["flows"]), "flagged": int(row["flagged"] or 0), "threshold": 0.5,
            "histogram": histogram(values, "novel", value_range=(row["low"], row["high"]))}
