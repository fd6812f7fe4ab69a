"""RelationshipsTask: one night's flows -> relationship_nights (hosts, services, pairs seen).

A night's rows depend only on that night's flows, so nights can be (re)processed in any
order and the table is the same; a night's *history* is read by the stages that use it
from the nights ``history_dates`` names (``pipeline.relationships.flow_history``).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import luigi

from jobs.config import NightTask
from jobs.ingest import ExtractFlowsTask
from jobs.targets import PartitionTarget


class relationships(luigi.Config):  # noqa: N801  (named after its luigi.cfg section)
    """``[relationships]`` in luigi.cfg."""

    history_days = luigi.IntParameter(
        description="nights before --date whose relationship_nights make a night's history")


def history_dates(archive: Path, date: dt.date | str, history_days: int) -> list[str]:
    """Nights in ``[date - history_days, date)`` that exist in the archive, oldest first
    (``YYYY-MM-DD``; empty for a first night). ``date``: a ``date`` or ``YYYY-MM-DD``."""
    night = date if isinstance(date, dt.date) else dt.date.fromisoformat(date)
    window = [(night - dt.timedelta(days=n)).isoformat() for n in range(history_days, 0, -1)]
    return [day for day in window if (Path(archive) / day).is_dir()]


class RelationshipsTask(NightTask):
    """What each host, service, host pair and client -> service did on the night:
    ``relationship_nights/date=D``, written atomically; complete once it exists."""

    def requires(self):
        return ExtractFlowsTask(date=self.date, **self.night())

    def output(self):
        return PartitionTarget(self.warehouse_path, "relationship_nights", date=self.day)

    def run(self):
        from pipeline.relationships import night_relationships
        from pipeline.store import warehouse

        spark = self.spark()
        flows = warehouse.read_partition(spark, self.warehouse_path, "flows", date=self.day)
        self.progress(10, f"relationships seen on {self.day}")
        path = warehouse.write_spark_partition(night_relationships(flows), self.warehouse_path,
                                               "relationship_nights", date=self.day)
        written = warehouse.read_partition(spark, self.warehouse_path, "relationship_nights", date=self.day)
        counts = {r["kind"]: r["count"] for r in written.groupBy("kind").count().collect()}
        self.progress(100, f"relationships of {self.day}: entities by kind {counts} -> {path}")
