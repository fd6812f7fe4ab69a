"""Luigi configuration: paths shared by every task, and stage configs from dataclasses.

Every default lives in ``conf/luigi.cfg``. Shared parameters (``archive``,
``warehouse``, ``train_days``, ...) read the ``[pipeline]`` section; each stage's
hyper-parameters are a frozen dataclass in ``pipeline/`` or ``models/`` exposed here as
a ``luigi.Config`` of the same fields, so ``[a2gnn] epochs = 30`` in the cfg or
``--a2gnn-epochs 30`` on the command line both reach the model.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import typing
from pathlib import Path

import luigi

log = logging.getLogger("luigi-interface")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"


def _pipeline(name: str) -> dict:
    return {"config_path": {"section": "pipeline", "name": name}}


class NightTask(luigi.Task):
    """A task about one night: every pipeline task takes ``--date --archive --warehouse``."""

    date = luigi.DateParameter(description="night to process (UTC date, YYYY-MM-DD)")
    archive = luigi.Parameter(description="archive root holding <YYYY-MM-DD>/ folders", **_pipeline("archive"))
    warehouse = luigi.Parameter(description="warehouse root for every table and model", **_pipeline("warehouse"))

    @property
    def day(self) -> str:
        return self.date.isoformat()

    @property
    def warehouse_path(self) -> Path:
        return Path(self.warehouse).resolve()

    @property
    def archive_path(self) -> Path:
        return Path(self.archive).resolve()

    def night(self, **extra):
        """Keyword arguments that point another task at this task's paths."""
        return {"archive": self.archive, "warehouse": self.warehouse, **extra}

    def spark(self):
        from pipeline.spark import get_spark

        return get_spark(self.warehouse_path, overrides=spark_overrides())

    def progress(self, percent: int, message: str) -> None:
        """Luigi progress bar and status message (visible in luigid's UI) plus a log line."""
        log.info("%s: %s", self.task_id, message)
        self.set_progress_percentage(percent)
        self.set_status_message(message)


@NightTask.event_handler(luigi.Event.PROCESSING_TIME)
def log_processing_time(task: luigi.Task, seconds: float) -> None:
    """One log line per finished task, ``<task_id> ran in <s> s``: the stage timings of a
    night in its log (``bench/bench_detect.py`` reads them)."""
    log.info("%s ran in %.1f s", task.task_id, seconds)


class TrainingWindowTask(NightTask):
    train_days = luigi.IntParameter(description="nights before --date to train on", **_pipeline("train_days"))


def spark_overrides() -> dict[str, str]:
    """``[spark]`` section of luigi.cfg (e.g. ``master = spark://host:7077``) as Spark settings."""
    config = luigi.configuration.get_config()
    if not config.has_section("spark"):
        return {}
    return {
        (key if key.startswith("spark.") else f"spark.{key}"): value
        for key, value in config.items("spark")
        if value != ""
    }


def training_dates(archive: Path, date: dt.date, train_days: int) -> list[str]:
    """Nights in ``[date - train_days, date)`` that exist in the archive, oldest first.

    When none exists the night itself is returned (fully unsupervised mode) with a warning.
    """
    window = [(date - dt.timedelta(days=n)).isoformat() for n in range(train_days, 0, -1)]
    existing = [day for day in window if (Path(archive) / day).is_dir()]
    if not existing:
        log.warning(
            "no training night in the %d nights before %s under %s: training on %s itself "
            "(fully unsupervised mode)", train_days, date, archive, date,
        )
        return [date.isoformat()]
    return existing


_PARAMETER_TYPES = {bool: luigi.BoolParameter, int: luigi.IntParameter, float: luigi.FloatParameter}


def config_class(section: str, dataclass_type) -> type:
    """A ``luigi.Config`` named ``section`` with one parameter per dataclass field."""
    hints = typing.get_type_hints(dataclass_type)
    attributes = {"__doc__": f"[{section}] in luigi.cfg: fields of {dataclass_type.__name__}",
                  "dataclass_type": dataclass_type}
    for field in dataclasses.fields(dataclass_type):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kind = hints.get(field.name, type(default))
        parameter = _PARAMETER_TYPES.get(kind if kind in _PARAMETER_TYPES else type(default), luigi.Parameter)
        attributes[field.name] = parameter(default=default, significant=True)
    return type(section, (luigi.Config,), attributes)


def dataclass_of(config: luigi.Config):
    """The frozen dataclass instance a ``config_class`` object describes."""
    cls = type(config).dataclass_type
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}
    return cls(**values)


def config_as_dict(*configs) -> dict:
    """JSON-able dict of several stage dataclasses, keyed by their class names.

    Fields marked ``metadata={"execution_only": True}`` (how a result is computed, not
    what it is) are left out, so changing them does not give a new model version. A field
    marked ``metadata={"added_later": v}`` (added after versions existed, which were built
    as if it held ``v``) is left out while it holds ``v``, so those versions keep their ids.
    """
    return {type(c).__name__: {f.name: getattr(c, f.name) for f in dataclasses.fields(c)
                               if not f.metadata.get("execution_only") and not _at_added_later_value(c, f)}
            for c in configs}


def _at_added_later_value(config, field: dataclasses.Field) -> bool:
    return "added_later" in field.metadata and getattr(config, field.name) == field.metadata["added_later"]
