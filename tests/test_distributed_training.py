"""The TorchDistributor launcher runs training in a torchrun worker, locally on CPU."""
from __future__ import annotations

import os

import pytest

from pipeline.detectors.distributed_training import describe_worker, distributed_context, run_training


def test_run_training_executes_the_function_in_a_separate_torchrun_worker(spark):
    worker = run_training(spark, describe_worker, num_processes=1, use_gpu=False, local_mode=True)

    assert worker["under_torchrun"] is True
    assert worker["pid"] != os.getpid()
    assert (worker["rank"], worker["world_size"]) == (0, 1)


def test_run_training_rejects_zero_processes(spark):
    with pytest.raises(ValueError, match="num_processes"):
        run_training(spark, describe_worker, num_processes=0)


def test_distributed_context_defaults_to_a_single_cpu_rank_outside_torchrun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)

    context = distributed_context("cpu")

    assert (context.rank, context.world_size, context.device, context.is_main) == (0, 1, "cpu", True)
