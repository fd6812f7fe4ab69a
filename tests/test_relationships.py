"""Relationship history: entity text forms, a night's rows, history without look-ahead,
per-flow history, and RelationshipsTask on the embedded sample archive."""
from __future__ import annotations

import datetime as dt

import luigi
import pytest

import jobs  # noqa: F401  (conf/luigi.cfg first among Luigi's configuration files)
from jobs.ingest import ExtractFlowsTask
from jobs.relationships import RelationshipsTask, history_dates
from jobs.relationships import relationships as relationships_config
from pipeline import relationships
from pipeline.store import warehouse
from tests.pipeline_runs import SAMPLE_ARCHIVE

FLOW_COLUMNS = ("flow_id string, src_ip string, dst_ip string, dst_port int, protocol smallint, "
                "first_seen_ms bigint, last_seen_ms bigint")
D1, D2, D3, D4 = "2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"

NIGHT_ONE = [
    ("f1", "10.0.0.1", "10.0.0.2", 443, 6, 1000, 2000),
    ("f2", "10.0.0.1", "10.0.0.2", 443, 6, 3000, 5000),
    ("f3", "10.0.0.2", "10.0.0.1", 22, 6, 1500, 1600),     # the reverse direction: same pair
    ("f4", "10.0.0.3", "10.0.0.3", 53, 17, 4000, 4500),     # src == dst
    ("f5", "10.0.0.9", "10.0.0.10", None, 1, 6000, 6100),   # ICMP: no port; "10.0.0.10" < "10.0.0.9"
]
NIGHTS = {
    D1: NIGHT_ONE,
    D2: [("g1", "10.0.0.1", "10.0.0.2", 443, 6, 7000, 7100),
         ("g2", "10.0.0.4", "10.0.0.2", 443, 6, 7200, 7300)],
    D3: [("h1", "10.0.0.1", "10.0.0.2", 443, 6, 9000, 9100),
         ("h2", "10.0.0.4", "10.0.0.2", 443, 6, 9200, 9300),
         ("h3", "10.0.0.4", "10.0.0.5", 8080, 6, 9400, 9500)],
    D4: [("i1", "10.0.0.6", "10.0.0.5", 8080, 6, 9900, 9950)],
}


def _flows(spark, rows):
    return spark.createDataFrame(rows, FLOW_COLUMNS)


def _nights(spark, dates):
    from pyspark.sql import functions as F

    frames = [relationships.night_relationships(_flows(spark, NIGHTS[d])).withColumn("date", F.lit(d))
              for d in dates]
    nights = frames[0]
    for frame in frames[1:]:
        nights = nights.unionByName(frame)
    return nights


def _rows(df, order=("kind", "entity")):
    return sorted((r.asDict() for r in df.collect()), key=lambda r: tuple(str(r[c]) for c in order))


def test_entity_text_forms_are_service_pair_and_client_service(spark):
    rows = _rows(relationships.entity_columns(_flows(spark, NIGHT_ONE)), ("flow_id",))
    assert [(r["service"], r["host_pair"], r["client_service"]) for r in rows] == [
        ("10.0.0.2|443|6", "10.0.0.1|10.0.0.2", "10.0.0.1>10.0.0.2|443|6"),
        ("10.0.0.2|443|6", "10.0.0.1|10.0.0.2", "10.0.0.1>10.0.0.2|443|6"),
        ("10.0.0.1|22|6", "10.0.0.1|10.0.0.2", "10.0.0.2>10.0.0.1|22|6"),
        ("10.0.0.3|53|17", "10.0.0.3|10.0.0.3", "10.0.0.3>10.0.0.3|53|17"),
        ("10.0.0.10|-1|1", "10.0.0.10|10.0.0.9", "10.0.0.9>10.0.0.10|-1|1"),
    ]


def test_pandas_entities_agree_with_spark_including_a_null_port(spark):
    flows = _flows(spark, NIGHT_ONE)
    columns = ["flow_id", *relationships.ENTITY_COLUMNS]
    from_spark = relationships.entity_columns(flows).toPandas()[columns]
    from_pandas = relationships.entity_frame(flows.toPandas())[columns]  # dst_port: float, NaN for f5
    assert from_pandas.to_dict("records") == from_spark.to_dict("records")
    assert from_pandas.loc[4, "service"] == "10.0.0.10|-1|1"


def test_a_night_has_one_row_per_entity_with_its_flows_and_times(spark):
    rows = _rows(relationships.night_relationships(_flows(spark, NIGHT_ONE)))
    assert [(r["kind"], r["entity"], r["flows"], r["first_seen_ms"], r["last_seen_ms"]) for r in rows] == [
        ("client_service", "10.0.0.1>10.0.0.2|443|6", 2, 1000, 5000),
        ("client_service", "10.0.0.2>10.0.0.1|22|6", 1, 1500, 1600),
        ("client_service", "10.0.0.3>10.0.0.3|53|17", 1, 4000, 4500),
        ("client_service", "10.0.0.9>10.0.0.10|-1|1", 1, 6000, 6100),
        ("host", "10.0.0.1", 3, 1000, 5000),
        ("host", "10.0.0.10", 1, 6000, 6100),
        ("host", "10.0.0.2", 3, 1000, 5000),
        ("host", "10.0.0.3", 1, 4000, 4500),    # src == dst counts once
        ("host", "10.0.0.9", 1, 6000, 6100),
        ("host_pair", "10.0.0.10|10.0.0.9", 1, 6000, 6100),
        ("host_pair", "10.0.0.1|10.0.0.2", 3, 1000, 5000),
        ("host_pair", "10.0.0.3|10.0.0.3", 1, 4000, 4500),
        ("service", "10.0.0.10|-1|1", 1, 6000, 6100),
        ("service", "10.0.0.1|22|6", 1, 1500, 1600),
        ("service", "10.0.0.2|443|6", 2, 1000, 5000),
        ("service", "10.0.0.3|53|17", 1, 4000, 4500),
    ]
    assert {r["kind"] for r in rows} == set(relationships.KINDS)


