"""RearView's settings as a plain dataclass (no torch import).

Kept apart from ``pipeline.detectors.rearview.training`` so that reading configuration (Luigi's task
parameters, model versions) does not import torch and PyTorch Geometric (~8 s per
``luigi --module jobs`` start on this machine). The decision rules are described in
``pipeline.detectors.rearview.decision``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from pipeline.detectors import features
from pipeline.detectors.rearview.windows import eviction_count

DECISION_RULES = ("paper", "calibrated", "fused")

# the flows columns RearView reads (training and scoring)
FLOW_COLUMNS = (
    "flow_id", "src_ip", "dst_ip", "src_port", "dst_port", "protocol",
    "first_seen_ms", "last_seen_ms", "community_id",
) + features.FEATURE_COLUMNS


@dataclass(frozen=True)
class RearViewConfig:
    """RearView settings (defaults from METHODS.md "RearView"; the lead maps luigi.cfg here).

    ``validation_fraction``: share of each training night (its last flows in start
    order) held out as benign validation flows for the threshold.
    ``device``: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    ``num_processes``/``use_gpu``: passed to ``pipeline.detectors.distributed_training.run_training``.
    ``cpu_threads``: torch intra-op threads per training or scoring process on CPU (1:
    the networks are small, and more threads on a shared machine cost far more in
    contention than they gain; it also keeps CPU runs bit-reproducible).
    ``decision_rule``: ``"paper"`` | ``"calibrated"`` | ``"fused"`` (module docstring).
    Default ``calibrated`` without ``novelty_prior`` (unchanged since before the novelty
    edge feature; METHODS.md's rule, classifier flags OR screening alarm, with both
    thresholds read off the benign validation flows). Since the refined score carries
    the novelty of the flow's server (:func:`edge_features`), adding the novelty prior to
    the screening clause or fusing both terms (Fisher's method assumes independent
    evidence) would count the same novelty twice (docs/benchmarks.md, '## RearView').
    ``false_alarm_rate``: benign validation false-alarm rate of the screening clause
    (``calibrated``) or of the whole fused statistic (``fused``).
    ``novelty_prior``: the screening surprise adds ``-ln`` of the validation share of the
    flow's fallback cell (not used by ``paper``).
    ``ensemble_size``: refinement members (encoder + classifier) averaged into the refined
    score (:func:`ensemble_refined`); 5 was fixed before any dev measurement of it, as a
    cost/variance compromise (refinement costs K times one member).
    ``burst_window_ms``: half-width of the time window of the burst counts added to each
    session-graph edge (``pipeline.detectors.rearview.bursts``); 0 = off (the session graph counts
    a host's flows over the whole FIFO window only).
    """

    queue_size: int = 2000
    evict_fraction: float = 0.8
    min_triplet_sessions: int = 50
    suspicious_p: float = 0.6
    screening_alarm_p: float = 0.95
    kde_bandwidth: float = 0.1
    vae_epochs: int = 50
    vae_learning_rate: float = 1e-4
    vae_batch_size: int = 32
    condition_dropout: float = 0.1
    sage_epochs: int = 100
    sage_learning_rate: float = 1e-3
    classifier: str = "iforest"
    ensemble_size: int = 5
    validation_fraction: float = 0.2
    threshold_quantile: float = 0.99
    seed: int = 0
    device: str = "auto"
    num_processes: int = 1
    use_gpu: bool = False
    cpu_threads: int = 1
    decision_rule: str = "calibrated"
    false_alarm_rate: float = 0.005
    novelty_prior: bool = False
    burst_window_ms: int = field(default=0, metadata={"added_later": 0})

    def __post_init__(self) -> None:
        if self.decision_rule not in DECISION_RULES:
            raise ValueError(
                f"RearViewConfig.decision_rule must be one of {DECISION_RULES}, got {self.decision_rule!r}")
        if not 0.0 < self.false_alarm_rate < 1.0:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if self.classifier not in ("iforest", "cblof"):
            raise ValueError(f"RearViewConfig.classifier must be 'iforest' or 'cblof', got {self.classifier!r}")
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not 0.0 < self.threshold_quantile <= 1.0:
            raise ValueError(f"threshold_quantile must be in (0, 1], got {self.threshold_quantile}")
        if self.burst_window_ms < 0:
            raise ValueError(f"burst_window_ms must be >= 0, got {self.burst_window_ms}")
        eviction_count(self.queue_size, self.evict_fraction)


FIELDS_ADDED_LATER = {f.name: f.metadata["added_later"] for f in fields(RearViewConfig) if "added_later" in f.metadata}
"""Fields added after RearView versions existed, with the value those versions were
trained with (``metadata={"added_later": v}``). An artifact whose ``config.json`` lacks
one reads it as this value (``inference.load_artifacts``); ``jobs.config.config_as_dict``
leaves a field at this value out of the version hash, so those versions keep their ids."""
