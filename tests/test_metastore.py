import pyarrow as pa

from pipeline import metastore, warehouse


def _scores(n, score):
    return pa.table({"flow_id": [f"f{i}" for i in range(n)], "score": [score] * n, "is_anomaly": [True] * n})


def test_published_partitions_are_queryable_and_latest_view_keeps_newest_version(spark, tmp_path):
    for version, score in (("2026-01-01-aaaa", 1.0), ("2026-01-02-bbbb", 2.0)):
        warehouse.write_arrow_partition(_scores(3, score), tmp_path, "flow_scores",
                                        date="2026-01-03", model="a2gnn", model_version=version)
    warehouse.write_arrow_partition(pa.table({"capture_file": ["x.pcap"], "byte_offset": [24], "reason": ["truncated"]}),
                                    tmp_path, "ingest_errors", date="2026-01-03")
    registered = metastore.publish_night(spark, "traffic_test", tmp_path, "2026-01-03")
    assert registered["flow_scores"] == 2 and registered["ingest_errors"] == 1 and registered["flows"] == 0

    rows = spark.sql("SELECT model_version, count(*) AS n FROM traffic_test.flow_scores "
                     "WHERE `date` = '2026-01-03' GROUP BY model_version ORDER BY model_version").collect()
    assert [(r.model_version, r.n) for r in rows] == [("2026-01-01-aaaa", 3), ("2026-01-02-bbbb", 3)]
    latest = spark.sql("SELECT DISTINCT model_version, score FROM traffic_test.flow_scores_latest").collect()
    assert [(r.model_version, r.score) for r in latest] == [("2026-01-02-bbbb", 2.0)]
    assert spark.sql("SELECT reason FROM traffic_test.ingest_errors").collect()[0].reason == "truncated"


def test_publishing_twice_is_idempotent(spark, tmp_path):
    warehouse.write_arrow_partition(_scores(2, 1.0), tmp_path, "flow_scores",
                                    date="2026-01-04", model="rearview", model_version="v1")
    metastore.publish_night(spark, "traffic_twice", tmp_path, "2026-01-04")
    metastore.publish_night(spark, "traffic_twice", tmp_path, "2026-01-04")
    assert spark.sql("SELECT count(*) AS n FROM traffic_twice.flow_scores").collect()[0].n == 2
    assert len(spark.sql("SHOW PARTITIONS traffic_twice.flow_scores").collect()) == 1
