"""The verdict's settings (``[verdict]`` in ``conf/luigi.cfg``)."""
from __future__ import annotations

import dataclasses


SCREENING_UNSEEN = ("no_prior", "port_fallback", "fallback")
THRESHOLD_RULES = ("validation", "night_null", "night_null_validation_shape", "night_null_upper", "night_lfdr")


@dataclasses.dataclass(frozen=True)
class VerdictConfig:
    """How evidence is calibrated, combined, thresholded and grouped into incidents.

    ``false_alarm_budget``: the largest share of benign flows the verdict may flag. The
    threshold is the combined tail probability at that quantile of the benign validation
    flows (the training window's nights scored like a test night), and never looser than
    the budget itself.
    ``local_networks``: comma-separated CIDR prefixes of the monitored site (Zeek's
    ``Site::local_nets``); a flow's direction (in->in, in->out, out->in, out->out) is part
    of its relationship pattern.
    ``pattern_pseudocount``: added to every pattern's benign count (Laplace smoothing), so
    a pattern never seen on the validation nights has a small, finite probability.
    ``screening_unseen_triplets``: what RearView's screening contributes for a flow whose
    server triplet had no trained condition (``screening_prior`` not ``triplet``):
    ``no_prior`` leaves it out (novelty enters through the history instead);
    ``port_fallback`` keeps it when the flow fell back to its ``(port, protocol)``
    condition (the application's usual shape, e.g. DNS to any resolver) and leaves it out
    below that (protocol-only or global pools say nothing about the application);
    ``fallback`` keeps every fallback condition's probability.
    ``threshold_rule``: ``validation``, ``night_null``, ``night_null_validation_shape``,
    ``night_null_upper`` or ``night_lfdr`` (:mod:`pipeline.verdict.combine`);
    ``lfdr_level``: ``night_lfdr``'s local false discovery rate cut;
    ``coordination``: ``off``, ``all``, ``new`` or ``new_pattern``: also flag the flows of
    a coordinated relationship (any; one seen on no earlier night; one the history pattern
    calls new; :func:`pipeline.verdict.scoring.coordinated_flows`);
    ``single_flow_budget_share``: with coordination on, the night threshold is set at this
    share of the budget; ``coordination_min_flows`` the
    least ``k`` it may use; ``min_night_flows``: below this a night rule falls
    back to ``validation``.
    ``volume_tail``: ``empirical`` or ``pareto`` (:func:`pipeline.verdict.evidence.pareto_tail`:
    extrapolated beyond the largest benign new-relationship volume).
    ``incident_gap_s``: flagged flows of one host pair (or one service) closer than this
    in time belong to one incident; flagged flows of one multi-flow A2GNN atom always do.
    """

    false_alarm_budget: float = 0.01
    local_networks: str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7,fe80::/10"
    pattern_pseudocount: float = 0.5
    screening_unseen_triplets: str = "port_fallback"
    incident_gap_s: float = 300.0
    threshold_rule: str = "night_null"
    volume_tail: str = "empirical"
    min_night_flows: int = 200
    # added after verdict versions existed: left out of the version while at these values
    lfdr_level: float = dataclasses.field(default=0.2, metadata={"added_later": 0.2})
    coordination: str = dataclasses.field(default="new_pattern", metadata={"added_later": "off"})
    coordination_min_flows: int = dataclasses.field(default=5, metadata={"added_later": 5})
    single_flow_budget_share: float = dataclasses.field(default=0.05, metadata={"added_later": 1.0})

    def __post_init__(self):
        if not 0.0 < self.false_alarm_budget < 1.0:
            raise ValueError(f"false_alarm_budget must be in (0, 1), got {self.false_alarm_budget}")
        if self.screening_unseen_triplets not in SCREENING_UNSEEN:
            raise ValueError(f"screening_unseen_triplets must be one of {SCREENING_UNSEEN}, "
                             f"got {self.screening_unseen_triplets!r}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {self.threshold_rule!r}")
        if self.volume_tail not in ("empirical", "pareto"):
            raise ValueError(f"volume_tail must be 'empirical' or 'pareto', got {self.volume_tail!r}")
        if not 0.0 < self.lfdr_level < 1.0:
            raise ValueError(f"lfdr_level must be in (0, 1), got {self.lfdr_level}")
        if self.coordination not in ("off", "all", "new", "new_pattern"):
            raise ValueError(f"coordination must be off, all, new or new_pattern, got {self.coordination!r}")
        if not 0.0 < self.single_flow_budget_share <= 1.0:
            raise ValueError(f"single_flow_budget_share must be in (0, 1], got {self.single_flow_budget_share}")
        if self.pattern_pseudocount <= 0:
            raise ValueError("pattern_pseudocount must be > 0")
