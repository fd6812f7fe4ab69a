import pyarrow as pa

from pipeline.store import metastore, warehouse


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


def _relationship_night(entities: list[tuple[str, str, int]]) -> pa.Table:
    return pa.table({"kind": [k for k, _, _ in entities], "entity": [e for _, e, _ in entities],
                     "flows": [n for _, _, n in entities], "first_seen_ms": [0] * len(entities),
                     "last_seen_ms": [1] * len(entities)})


RELATIONSHIP_NIGHTS = {
    "2026-01-01": [("host", "10.0.0.1", 5), ("host", "10.0.0.2", 5), ("service", "10.0.0.2|443|6", 5)],
    "2026-01-02": [("host", "10.0.0.1", 2), ("host", "10.0.0.2", 2), ("service", "10.0.0.2|443|6", 2)],
    "2026-01-03": [("host", "10.0.0.1", 1), ("host", "10.0.0.2", 4), ("host", "10.0.0.7", 3),
                   ("service", "10.0.0.2|443|6", 1), ("service", "10.0.0.2|22|6", 3),
                   ("client_service", "10.0.0.7>10.0.0.2|22|6", 3)],
}


def _publish_relationship_nights(spark, root, database: str) -> None:
    for night in ("2026-01-03", "2026-01-01", "2026-01-02"):  # the order nights are published in is moot
        warehouse.write_arrow_partition(_relationship_night(RELATIONSHIP_NIGHTS[night]), root,
                                        "relationship_nights", date=night)
        assert metastore.publish_night(spark, database, root, night)["relationship_nights"] == 1


def test_relationships_view_tells_what_appeared_for_the_first_time_on_a_night(spark, tmp_path):
    _publish_relationship_nights(spark, tmp_path, "traffic_relationships")
    new = spark.sql("SELECT kind, entity FROM traffic_relationships.relationships "
                    "WHERE first_night = '2026-01-03'").collect()
    assert sorted(map(tuple, new)) == [("client_service", "10.0.0.7>10.0.0.2|22|6"), ("host", "10.0.0.7"),
                                       ("service", "10.0.0.2|22|6")]
    rows = spark.sql("SELECT * FROM traffic_relationships.relationships WHERE entity = '10.0.0.2|443|6'").collect()
    assert [r.asDict() for r in rows] == [{"kind": "service", "entity": "10.0.0.2|443|6", "first_night": "2026-01-01",
                                           "last_night": "2026-01-03", "nights_seen": 3, "flows": 8}]


def test_relationships_view_agrees_with_the_pipelines_summary(spark, tmp_path):
    from pipeline import relationships

    _publish_relationship_nights(spark, tmp_path, "traffic_summary")
    view = spark.table("traffic_summary.relationships")
    nights = relationships.read_nights(spark, tmp_path, sorted(RELATIONSHIP_NIGHTS))
    summary = relationships.relationships_summary(nights)
    assert view.columns == summary.columns
    assert sorted(map(tuple, view.collect())) == sorted(map(tuple, summary.collect()))


def test_incidents_are_published_per_night_and_model_version(spark, tmp_path):
    incidents = pa.table({"incident_id": ["2026-01-03-001"], "rank": [1], "hosts": [["10.0.0.7", "10.0.0.2"]],
                          "services": [["10.0.0.2|22|6"]], "flows": [4], "flagged_flows": [3], "score": [0.99],
                          "top_evidence": ["p_history"]})
    warehouse.write_arrow_partition(incidents, tmp_path, "incidents", date="2026-01-03", model_version="v1")
    assert metastore.publish_night(spark, "traffic_incidents", tmp_path, "2026-01-03")["incidents"] == 1
    row = spark.sql("SELECT * FROM traffic_incidents.incidents").collect()[0]
    assert (row.incident_id, row.hosts, row.model_version, row.date) == (
        "2026-01-03-001", ["10.0.0.7", "10.0.0.2"], "v1", "2026-01-03")


NEW_FLOW_SCORE_COLUMNS = ("screening_prior", "p_history", "p_volume", "p_a2gnn", "p_screening", "p_refined",
                          "history_pattern", "evidence", "incident_id")


def test_a_metastore_created_by_older_code_gains_the_new_columns_and_keeps_its_partitions(spark, tmp_path):
    import pyarrow.parquet as pq

    from pipeline.store import schema

    old = pa.schema([f for f in schema.FLOW_SCORES if f.name not in NEW_FLOW_SCORE_COLUMNS])
    leaf = warehouse.partition_path(tmp_path, "flow_scores", date="2026-01-02", model="a2gnn", model_version="v0")
    leaf.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"flow_id": "old", "score": 0.5}], schema=old), leaf / "part-00000.parquet")
    (leaf / warehouse.SUCCESS_MARKER).touch()
    struct = schema.spark_schema("flow_scores")
    columns = [f"`{f.name}` {f.dataType.simpleString()}" for f in struct.fields if f.name not in NEW_FLOW_SCORE_COLUMNS]
    spark.sql(f"CREATE DATABASE traffic_old LOCATION '{tmp_path / 'sql'}'")
    spark.sql(f"CREATE TABLE traffic_old.flow_scores ({', '.join(columns)}, `date` string, `model` string, "
              f"`model_version` string) USING parquet PARTITIONED BY (`date`, `model`, `model_version`) "
              f"LOCATION '{tmp_path / 'flow_scores'}'")
    spark.sql(f"ALTER TABLE traffic_old.flow_scores ADD PARTITION (`date` = '2026-01-02', `model` = 'a2gnn', "
              f"`model_version` = 'v0') LOCATION '{leaf}'")
    assert "incident_id" not in spark.table("traffic_old.flow_scores").columns

    warehouse.write_arrow_partition(pa.table({"flow_id": ["new"], "score": [0.9], "incident_id": ["i1"]}), tmp_path,
                                    "flow_scores", date="2026-01-03", model="verdict", model_version="v1")
    metastore.publish_night(spark, "traffic_old", tmp_path, "2026-01-03")
    assert set(NEW_FLOW_SCORE_COLUMNS) <= set(spark.table("traffic_old.flow_scores").columns)
    rows = spark.sql("SELECT flow_id, score, incident_id, p_history FROM traffic_old.flow_scores ORDER BY flow_id")
    assert [tuple(r) for r in rows.collect()] == [("new", 0.9, "i1", None), ("old", 0.5, None, None)]
    latest = spark.sql("SELECT flow_id, incident_id FROM traffic_old.flow_scores_latest ORDER BY flow_id").collect()
    assert [tuple(r) for r in latest] == [("new", "i1"), ("old", None)]
    metastore.ensure_database(spark, "traffic_old", tmp_path)  # nothing left to add: a no-op
    assert spark.table("traffic_old.flow_scores").columns == spark.table("traffic_old.flow_scores_latest").columns


def _readme_query(title: str) -> str:
    from tests.pipeline_runs import REPO_ROOT

    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("queries analysts run", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    return next(q.strip() for q in block.split(";") if title in q)


def test_readme_query_relationships_first_seen_last_night_runs_on_published_data(spark, tmp_path):
    _publish_relationship_nights(spark, tmp_path, "traffic_readme")
    query = _readme_query("relationships first seen last night").replace("traffic.", "traffic_readme.")
    rows = spark.sql(query).collect()
    assert [(r.kind, r.entity, r.flows) for r in rows] == [
        ("client_service", "10.0.0.7>10.0.0.2|22|6", 3), ("host", "10.0.0.7", 3), ("service", "10.0.0.2|22|6", 3)]
