"""Luigi tasks of the pipeline: ``luigi --module jobs DetectTask --date YYYY-MM-DD``.

Importing this package puts ``conf/luigi.cfg`` first among Luigi's configuration files,
so the repo's defaults apply wherever luigi is started from, and a site file
(``/etc/luigi/luigi.cfg``, ``./luigi.cfg``) or ``LUIGI_CONFIG_PATH`` overrides them.
"""
import logging
import sys

import luigi.configuration
import luigi.tools.range  # noqa: F401  (RangeDailyBase --of DetectTask for backfills)
from luigi.configuration.cfg_parser import LuigiConfigParser

from jobs.config import CONF_DIR

_REPO_DEFAULTS = str(CONF_DIR / "luigi.cfg")
if _REPO_DEFAULTS not in LuigiConfigParser._config_paths:
    # Lowest precedence: files read later override earlier ones.
    LuigiConfigParser._config_paths.insert(0, _REPO_DEFAULTS)
    LuigiConfigParser.reload()

_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
for _name in ("pipeline", "models"):
    _logger = logging.getLogger(_name)
    if not _logger.handlers:  # what each stage read and wrote, with counts, in the run's log
        _logger.addHandler(_handler)
        _logger.setLevel(logging.INFO)
        _logger.propagate = False

from jobs.a2gnn import ScoreA2GNNTask, TrainA2GNNTask  # noqa: E402
from jobs.detect import BackfillTask, DetectTask  # noqa: E402
from jobs.graph import BuildGraphTask, FaninHistoryTask, PartitionTask, SignatureStatsTask  # noqa: E402
from jobs.ingest import ExtractFlowsTask  # noqa: E402
from jobs.publish import PublishTablesTask  # noqa: E402
from jobs.rearview import ScoreRearViewTask, TrainRearViewTask  # noqa: E402
from jobs.relationships import RelationshipsTask  # noqa: E402
from jobs.report import ReportTask  # noqa: E402
from jobs.verdict import ScoreVerdictTask  # noqa: E402

__all__ = [
    "BackfillTask", "BuildGraphTask", "DetectTask", "ExtractFlowsTask", "FaninHistoryTask", "PartitionTask",
    "PublishTablesTask", "RelationshipsTask", "ReportTask", "ScoreA2GNNTask", "ScoreRearViewTask", "ScoreVerdictTask",
    "SignatureStatsTask", "TrainA2GNNTask", "TrainRearViewTask",
]
