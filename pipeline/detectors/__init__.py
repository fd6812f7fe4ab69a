"""Stage 3, the detectors: one package per detector, each with a small face in its
``__init__`` (its config, ``train_<name>``, ``score_<name>``) and its internals behind it.

A detector plugs in with a Train/Score task pair in ``jobs/`` registered in
``jobs.scoring.SCORE_TASKS``; its scores are rows of ``flow_scores`` (schema in
``pipeline.store.schema``) and its evidence reaches the verdict through
``pipeline.verdict`` (see ``docs/architecture.md``). ``features`` and
``distributed_training`` are shared by every detector.
"""
from __future__ import annotations

import importlib


def lazy_face(package: str, where: dict[str, str]):
    """A module ``__getattr__`` for a detector package: each name in ``where`` is imported
    from its module (``{"train_x": "pipeline.detectors.x.training"}``) when first asked for,
    so that reading a detector's configuration (every luigi process) does not import torch."""

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
