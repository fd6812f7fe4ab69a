"""What shapes a model version: settings of the result, not of its execution."""
from __future__ import annotations

import dataclasses

from jobs.config import config_as_dict
from pipeline.graph import GraphConfig
from pipeline.partition import PartitionConfig


def test_execution_only_settings_do_not_enter_the_model_version():
    base = config_as_dict(PartitionConfig())
    assert "driver_components_max_edges" not in base["PartitionConfig"]
    assert config_as_dict(dataclasses.replace(PartitionConfig(), driver_components_max_edges=0)) == base
    assert config_as_dict(dataclasses.replace(PartitionConfig(), resolution=0.5)) != base


def test_task_sizes_do_not_enter_the_model_version():
    assert config_as_dict(dataclasses.replace(PartitionConfig(), flows_per_leiden_task=1)) == config_as_dict(PartitionConfig())
    assert config_as_dict(dataclasses.replace(GraphConfig(), incidences_per_task=1)) == config_as_dict(GraphConfig())
