"""ExtractFlowsTask: one night's capture files -> flows, ingest_stats, ingest_errors."""
from __future__ import annotations

import luigi

from jobs.config import NightTask, config_class, dataclass_of
from jobs.targets import PartitionTarget
from pipeline.ingest.flows import FlowConfig

flows = config_class("flows", FlowConfig)


class ExtractFlowsTask(NightTask):
    """Parse every capture of the night (Spark spreads files over executors) into flows."""

    def output(self):
        return {
            table: PartitionTarget(self.warehouse_path, table, date=self.day)
            for table in ("flows", "ingest_stats", "ingest_errors")
        }

    def run(self):
        from pipeline.ingest.extract import extract_night

        self.progress(5, f"extracting flows of {self.day} from {self.archive_path}")
        summary = extract_night(
            self.spark(), self.archive_path, self.day, self.warehouse_path, dataclass_of(flows())
        )
        self.progress(100, "ingest: " + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list))))
