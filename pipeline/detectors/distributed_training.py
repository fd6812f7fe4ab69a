"""One launcher for every torch training job: Spark's ``TorchDistributor``.

``run_training(spark, train_fn, *args)`` hands ``train_fn(*args)`` to
``pyspark.ml.torch.distributor.TorchDistributor``. The same code path serves both
deployments:

* this machine (``local_mode=True``, ``use_gpu=False``, ``num_processes=1``): the
  distributor starts one local ``torchrun`` process on the driver, which runs
  ``train_fn`` on CPU;
* a cluster with GPU executors (``local_mode=False``, ``use_gpu=True``,
  ``num_processes=N``): the distributor starts ``N`` barrier tasks, each running
  ``train_fn`` as one rank of a DDP job (``torch.distributed`` is initialised by
  torchrun's environment: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

Contract for ``train_fn``: a module-level function (it is pickled by reference and
imported in the worker, so it must live in an importable module, not in ``__main__``),
whose arguments and return value are picklable plain data (paths, dicts, numpy
arrays). Spark DataFrames cannot cross the process boundary: materialise training
data to a file first and pass its path. The value returned by rank 0 is returned here.

Inside ``train_fn`` use :func:`distributed_context` to learn the rank, world size and
device, and :func:`init_process_group_if_needed` before wrapping a model in DDP.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def run_training(
    spark,
    train_fn: Callable[..., Any],
    *args: Any,
    num_processes: int = 1,
    use_gpu: bool = False,
    local_mode: bool = True,
) -> Any:
    """Run ``train_fn(*args)`` through ``TorchDistributor``; return rank 0's result.

    ``spark`` is the active session (the distributor reads its master and GPU
    resources from it). Raises ``ValueError`` for ``num_processes < 1`` and
    ``RuntimeError`` (from the distributor, with the worker's output tail) when
    training fails in the worker.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    from pyspark.ml.torch.distributor import TorchDistributor

    if spark is None:
        raise ValueError("run_training needs an active SparkSession")
    log.info(
        "TorchDistributor: %s num_processes=%d use_gpu=%s local_mode=%s master=%s",
        getattr(train_fn, "__qualname__", train_fn), num_processes, use_gpu, local_mode,
        spark.sparkContext.master,
    )
    # The worker is a fresh interpreter started by torchrun: make sure it imports this
    # checkout's packages and does not oversubscribe the CPU with extra threads.
    repo_root = str(Path(__file__).resolve().parents[2])
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "OMP_NUM_THREADS")}
    paths = [repo_root] + [p for p in (saved["PYTHONPATH"] or "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if saved["OMP_NUM_THREADS"] is None:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    try:
        distributor = TorchDistributor(
            num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu
        )
        return distributor.run(train_fn, *args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class DistributedContext:
    """Where this worker stands in the training job."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # "cuda:<local_rank>" or "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context(prefer: str = "auto") -> DistributedContext:
    """Rank, world size and device from torchrun's environment (defaults: one CPU rank).

    ``prefer``: ``"auto"`` picks CUDA when available, ``"cpu"``/``"cuda"`` force it.
    """
    import torch

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer == "cuda" or (prefer == "auto" and torch.cuda.is_available())
    device = f"cuda:{local_rank % max(1, torch.cuda.device_count())}" if use_cuda else "cpu"
    return DistributedContext(rank, world_size, local_rank, device)


def init_process_group_if_needed(context: DistributedContext) -> bool:
    """Initialise ``torch.distributed`` when the job has more than one rank.

    Returns True when a process group is (now) active. Backend: NCCL on CUDA, gloo on CPU.
    """
    import torch.distributed as dist

    if context.world_size <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if context.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return True


def describe_worker() -> dict:
    """Process id, rank, world size and whether torchrun started this process.

    A smoke check for the launcher: ``run_training(spark, describe_worker)``.
    """
    context = distributed_context("cpu")
    return {
        "pid": os.getpid(),
        "rank": context.rank,
        "world_size": context.world_size,
        "under_torchrun": "TORCHELASTIC_RUN_ID" in os.environ,
    }
