"""DetectTask end to end, in this process, on the embedded sample archive (tiny models)."""
from __future__ import annotations

import datetime as dt
import shutil

import luigi
import pytest
from luigi.configuration.cfg_parser import LuigiConfigParser

import jobs
from pipeline.store import model_store, warehouse
from tests.pipeline_runs import SAMPLE_ARCHIVE, TINY_CFG, settings, table_rows

pytestmark = pytest.mark.slow
NIGHT = dt.date(2026, 1, 3)


@pytest.fixture(scope="module")
def tiny_models():
    LuigiConfigParser.add_config_path(str(TINY_CFG))
    LuigiConfigParser.reload()
    yield
    LuigiConfigParser._config_paths.remove(str(TINY_CFG))
    LuigiConfigParser.reload()


def _build(*tasks) -> luigi.execution_summary.LuigiRunResult:
    return luigi.build(list(tasks), local_scheduler=True, detailed_summary=True, log_level="WARNING")


def _detect(warehouse_root, **params):
    return jobs.DetectTask(date=NIGHT, archive=str(SAMPLE_ARCHIVE), warehouse=str(warehouse_root), **params)


@pytest.fixture(scope="module")
def detected(detect_run, tiny_models):
    """The session's DetectTask run (tests/conftest.py): these tests rerun stages in its warehouse."""
    return detect_run.root, detect_run.result


def test_detect_runs_every_stage_and_succeeds(detected):
    root, result = detected
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    for table in ("flows", "ingest_stats", "ingest_errors", "graph_vertices", "graph_edges",
                  "graph_fanin_services", "atoms"):
        assert warehouse.is_complete(warehouse.partition_path(root, table, date="2026-01-03")), table
    for model in ("a2gnn", "rearview"):
        leaves = warehouse.complete_partitions(root, "flow_scores", date="2026-01-03", model=model)
        assert len(leaves) == 1, model
    assert list((root / "reports" / "date=2026-01-03").glob("*/report.html"))


def test_models_train_on_the_nights_before_and_scores_cover_every_flow(detected, spark):
    root, _ = detected
    flows = warehouse.read_partition(spark, root, "flows", date="2026-01-03").count()
    for model in ("a2gnn", "rearview"):
        manifest = model_store.latest_version(root, model)
        assert manifest["train_dates"] == ["2026-01-01", "2026-01-02"]
        scores = warehouse.read_partition(spark, root, "flow_scores", date="2026-01-03", model=model)
        assert scores.count() == flows
        assert scores.select("model_version").distinct().collect()[0][0] == manifest["version"]


def test_rerun_is_complete_and_runs_nothing(detected):
    root, _ = detected
    started = []

    def record(task):
        started.append(task.task_family)

    luigi.Task.event_handler(luigi.Event.START)(record)
    try:
        result = _build(_detect(root))
    finally:
        luigi.Task._event_callbacks[luigi.Task][luigi.Event.START].discard(record)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS
    assert started == []


def _rows_by_partition(root) -> dict[tuple[str, str], list[dict]]:
    rows: dict[tuple[str, str], list[dict]] = {}
    for row in table_rows(root, "flow_scores", ["model", "model_version", "flow_id"]):
        rows.setdefault((row["model"], row["model_version"]), []).append(row)
    return rows


def test_pinned_version_reproduces_identical_scores(detected):
    root, _ = detected
    version = model_store.latest_version(root, "a2gnn")["version"]
    before = _rows_by_partition(root)
    shutil.rmtree(warehouse.partition_path(root, "flow_scores", date="2026-01-03", model="a2gnn",
                                           model_version=version))
    result = _build(_detect(root, models="a2gnn", model_version=version))
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    after = _rows_by_partition(root)
    assert {key: after[key] for key in before} == before
    # the verdict of an A2GNN-only run is another version, and says what it lacked
    (only_a2gnn,) = [key for key in after if key not in before]
    assert only_a2gnn[0] == "verdict"
    assert all("lacked: rearview" in row["evidence"] for row in after[only_a2gnn])


