"""What shapes a model version: settings of the result, not of its execution."""
from __future__ import annotations

import dataclasses

from jobs.config import config_as_dict
from pipeline.detectors.rearview.config import RearViewConfig
from pipeline.graph.build import GraphConfig
from pipeline.graph.partition import PartitionConfig
from pipeline.store import model_store


def test_execution_only_settings_do_not_enter_the_model_version():
    base = config_as_dict(PartitionConfig())
    assert "driver_components_max_edges" not in base["PartitionConfig"]
    assert config_as_dict(dataclasses.replace(PartitionConfig(), driver_components_max_edges=0)) == base
    assert config_as_dict(dataclasses.replace(PartitionConfig(), resolution=0.5)) != base


def test_task_sizes_do_not_enter_the_model_version():
    assert config_as_dict(dataclasses.replace(PartitionConfig(), flows_per_leiden_task=1)) == config_as_dict(PartitionConfig())
    assert config_as_dict(dataclasses.replace(GraphConfig(), incidences_per_task=1)) == config_as_dict(GraphConfig())


def test_a_rearview_setting_added_later_at_its_old_value_keeps_existing_version_ids():
    from jobs.config import dataclass_of
    from jobs.rearview import TrainRearViewTask, rearview
    from pipeline.detectors.rearview.config import FIELDS_ADDED_LATER

    assert FIELDS_ADDED_LATER == {"burst_window_ms": 0}
    assert not set(FIELDS_ADDED_LATER) & set(config_as_dict(RearViewConfig())["RearViewConfig"])
    bursty = dataclasses.replace(RearViewConfig(), burst_window_ms=10_000)
    assert config_as_dict(bursty)["RearViewConfig"]["burst_window_ms"] == 10_000
    # the version a configuration without the field (before it existed) was given
    task = TrainRearViewTask.__new__(TrainRearViewTask)
    assert rearview().burst_window_ms == 0
    before = {"RearViewConfig": {k: v for k, v in dataclasses.asdict(dataclass_of(rearview())).items()
                                 if k not in FIELDS_ADDED_LATER}}
    dates = ["2026-01-01", "2026-01-02"]
    assert model_store.model_version("rearview", dates, task.config_dict()) == model_store.model_version(
        "rearview", dates, before)
