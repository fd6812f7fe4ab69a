"""Luigi targets for warehouse partitions and model artifacts (complete = marker exists)."""
from __future__ import annotations

from pathlib import Path

import luigi

from pipeline.store import model_store, warehouse


class PartitionTarget(luigi.Target):
    """A table partition written by ``pipeline.store.warehouse`` (exists once ``_SUCCESS`` is there).

    ``build``: the settings the partition's rows depend on. When given, the partition
    exists only if it was written with exactly these (``warehouse.build_matches``), so a
    night built under other settings (a changed ``[graph]`` section, or code older than
    the record) is rebuilt instead of silently reused.
    """

    def __init__(self, warehouse_root: Path, table: str, build: dict | None = None, **partition: str):
        self.table = table
        self.build = build
        self.path = warehouse.partition_path(warehouse_root, table, **partition)

    def exists(self) -> bool:
        if not warehouse.is_complete(self.path):
            return False
        return self.build is None or warehouse.build_matches(self.path, self.build)

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
