import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store import warehouse


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
    assert back.columns == ["capture_file", "byte_offset", "reason", "fatal", "quarantine_path",
                            "byte_length", "packets_after"]
    assert back.collect()[0]["reason"] == "truncated"


def test_a_partition_records_the_settings_it_was_built_with(spark, tmp_path):
    df = spark.createDataFrame([("f1", 10, "truncated")], "capture_file string, byte_offset long, reason string")
    build = {"GraphConfig": {"fanin_edges": True, "fanin_window_s": 1.0, "fanin_scope": "no_training_fanin"}}
    path = warehouse.write_spark_partition(df, tmp_path, "ingest_errors", build=build, date="2026-01-01")
    assert warehouse.build_matches(path, build)
    assert not warehouse.build_matches(path, {"GraphConfig": {**build["GraphConfig"], "fanin_window_s": 2.0}})
    # the record is not data: readers see the rows only
    assert warehouse.read_partition(spark, tmp_path, "ingest_errors", date="2026-01-01").count() == 1
    # rewritten without a record: settings unknown, never a match
    path = warehouse.write_spark_partition(df, tmp_path, "ingest_errors", date="2026-01-01")
    assert not (path / warehouse.BUILD_RECORD).exists()
    assert not warehouse.build_matches(path, build)


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


def _numbers(n: int, start: int = 0) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"x": list(range(start, start + n))})


def test_parquet_parts_roll_over_at_the_row_limit_and_read_back_in_order(tmp_path):
    batches = [_numbers(7), _numbers(5, start=7)]
    counts = warehouse.write_parquet_parts(batches, tmp_path, "part-a", batches[0].schema, rows_per_file=5)
    assert counts == [5, 5, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "part-a-00000.parquet", "part-a-00001.parquet", "part-a-00002.parquet"]
    assert pq.read_table(tmp_path).column("x").to_pylist() == list(range(12))


def test_parquet_parts_keep_what_was_written_when_the_source_fails(tmp_path):
    def failing():
        yield _numbers(3)
        raise RuntimeError("capture went bad")

    with pytest.raises(RuntimeError, match="capture went bad"):
        warehouse.write_parquet_parts(failing(), tmp_path, "part-b", _numbers(1).schema)
    assert [p.name for p in tmp_path.iterdir()] == ["part-b-00000.parquet"]  # no temporary left
    assert pq.read_table(tmp_path / "part-b-00000.parquet").num_rows == 3


def test_a_retried_writer_replaces_its_own_parts(tmp_path):
    schema_ = _numbers(1).schema
    warehouse.write_parquet_parts([_numbers(4)], tmp_path, "part-c", schema_)
    warehouse.write_parquet_parts([_numbers(4, start=10)], tmp_path, "part-c", schema_)
    assert pq.read_table(tmp_path).column("x").to_pylist() == [10, 11, 12, 13]


def test_staged_partition_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError):
        with warehouse.staged_partition(tmp_path, "flows", date="2026-01-01") as staging:
            warehouse.write_parquet_parts([_numbers(2)], staging, "part-d", _numbers(1).schema)
            raise RuntimeError("driver failed before the boundary flows")
    assert not (tmp_path / "flows").exists() or not any((tmp_path / "flows").iterdir())
    with warehouse.staged_partition(tmp_path, "flows", date="2026-01-01") as staging:
        warehouse.write_parquet_parts([_numbers(2)], staging, "part-d", _numbers(1).schema)
    final = warehouse.partition_path(tmp_path, "flows", date="2026-01-01")
    assert warehouse.is_complete(final) and pq.read_table(final / "part-d-00000.parquet").num_rows == 2
