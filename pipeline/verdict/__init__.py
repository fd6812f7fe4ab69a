"""The verdict: one calibrated answer per flow from both detectors' evidence and the
network's relationship history, and the incidents analysts triage.

Face: :class:`VerdictConfig`, :func:`fit_reference` (calibrate on benign validation
nights), :func:`score_night` (scores + incidents of one night); Spark reading and
writing in :mod:`pipeline.verdict.tables`.
"""
from pipeline.verdict.config import VerdictConfig
from pipeline.verdict.scoring import Reference, fit_reference, score_night

__all__ = ["Reference", "VerdictConfig", "fit_reference", "score_night"]