def _write(spark, root, dates):
    for day in dates:
        rows = relationships.night_relationships(_flows(spark, NIGHTS[day]))
        warehouse.write_spark_partition(rows, root, "relationship_nights", date=day)


def test_nights_processed_out_of_order_give_the_same_history(spark, tmp_path):
    _write(spark, tmp_path / "in_order", [D1, D2, D3])
    _write(spark, tmp_path / "out_of_order", [D3, D1, D2, D1])  # D1 twice: a rerun changes nothing
    summaries = [_rows(relationships.relationships_summary(relationships.read_nights(spark, root, [D1, D2, D3])))
                 for root in (tmp_path / "in_order", tmp_path / "out_of_order")]
    assert summaries[0] == summaries[1]
    service = next(r for r in summaries[0] if r["kind"] == "service" and r["entity"] == "10.0.0.2|443|6")
    assert service == {"kind": "service", "entity": "10.0.0.2|443|6", "first_night": D1, "last_night": D3,
                       "nights_seen": 3, "flows": 6}


def test_history_as_of_a_night_uses_only_earlier_nights(spark):
    nights = _nights(spark, [D4, D1, D3, D2])
    as_of_d3 = _rows(relationships.history_as_of(nights, D3))
    assert as_of_d3 == _rows(relationships.relationships_summary(_nights(spark, [D1, D2])))
    assert max(r["last_night"] for r in as_of_d3) == D2
    assert not any(r["entity"] == "10.0.0.5" for r in as_of_d3)  # first seen on D3
    assert relationships.history_as_of(nights, D1).count() == 0


def test_flow_history_counts_earlier_nights_and_leaves_the_never_seen_at_zero(spark):
    history = _nights(spark, [D1, D2, D3, D4])  # D3 itself and the later D4 must not count
    rows = {r["flow_id"]: r for r in relationships.flow_history(_flows(spark, NIGHTS[D3]), history, D3).collect()}
    keys = [key for key, _, _ in relationships.HISTORY_KEYS]

    def seen(row):
        return {key: (row[f"{key}_nights_seen"], row[f"{key}_days_since_first"]) for key in keys}

    assert set(rows) == {"h1", "h2", "h3"}
    assert all(row["history_nights"] == 2 for row in rows.values())
    assert seen(rows["h1"]) == {key: (2, 2) for key in keys}  # 10.0.0.1 -> 10.0.0.2:443 since D1
    assert seen(rows["h2"]) == {"service": (2, 2), "client_service": (1, 1), "host_pair": (1, 1),
                                "src_host": (1, 1), "dst_host": (2, 2)}  # new client since D2
    assert seen(rows["h3"]) == {"service": (0, None), "client_service": (0, None), "host_pair": (0, None),
                                "src_host": (1, 1), "dst_host": (0, None)}  # 10.0.0.5 appears tonight


def test_flow_history_of_a_first_night_is_empty(spark):
    no_nights = relationships.read_nights(spark, "unused", [])
    rows = relationships.flow_history(_flows(spark, NIGHT_ONE), no_nights, D1).collect()
    assert len(rows) == len(NIGHT_ONE)
    assert all(r["history_nights"] == 0 and r["service_nights_seen"] == 0 and r["host_pair_days_since_first"] is None
               for r in rows)


def test_history_dates_are_archived_nights_of_the_window_oldest_first(tmp_path):
    for day in ("2026-01-01", "2026-01-03", "2026-01-05"):
        (tmp_path / day).mkdir()
    assert history_dates(tmp_path, dt.date(2026, 1, 5), 90) == ["2026-01-01", "2026-01-03"]
    assert history_dates(tmp_path, "2026-01-05", 3) == ["2026-01-03"]
    assert history_dates(tmp_path, dt.date(2026, 1, 1), 90) == []
    assert relationships_config().history_days == 90  # conf/luigi.cfg [relationships]


@pytest.mark.slow
def test_relationships_task_writes_the_night_once_and_a_rerun_does_nothing(spark, tmp_path):
    task = RelationshipsTask(date=dt.date(2026, 1, 1), archive=str(SAMPLE_ARCHIVE), warehouse=str(tmp_path))
    assert task.requires() == ExtractFlowsTask(date=dt.date(2026, 1, 1), archive=str(SAMPLE_ARCHIVE),
                                               warehouse=str(tmp_path))
    first = luigi.build([task], local_scheduler=True, detailed_summary=True, log_level="WARNING")
    assert first.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, first.summary_text
    path = task.output().path
    written = _rows(warehouse.read_partition(spark, tmp_path, "relationship_nights", date=D1))
    flows = warehouse.read_partition(spark, tmp_path, "flows", date=D1)
    assert written == _rows(relationships.night_relationships(flows))
    assert {r["kind"] for r in written} == set(relationships.KINDS)
    hosts = {r["entity"] for r in written if r["kind"] == "host"}
    assert hosts == {ip for r in flows.select("src_ip", "dst_ip").collect() for ip in r}

    before = path.stat().st_ino, (path / warehouse.SUCCESS_MARKER).stat().st_mtime_ns
    second = luigi.build([task], local_scheduler=True, detailed_summary=True, log_level="WARNING")
    assert second.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, second.summary_text
    assert "1 complete ones were encountered" in second.summary_text  # nothing ran
    assert (path.stat().st_ino, (path / warehouse.SUCCESS_MARKER).stat().st_mtime_ns) == before
