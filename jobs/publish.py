"""PublishTablesTask: register a night's partitions in the Spark SQL metastore."""
from __future__ import annotations

import json

import luigi

from jobs.targets import MarkerTarget
from jobs.verdict import JudgedNightTask


class PublishTablesTask(JudgedNightTask):
    """Adds the night's partitions of every table to database ``traffic`` (configurable);
    the marker file records what was registered, with counts."""

    database = luigi.Parameter(config_path={"section": "pipeline", "name": "database"})

    def requires(self):
        return self.scored_tasks()

    def output(self):
        return MarkerTarget(str(self.warehouse_path / "_published" / f"date={self.day}"
                                / f"{self.database}-{self.versions_tag()}.json"))

    def run(self):
        from pipeline.store.metastore import publish_night

        registered = publish_night(self.spark(), self.database, self.warehouse_path, self.day)
        with self.output().open("w") as handle:
            json.dump({"database": self.database, "partitions": registered}, handle, indent=2)
        self.progress(100, f"published {self.day} to {self.database}: {registered}")
