"""Luigi tasks of the pipeline: ``luigi --module jobs DetectTask --date YYYY-MM-DD``.

Importing this package adds ``conf/luigi.cfg`` to Luigi's configuration, so the
defaults apply wherever luigi is started from (``LUIGI_CONFIG_PATH`` still adds more).
"""
import luigi.configuration
import luigi.tools.range  # noqa: F401  (RangeDailyBase --of DetectTask for backfills)

from jobs.config import CONF_DIR

luigi.configuration.add_config_path(str(CONF_DIR / "luigi.cfg"))

from jobs.a2gnn import ScoreA2GNNTask, TrainA2GNNTask  # noqa: E402
from jobs.detect import BackfillTask, DetectTask  # noqa: E402
from jobs.graph import BuildGraphTask, PartitionTask, SignatureStatsTask  # noqa: E402
from jobs.ingest import ExtractFlowsTask  # noqa: E402
from jobs.publish import PublishTablesTask  # noqa: E402
from jobs.rearview import ScoreRearViewTask, TrainRearViewTask  # noqa: E402
from jobs.report import ReportTask  # noqa: E402

__all__ = [
    "BackfillTask", "BuildGraphTask", "DetectTask", "ExtractFlowsTask", "PartitionTask",
    "PublishTablesTask", "ReportTask", "ScoreA2GNNTask", "ScoreRearViewTask",
    "SignatureStatsTask", "TrainA2GNNTask", "TrainRearViewTask",
]
