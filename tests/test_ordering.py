"""Global row numbers in a sort order, computed in the JVM (pipeline.ordering)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.ordering import partition_offsets, with_sequence_index


def test_partition_offsets_are_prefix_sums_in_partition_order():
    assert partition_offsets({3: 5, 0: 2, 1: 0}) == {0: 0, 1: 2, 3: 2}
    assert partition_offsets({}) == {}


def test_rows_are_numbered_in_sort_order_across_many_partitions(spark):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"t": rng.integers(0, 50, 2000),          # many ties on the first key
                          "key": [f"k{i:05d}" for i in rng.permutation(2000)]})
    df = spark.createDataFrame(frame).repartition(7)
    indexed, count = with_sequence_index(df, ["t", "key"], "idx")
    got = indexed.toPandas().sort_values("idx")
    expected = frame.sort_values(["t", "key"]).reset_index(drop=True)
    assert count == 2000
    assert got["idx"].tolist() == list(range(2000))
    assert got["key"].tolist() == expected["key"].tolist()


def test_an_empty_frame_gets_no_rows_and_a_zero_count(spark):
    df = spark.createDataFrame(pd.DataFrame({"t": [1], "key": ["a"]})).where("t < 0")
    indexed, count = with_sequence_index(df, ["t", "key"], "idx")
    assert count == 0 and indexed.count() == 0 and "idx" in indexed.columns
