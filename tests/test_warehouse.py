import pyarrow as pa
import pytest

from pipeline import warehouse


def _errors(n):
    return pa.table({"capture_file": [f"f{i}" for i in range(n)], "byte_offset": list(range(n)),
                     "reason": ["x"] * n})


def test_rewriting_a_date_replaces_exactly_that_date(tmp_path):
    warehouse.write_arrow_partition(_errors(3), tmp_path, "ingest_errors", date="2026-01-01")
    warehouse.write_arrow_partition(_errors(2), tmp_path, "ingest_errors", date="2026-01-02")
    warehouse.write_arrow_partition(_errors(5), tmp_path, "ingest_errors", date="2026-01-01")
    assert warehouse.read_arrow_partition(tmp_path, "ingest_errors", date="2026-01-01").num_rows == 5
    assert warehouse.read_arrow_partition(tmp_path, "ingest_errors", date="2026-01-02").num_rows == 2
    leftovers = [p.name for p in (tmp_path / "ingest_errors").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failed_write_leaves_previous_partition_intact(tmp_path):
    warehouse.write_arrow_partition(_errors(3), tmp_path, "ingest_errors", date="2026-01-01")
    bad = pa.table({"capture_file": ["a"], "byte_offset": ["not a number"]})
    with pytest.raises(pa.ArrowInvalid):
        warehouse.write_arrow_partition(bad, tmp_path, "ingest_errors", date="2026-01-01")
    assert warehouse.read_arrow_partition(tmp_path, "ingest_errors", date="2026-01-01").num_rows == 3


def test_scores_are_written_per_date_model_and_version(tmp_path):
    with pytest.raises(ValueError, match="model_version"):
        warehouse.partition_path(tmp_path, "flow_scores", date="2026-01-01", model="a2gnn")
    path = warehouse.partition_path(tmp_path, "flow_scores", date="2026-01-01", model="a2gnn",
                                    model_version="v1")
    assert path.parts[-3:] == ("date=2026-01-01", "model=a2gnn", "model_version=v1")


def test_spark_write_is_read_back_with_declared_schema(spark, tmp_path):
    df = spark.createDataFrame([("f1", 10, "truncated")], "capture_file string, byte_offset long, reason string")
    warehouse.write_spark_partition(df, tmp_path, "ingest_errors", date="2026-01-01")
    back = warehouse.read_partition(spark, tmp_path, "ingest_errors", date="2026-01-01")
    assert back.columns == ["capture_file", "byte_offset", "reason", "fatal", "quarantine_path"]
    assert back.collect()[0]["reason"] == "truncated"


def test_incomplete_partition_is_not_read(tmp_path):
    (tmp_path / "ingest_errors" / "date=2026-01-01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        warehouse.read_arrow_partition(tmp_path, "ingest_errors", date="2026-01-01")


def _scores(flow_ids):
    return pa.table({"flow_id": flow_ids, "score": [1.0] * len(flow_ids)})


def test_a_second_model_version_never_overwrites_the_first(spark, tmp_path):
    warehouse.write_arrow_partition(_scores(["a", "b"]), tmp_path, "flow_scores",
                                    date="2026-01-03", model="a2gnn", model_version="v1")
    warehouse.write_arrow_partition(_scores(["a"]), tmp_path, "flow_scores",
                                    date="2026-01-03", model="a2gnn", model_version="v2")
    both = warehouse.read_partition(spark, tmp_path, "flow_scores", date="2026-01-03", model="a2gnn")
    counts = {r["model_version"]: r["count"] for r in both.groupBy("model_version").count().collect()}
    assert counts == {"v1": 2, "v2": 1}
    arrow = warehouse.read_arrow_partition(tmp_path, "flow_scores", date="2026-01-03")
    assert sorted(zip(arrow["model"].to_pylist(), arrow["model_version"].to_pylist())) == [
        ("a2gnn", "v1"), ("a2gnn", "v1"), ("a2gnn", "v2")]
