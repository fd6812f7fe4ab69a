"""Luigi targets for warehouse partitions and model artifacts (complete = marker exists)."""
from __future__ import annotations

from pathlib import Path

import luigi

from pipeline import model_store, warehouse


class PartitionTarget(luigi.Target):
    """A table partition written by ``pipeline.warehouse`` (exists once ``_SUCCESS`` is there)."""

    def __init__(self, warehouse_root: Path, table: str, **partition: str):
        self.table = table
        self.path = warehouse.partition_path(warehouse_root, table, **partition)

    def exists(self) -> bool:
        return warehouse.is_complete(self.path)

    def __repr__(self) -> str:
        return f"PartitionTarget({self.path})"


class ArtifactTarget(luigi.Target):
    """A model version directory (exists once its manifest is written)."""

    def __init__(self, warehouse_root: Path, model: str, version: str):
        self.model, self.version = model, version
        self.path = model_store.artifact_dir(warehouse_root, model, version)

    def exists(self) -> bool:
        return model_store.is_complete(self.path)


class MarkerTarget(luigi.LocalTarget):
    """A small JSON file written atomically (LocalTarget's temporary path + rename)."""