def test_the_verdict_scores_every_flow_and_groups_its_flagged_flows_into_incidents(detected, spark):
    root, _ = detected
    flows = warehouse.read_partition(spark, root, "flows", date="2026-01-03").count()
    versions = {p.name.split("=", 1)[1] for p in
                warehouse.complete_partitions(root, "flow_scores", date="2026-01-03", model="verdict")}
    verdict = [row for row in table_rows(root, "flow_scores", ["flow_id"])
               if row["model"] == "verdict" and "lacked: rearview" not in row["evidence"]]
    assert len(verdict) == flows and len({row["model_version"] for row in verdict}) == 1
    version = verdict[0]["model_version"]
    assert version in versions
    assert all((row["incident_id"] is not None) == row["is_anomaly"] for row in verdict)
    incidents = table_rows(root, "incidents", ["incident_id"])
    listed = {row["incident_id"] for row in incidents if row["model_version"] == version}
    assert {row["incident_id"] for row in verdict if row["is_anomaly"]} == listed
    assert all(row["p_a2gnn"] is not None and row["p_refined"] is not None for row in verdict)
    # each flow's relationships as of its night: the sample's test night has two earlier nights
    assert all(0 <= row["service_nights_seen"] <= 2 for row in verdict)
    assert all((row["service_days_since_first"] is None) == (row["service_nights_seen"] == 0) for row in verdict)


def test_pinned_versions_reproduce_identical_verdict_rows_and_incidents(detected):
    root, _ = detected
    pins = ",".join(f"{m}={model_store.latest_version(root, m)['version']}" for m in ("a2gnn", "rearview"))
    before = (_rows_by_partition(root), table_rows(root, "incidents", ["model_version", "incident_id"]))
    for partition in warehouse.complete_partitions(root, "flow_scores", date="2026-01-03", model="verdict"):
        shutil.rmtree(partition)
    shutil.rmtree(root / "incidents")
    for done in (root / "_published" / "date=2026-01-03", root / "reports" / "date=2026-01-03"):
        shutil.rmtree(done)   # else the night is complete and nothing reruns
    result = _build(_detect(root, model_version=pins))
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    after = (_rows_by_partition(root), table_rows(root, "incidents", ["model_version", "incident_id"]))
    both = [key for key in before[0] if key[0] == "verdict" and key in after[0]]
    assert both and all(after[0][key] == before[0][key] for key in both)
    assert [r for r in after[1] if (("verdict", r["model_version"]) in both)] == \
        [r for r in before[1] if (("verdict", r["model_version"]) in both)]


def test_a_pinned_version_trained_on_other_graph_settings_is_refused_before_any_rebuild(detected):
    root, _ = detected
    manifest = model_store.latest_version(root, "a2gnn")
    atoms = warehouse.partition_path(root, "atoms", date="2026-01-03")
    record = (atoms / warehouse.BUILD_RECORD).read_text()

    def pinned(version):
        return jobs.ScoreA2GNNTask(date=NIGHT, archive=str(SAMPLE_ARCHIVE), warehouse=str(root),
                                   model_version=version)

    pinned(manifest["version"]).requires()  # today's settings: accepted
    with settings("graph", max_semantic_edges_per_flow="5"):
        with pytest.raises(ValueError, match="GraphConfig.max_semantic_edges_per_flow: trained 10, now 5"):
            pinned(manifest["version"]).requires()  # raised while Luigi resolves dependencies
    assert (atoms / warehouse.BUILD_RECORD).read_text() == record  # the night's atoms were not rebuilt
    # a version written before a setting existed is read with that setting's default
    old = model_store.artifact_dir(root, "a2gnn", "old-graph")
    shutil.copytree(model_store.artifact_dir(root, "a2gnn", manifest["version"]), old)
    try:
        graph_config = {k: v for k, v in manifest["config"]["GraphConfig"].items() if not k.startswith("fanin")}
        model_store.save_json(old / model_store.MANIFEST, {
            **manifest, "version": "old-graph", "config": {**manifest["config"], "GraphConfig": graph_config}})
        with settings("graph", fanin_edges="true", fanin_scope="no_training_fanin"):
            with pytest.raises(ValueError, match="fanin_edges: trained False, now True"):
                pinned("old-graph").requires()
        with settings("graph", fanin_edges="false", fanin_scope="no_training_fanin"):
            pinned("old-graph").requires()  # fan-in off: its scope is moot
    finally:
        shutil.rmtree(old)


def test_a_new_model_version_never_overwrites_earlier_scores(detected):
    root, _ = detected
    old = model_store.latest_version(root, "rearview")["version"]
    before = table_rows(root / "flow_scores" / "date=2026-01-03" / "model=rearview", f"model_version={old}",
                        ["flow_id"])
    config = luigi.configuration.get_config()
    config.set("rearview", "seed", "7")
    try:
        result = _build(_detect(root, models="rearview"))
    finally:
        config.remove_option("rearview", "seed")
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    versions = [m["version"] for m in model_store.list_versions(root, "rearview")]
    assert len(versions) == 2 and old in versions
    after = table_rows(root / "flow_scores" / "date=2026-01-03" / "model=rearview", f"model_version={old}",
                       ["flow_id"])
    assert after == before


def test_reuse_policy_scores_next_night_with_existing_model(detected, tmp_path):
    from jobs.modeling import reusable_version

    root, _ = detected
    manifest = model_store.latest_version(root, "a2gnn")
    config = manifest["config"]
    assert reusable_version(root, "a2gnn", dt.date(2026, 1, 4), config, 7) == manifest["version"]
    assert reusable_version(root, "a2gnn", dt.date(2026, 1, 20), config, 7) is None
    assert reusable_version(root, "a2gnn", dt.date(2026, 1, 2), config, 7) is None
    assert reusable_version(root, "a2gnn", dt.date(2026, 1, 4), {"other": 1}, 7) is None


def test_a_reused_model_reports_the_nights_it_was_trained_on_not_the_new_window(detected):
    import json

    from jobs.a2gnn import ScoreA2GNNTask

    root, _ = detected
    manifest = model_store.latest_version(root, "a2gnn")
    later = ScoreA2GNNTask(date=dt.date(2026, 1, 20), model_version=manifest["version"],
                           archive=str(SAMPLE_ARCHIVE), warehouse=str(root))
    assert later.trainer().train_dates() == ["2026-01-20"]  # no archived night in its window
    assert later.model_train_dates() == ["2026-01-01", "2026-01-02"]
    summary = json.loads(next((root / "reports" / "date=2026-01-03").glob("*/summary.json")).read_text())
    assert summary["train_dates"] == ["2026-01-01", "2026-01-02"]


def _readme_queries() -> list[str]:
    from tests.pipeline_runs import REPO_ROOT

    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("queries analysts run", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    return [q.strip() for q in block.split(";") if q.strip()]


def test_readme_analyst_queries_run_on_published_tables(detected, spark, tmp_path):
    from pipeline.store.zeek import read_zeek_log

    root, _ = detected
    known = spark.table("traffic.flow_scores_latest").where("`date` = '2026-01-03' AND model = 'a2gnn'") \
        .orderBy("flow_id").limit(3).collect()
    conn_log = tmp_path / "conn.log"
    conn_log.write_text(
        "#separator \\x09\n#path\tconn\n"
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tcommunity_id\n"
        "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tstring\n"
        + "".join(f"{r.first_seen_ms / 1000:.6f}\tC{i}\t{r.src_ip}\t{r.src_port}\t{r.dst_ip}\t{r.dst_port}"
                  f"\ttcp\t-\t{r.community_id}\n" for i, r in enumerate(known))
        + "#close\t2026-01-04-00-00-00\n"
    )
    read_zeek_log(spark, conn_log).createOrReplaceTempView("zeek_conn")
    incidents, incident_flows, top, atoms, joined, first_seen = (spark.sql(q).collect() for q in _readme_queries())
    assert [row.rank for row in incidents] == list(range(1, len(incidents) + 1))
    assert all(row.flagged_flows >= 1 and row.hosts and row.top_evidence for row in incidents)
    if incidents and incidents[0].incident_id == "2026-01-03-0001":
        assert incident_flows and all(row.evidence for row in incident_flows)
    assert all(row.score >= row.threshold for row in top)
    assert all(row.anomalous >= 1 and row.hosts for row in atoms)
    assert {row.uid for row in joined if row.model == "a2gnn"} == {f"C{i}" for i in range(len(known))}
    assert first_seen and {row.kind for row in first_seen} <= {"host", "service", "host_pair", "client_service"}


def test_backfill_asks_for_every_archived_night_in_range_and_skips_missing_ones(tmp_path):
    backfill = jobs.BackfillTask(start=dt.date(2025, 12, 31), stop=dt.date(2026, 1, 3),
                                 archive=str(SAMPLE_ARCHIVE), warehouse=str(tmp_path), models="rearview",
                                 model_version="")
    nights = [task.date for task in backfill.requires()]
    assert nights == [dt.date(2026, 1, 1), dt.date(2026, 1, 2)]
    assert all(task.models == "rearview" for task in backfill.requires())


def test_model_pins_name_their_model():
    from jobs.detect import parse_pins

    assert parse_pins("v1", ["a2gnn"]) == {"a2gnn": "v1"}
    assert parse_pins("a2gnn=v1,rearview=v2", ["a2gnn", "rearview"]) == {"a2gnn": "v1", "rearview": "v2"}
    with pytest.raises(ValueError, match="several models"):
        parse_pins("v1", ["a2gnn", "rearview"])
    with pytest.raises(ValueError, match="not run"):
        parse_pins("rearview=v2", ["a2gnn"])
