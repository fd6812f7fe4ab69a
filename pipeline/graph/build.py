"""The heterogeneous interaction graph of a night's flows, in GraphFrames' schema.

Vertices (``pipeline.store.schema.GRAPH_VERTICES``): ``host:<ip>`` (type ``host``) and
``flow:<flow_id>`` (type ``flow``). Edges (``pipeline.store.schema.GRAPH_EDGES``):

* physical: ``host:<src_ip> -[src]-> flow:<id> -[dst]-> host:<dst_ip>``, weight 1;
* relay: ``flow:A -[relay]-> flow:B`` when A goes *into* host H (H is A's responder),
  B goes *out of* H (H is B's initiator) and B starts 0 <= dt <= ``relay_window_s``
  after A; weight ``exp(-dt / relay_decay_s)``;
* similarity: ``flow:A -[similarity]- flow:B`` (stored once, A < B) when both touch the
  same host, start within ``similarity_window_s``, both have more than ``min_packets``
  packets, their packet counts differ by at most ``max_packet_count_gap`` and the Pearson
  correlation of their normalised wavelet signatures (``pipeline.graph.signatures``) exceeds
  ``min_correlation``; weight = the correlation;
* fanin (``fanin_edges``; off in ``GraphConfig()``, on in production's conf with
  ``fanin_scope = "no_training_fanin"``, see below):
  ``flow:A -[fanin]- flow:B`` (stored once, A < B) when both go to the same responder
  *service* (same ``dst_ip``, ``dst_port``,
  ``protocol``; the responder is the flow's ``dst``), come from *different* initiators
  (``src_ip``) and start 0 <= dt <= ``fanin_window_s`` apart; weight
  ``exp(-dt / fanin_decay_s)``.

Why fan-in (added after the dev test night's spoofed SYN flood was missed: 60 one-packet
flows from 60 sources to one service in a short burst, each a singleton atom). The
other rules cannot group such a burst: similarity needs more than 8 packets, relay needs
a flow *leaving* the host, the victim is too busy for the projection's host clique and
every source is new, so no host pair repeats. Many initiators converging on one service
at the same moment is the structural signature of floods, distributed scans and
reflection, so the rule is stated for every service, not for floods: it is purely
temporal coupling at a shared endpoint, the counterpart of relay (one host, flow in then
flow out) for arrivals, and it takes relay's time scale (1 s window, 1 s decay) rather
than a value read off any night. It says nothing about content: a busy resolver or web
server also receives many flows from different clients within a second, gets fan-in
atoms on the training nights too, and those become anchors. What separates a flood from
that benign fan-in is left to the detector's features (a flood atom is tens of
one-packet, SYN-only, unanswered flows; a resolver's is request/response pairs), which
the atom-level term compares against the benign anchors. Same-initiator pairs are left
out: the partition's conversation co-membership already joins them.

Fan-in is the weakest evidence of the three (co-timing at one service only), so it
never displaces content or causal evidence: when a flow has more than k candidates,
relay and similarity edges are ranked before every fan-in edge (``SEMANTIC_PRIORITY``),
and fan-in edges fill the slots left. A flow with no other semantic edge (the flood's
case) gets up to k fan-in edges; a flow with k similarity edges gets none.

Measured on the dev archive (docs/benchmarks.md, '### Fan-in edges (flood grouping)'):
it groups the flood (2 pure atoms of 27 and 33 flows) and A2GNN then flags all 60 flood
flows at seed 42, but it also enlarges benign resolver atoms (a 288-flow atom of the
resolver's DNS conversations becomes 300 flows, chained across clients by 44 fan-in
edges) and at A2GNN seeds 1 and 2 the atom term flags that atom and a 76-flow SSDP atom:
mean F1 over seeds 42 / 1 / 2 fell from 0.672 to 0.646 and benign false alarms rose from
1.8 % to 8.0 %. With ``fanin_edges`` False the graph is exactly the relay + similarity
graph (``GraphConfig()``'s default). Scoped to services without fan-in on the training
window (below), the test night gets 264 fan-in edges instead of 373, 262 of them within
the flood, and A2GNN's mean F1 over the three seeds rose to 0.686 with benign false alarms
at 0.9 %: that is production's setting (``conf/luigi.cfg``).

Scope (``fanin_scope``). ``"all"``: every service, as above. ``"no_training_fanin"``:
only services that had *no* fan-in on the night's training window (no two flows from
different initiators starting within ``fanin_window_s`` of each other,
``fanin_services``), so fan-in that the training nights show as normal (a resolver's
clients, SSDP announcements) adds no edges, and a burst of initiators converging on a
service that was quiet in training does. The history is a table per night
(``fanin_services``, written by ``jobs.graph.FaninHistoryTask``); a night that is its own
training window (fully unsupervised mode) therefore gets no fan-in edges.

Bounds. The candidate search runs per host over flows sorted by start time and looks at
most ``max_candidates_per_flow`` positions ahead, so it costs O(incidences x candidates)
however busy a host is (a resolver with 100,000 flows in one second gives 100,000 x 64
candidate checks, not 10^10). A semantic edge is then kept only when it is among the
``max_semantic_edges_per_flow`` (k) strongest of *both* its flows, so every flow has at
most k semantic edges and ``edges <= 2 x flows + k x flows / 2``.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.graph import signatures

log = logging.getLogger(__name__)

SEMANTIC_RELATIONSHIPS = ("relay", "similarity", "fanin")
"""Every flow--flow edge kind ``build_graph`` can write (``pipeline.graph.partition`` projects
each of them to a weighted flow--flow edge)."""
PHYSICAL_RELATIONSHIPS = ("src", "dst")
SEMANTIC_PRIORITY = {"relay": 0, "similarity": 0, "fanin": 1}
"""Rank class in the k-strongest selection: lower classes first, then weight."""
FANIN_SCOPES = ("all", "no_training_fanin")
"""``GraphConfig.fanin_scope`` values: fan-in at every service, or only at services
without fan-in on the training window."""
SERVICE_COLUMNS = ("dst_ip", "dst_port", "protocol")
"""A responder service; missing port or protocol count as -1 (as in ``fanin_candidates``)."""


@dataclass(frozen=True)
class GraphConfig:
    """Graph construction knobs (defaults: METHODS.md, Atomic-Anchor 1).

    relay_window_s: a relay's second flow starts at most this long after the first (s).
    relay_decay_s: relay weight is ``exp(-dt / relay_decay_s)`` (s).
    similarity_window_s: similar flows start at most this far apart (s).
    min_packets: similarity needs strictly more packets than this in both flows.
    max_packet_count_gap: similar flows' packet counts differ by at most this.
    min_correlation: similarity needs Pearson correlation strictly above this.
    max_semantic_edges_per_flow: k, the strongest semantic edges each flow keeps.
    max_candidates_per_flow: positions looked ahead per host in start order (search bound).
    host_buckets: hosts are hashed into at least this many groups, one pandas task each,
    incidences_per_task: and into at least ``ceil(2 flows / incidences_per_task)``, so a
        task's memory is bounded as the night grows (execution only: a host's candidates
        do not depend on which hosts share its task).
    fanin_edges: add fan-in edges (default False: the graph of relay and similarity only;
        measured in docs/benchmarks.md, 'Fan-in edges (flood grouping)').
    fanin_window_s: fan-in flows start at most this far apart (s; relay's time scale).
    fanin_decay_s: fan-in weight is ``exp(-dt / fanin_decay_s)`` (s).
    fanin_scope: ``"all"`` services, or ``"no_training_fanin"``: only services with no
        fan-in pair on the training window (``fanin_services``; needs that history).
    """

    relay_window_s: float = 1.0
    relay_decay_s: float = 1.0
    similarity_window_s: float = 10.0
    min_packets: int = 8
    max_packet_count_gap: int = 10
    min_correlation: float = 0.95
    max_semantic_edges_per_flow: int = 10
    max_candidates_per_flow: int = 64
    host_buckets: int = 16
    incidences_per_task: int = field(default=50_000, metadata={"execution_only": True})
    fanin_edges: bool = False
    fanin_window_s: float = 1.0
    fanin_decay_s: float = 1.0
    fanin_scope: str = "all"

    @property
    def scoped_fanin(self) -> bool:
        """Fan-in edges on and limited to services quiet in training: the graph then needs
        the training window's ``fanin_services``."""
        return self.fanin_edges and self.fanin_scope == "no_training_fanin"

    def effective(self) -> "GraphConfig":
        """The same graph's settings with moot ones at their defaults: with fan-in off its
        window, decay and scope change nothing (used to compare what two graphs were
        built with)."""
        if self.fanin_edges:
            return self
        default = GraphConfig()
        return dataclasses.replace(self, fanin_window_s=default.fanin_window_s,
                                   fanin_decay_s=default.fanin_decay_s, fanin_scope=default.fanin_scope)


def host_vertex(ip: str) -> str:
    return f"host:{ip}"


def flow_vertex(flow_id: str) -> str:
    return f"flow:{flow_id}"


# ----------------------------------------------------------------- pure candidate search
def _window_pairs(
    keys: np.ndarray, times_ms: np.ndarray, window_ms: float, max_offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of rows with equal ``keys`` and ``0 <= t_j - t_i <= window``.

    Rows must be sorted by (key, time). Looks at most ``max_offset`` rows ahead, so the
    result has at most ``n x max_offset`` pairs. Stops early once no row has a partner at
    some offset (larger offsets cannot have one either).
    """
    n = len(keys)
    firsts, seconds = [], []
    for offset in range(1, min(max_offset, n - 1) + 1):
        left = np.arange(n - offset)
        right = left + offset
        hit = (keys[left] == keys[right]) & (times_ms[right] - times_ms[left] <= window_ms)
        if not hit.any():
            break
        firsts.append(left[hit])
        seconds.append(right[hit])
    if not firsts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def relay_candidates(incidences: pd.DataFrame, config: GraphConfig) -> pd.DataFrame:
    """Relay edges among ``incidences`` (host, role in|out, flow_id, first_seen_ms, ...).

    Returns columns ``a`` (flow into the host), ``b`` (flow out of it), ``weight``.
    """
    frame = incidences.sort_values(["host", "first_seen_ms", "role", "flow_id"], kind="stable")
    keys = pd.factorize(frame["host"])[0]
    times = frame["first_seen_ms"].to_numpy(np.int64)
    role = frame["role"].to_numpy()
    flow = frame["flow_id"].to_numpy()
    left, right = _window_pairs(keys, times, config.relay_window_s * 1000.0, config.max_candidates_per_flow)
    keep = (role[left] == "in") & (role[right] == "out") & (flow[left] != flow[right])
    left, right = left[keep], right[keep]
    dt_s = (times[right] - times[left]) / 1000.0
    return pd.DataFrame(
        {"a": flow[left], "b": flow[right], "weight": np.exp(-dt_s / config.relay_decay_s)}
    )


def similarity_candidates(
    incidences: pd.DataFrame, config: GraphConfig, signature_stats: dict
) -> pd.DataFrame:
    """Similarity edges among ``incidences`` (host, flow_id, first_seen_ms, packets, splt).

    Returns columns ``a`` < ``b`` (flow ids) and ``weight`` (Pearson correlation).
    """
    frame = incidences[incidences["bidirectional_packets"] > config.min_packets]
    frame = frame.sort_values(["host", "first_seen_ms", "flow_id"], kind="stable")
    empty = pd.DataFrame({"a": [], "b": [], "weight": []})
    if len(frame) < 2:
        return empty
    keys = pd.factorize(frame["host"])[0]
    times = frame["first_seen_ms"].to_numpy(np.int64)
    packets = frame["bidirectional_packets"].to_numpy(np.int64)
    flow = frame["flow_id"].to_numpy()
    left, right = _window_pairs(
        keys, times, config.similarity_window_s * 1000.0, config.max_candidates_per_flow
    )
    close = np.abs(packets[left] - packets[right]) <= config.max_packet_count_gap
    left, right = left[close], right[close]
    if len(left) == 0:
        return empty
    rows = np.unique(np.concatenate([left, right]))
    position = np.full(len(frame), -1)
    position[rows] = np.arange(len(rows))
    unit = signatures.correlation_ready(
        signatures.normalised_signatures(
            signatures.splt_matrix(frame["splt_signed_ps"].iloc[rows]), signature_stats
        )
    )
    correlation = np.einsum("ij,ij->i", unit[position[left]], unit[position[right]])
    keep = (correlation > config.min_correlation) & (flow[left] != flow[right])
    a, b = flow[left][keep], flow[right][keep]
    return pd.DataFrame(
        {"a": np.minimum(a, b), "b": np.maximum(a, b), "weight": correlation[keep]}
    )


def fanin_candidates(incidences: pd.DataFrame, config: GraphConfig) -> pd.DataFrame:
    """Fan-in edges among ``incidences`` (host, role, peer, dst_port, protocol, flow_id,
    first_seen_ms): flows *into* one service from different peers within the window.

    Searched per service (host, dst_port, protocol) over flows sorted by start time, at
    most ``max_candidates_per_flow`` positions ahead. When ``incidences`` has a boolean
    ``fanin_eligible`` column, only its True rows take part (``fanin_scope``). Returns
    columns ``a`` < ``b`` (flow ids) and ``weight`` (``exp(-dt / fanin_decay_s)``).
    """
    empty = pd.DataFrame({"a": [], "b": [], "weight": []})
    frame = incidences[incidences["role"] == "in"]
    if "fanin_eligible" in frame.columns:  # scope: services without fan-in in training
        frame = frame[frame["fanin_eligible"].fillna(True).astype(bool)]
    if len(frame) < 2:
        return empty
    frame = frame.assign(
        dst_port=frame["dst_port"].fillna(-1).astype(np.int64),
        protocol=frame["protocol"].fillna(-1).astype(np.int64),
    ).sort_values(["host", "dst_port", "protocol", "first_seen_ms", "flow_id"], kind="stable")
    keys = frame.groupby(["host", "dst_port", "protocol"], sort=False).ngroup().to_numpy(np.int64)
    times = frame["first_seen_ms"].to_numpy(np.int64)
    peer = frame["peer"].to_numpy()
    flow = frame["flow_id"].to_numpy()
    left, right = _window_pairs(keys, times, config.fanin_window_s * 1000.0, config.max_candidates_per_flow)
    keep = (peer[left] != peer[right]) & (flow[left] != flow[right])
    left, right = left[keep], right[keep]
    dt_s = (times[right] - times[left]) / 1000.0
    a, b = flow[left], flow[right]
    return pd.DataFrame(
        {"a": np.minimum(a, b), "b": np.maximum(a, b), "weight": np.exp(-dt_s / config.fanin_decay_s)}
    )


def semantic_candidates(
    incidences: pd.DataFrame, config: GraphConfig, signature_stats: dict
) -> pd.DataFrame:
    """All relay, similarity and (when enabled) fan-in candidates of one group of hosts.

    ``incidences``: one row per (host, flow) with ``host``, ``role`` (``in`` when the
    host is the flow's responder, ``out`` when its initiator), ``flow_id``,
    ``first_seen_ms``, ``bidirectional_packets``, ``splt_signed_ps``; for fan-in also
    ``peer`` (the flow's other host), ``dst_port``, ``protocol``. Returns columns
    ``a``, ``b``, ``relationship``, ``weight`` (flow ids without the ``flow:`` prefix).
    """
    relay = relay_candidates(incidences, config).assign(relationship="relay")
    similar = similarity_candidates(incidences, config, signature_stats).assign(
        relationship="similarity"
    )
    parts = [relay, similar]
    if config.fanin_edges:
        parts.append(fanin_candidates(incidences, config).assign(relationship="fanin"))
    out = pd.concat(parts, ignore_index=True)
    out = out[["a", "b", "relationship", "weight"]].astype(
        {"a": str, "b": str, "relationship": str, "weight": np.float64}
    )
    return mutual_strongest(out, config.max_semantic_edges_per_flow)


def mutual_strongest(edges: pd.DataFrame, k: int) -> pd.DataFrame:
    """Edges among the k strongest of both endpoints: ordered by rank class
    (``SEMANTIC_PRIORITY``: relay and similarity before fan-in), then weight (ties:
    smaller ``a``, ``b``, kind).

    Applied to one host group's candidates it only removes edges the global selection
    (``_strongest_per_flow``, same order) would remove too: an edge outside an endpoint's
    top k among a subset of its candidates is outside its top k among all of them.
    """
    if len(edges) == 0:
        return edges
    edges = edges.groupby(["a", "b", "relationship"], as_index=False, sort=False)["weight"].max()
    edges = (
        edges.assign(_class=edges["relationship"].map(SEMANTIC_PRIORITY).fillna(0).astype(np.int64))
        .sort_values(["_class", "weight", "a", "b", "relationship"], ascending=[True, False, True, True, True])
        .drop(columns="_class")
        .reset_index(drop=True)
    )
    # an endpoint's rank counts its edges on both sides (as a and as b)
    ends = pd.concat(
        [pd.DataFrame({"flow": edges["a"], "row": edges.index}),
         pd.DataFrame({"flow": edges["b"], "row": edges.index})]
    ).sort_values("row", kind="stable")
    ends["rank"] = ends.groupby("flow", sort=False).cumcount()
    worst = ends.groupby("row")["rank"].max()
    return edges[worst.reindex(edges.index).to_numpy() < k].reset_index(drop=True)


# ---------------------------------------------------------------------------- Spark side
def _incidences(flows_df, with_service: bool):
    """One row per (host, flow); ``with_service`` adds what fan-in needs (``peer``,
    ``dst_port``, ``protocol``, and ``fanin_eligible`` when the flows carry it), left out
    otherwise so the host shuffle carries no more than relay and similarity use."""
    from pyspark.sql import functions as F

    columns = ["flow_id", "first_seen_ms", "bidirectional_packets", "splt_signed_ps"]
    if with_service:
        columns += ["dst_port", "protocol"]
        if "fanin_eligible" in flows_df.columns:
            columns.append("fanin_eligible")
    outgoing = [F.col("src_ip").alias("host"), F.lit("out").alias("role")]
    incoming = [F.col("dst_ip").alias("host"), F.lit("in").alias("role")]
    if with_service:
        outgoing.append(F.col("dst_ip").alias("peer"))
        incoming.append(F.col("src_ip").alias("peer"))
    return flows_df.select(*outgoing, *columns).unionByName(
        flows_df.select(*incoming, *columns)).where(F.col("host").isNotNull())


def _strongest_per_flow(candidates, k: int):
    """Keep an edge only when it is among the k strongest of both its endpoints (same
    order as ``mutual_strongest``: rank class, weight, ``a``, ``b``, kind)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    edges = candidates.groupBy("a", "b", "relationship").agg(F.max("weight").alias("weight"))
    ends = edges.select(F.col("a").alias("flow"), "a", "b", "relationship", "weight").unionByName(
        edges.select(F.col("b").alias("flow"), "a", "b", "relationship", "weight")
    )
    rank_class = F.lit(0)
    for kind, value in SEMANTIC_PRIORITY.items():
        if value:
            rank_class = F.when(F.col("relationship") == kind, F.lit(value)).otherwise(rank_class)
    rank = Window.partitionBy("flow").orderBy(
        rank_class, F.col("weight").desc(), F.col("a"), F.col("b"), F.col("relationship")
    )
    kept = ends.withColumn("rank", F.row_number().over(rank)).where(F.col("rank") <= k)
    return (
        kept.groupBy("a", "b", "relationship")
        .agg(F.count("*").alias("ends"), F.first("weight").alias("weight"))
        .where(F.col("ends") == 2)
        .select("a", "b", "relationship", "weight")
    )


def _service_columns(flows_df) -> list:
    """``dst_port`` (int) and ``protocol`` (smallint) of ``flows_df``, -1 where missing."""
    from pyspark.sql import functions as F

    columns = []
    for name, kind in (("dst_port", "int"), ("protocol", "smallint")):
        if name in flows_df.columns:
            value = F.col(name).cast(kind)
        else:
            log.warning("flows have no %s column: fan-in edges key the service without it", name)
            value = F.lit(None).cast(kind)
        columns.append(F.coalesce(value, F.lit(-1).cast(kind)).alias(name))
    return columns


def fanin_services(flows_df, config: GraphConfig):
    """Services that had fan-in in ``flows_df`` (a training window's flows).

    A service (``SERVICE_COLUMNS``) had fan-in when two of its flows from different
    initiators (``src_ip``) start 0 <= dt <= ``fanin_window_s`` apart: exactly when some
    window ``[t - fanin_window_s, t]`` over its flow starts holds two distinct initiators
    (min != max). Unlike the edge search this is not bounded to
    ``max_candidates_per_flow`` positions: it answers "did it ever happen". Returns a
    Spark DataFrame (``dst_ip``, ``dst_port``, ``protocol``, ``fanin_flows``: flows that
    started while another initiator's flow had started within the window), one row per
    such service.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window_ms = int(np.floor(config.fanin_window_s * 1000.0))
    flows = flows_df.where(F.col("dst_ip").isNotNull() & F.col("src_ip").isNotNull()).select(
        "dst_ip", *_service_columns(flows_df), "src_ip", F.col("first_seen_ms").cast("long")
    )
    recent = (
        Window.partitionBy(*SERVICE_COLUMNS).orderBy("first_seen_ms").rangeBetween(-window_ms, 0)
    )
    return (
        flows.withColumn("_lo", F.min("src_ip").over(recent))
        .withColumn("_hi", F.max("src_ip").over(recent))
        .where(F.col("_lo") != F.col("_hi"))
        .groupBy(*SERVICE_COLUMNS)
        .agg(F.count("*").alias("fanin_flows"))
    )


def build_graph(flows_df, config: GraphConfig, signature_stats: dict, trained_fanin_services=None):
    """Build ``(vertices_df, edges_df)`` from a ``flows`` DataFrame (schema ``FLOWS``).

    ``signature_stats``: from ``pipeline.graph.signatures.fit_signature_normalisation`` on the
    training window (never refitted here). ``trained_fanin_services``: ``fanin_services``
    of the training window, required when fan-in edges are on with ``fanin_scope`` =
    ``"no_training_fanin"`` (ignored otherwise). Returns Spark DataFrames with exactly the
    columns of ``GRAPH_VERTICES`` (id, type) and ``GRAPH_EDGES`` (src, dst,
    relationship, weight); ``GraphFrame(vertices_df, edges_df)`` accepts them as is.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    signatures.check_signature_stats(signature_stats)
    if config.fanin_edges and (config.fanin_window_s < 0 or config.fanin_decay_s <= 0):
        raise ValueError("fanin_window_s must be >= 0 and fanin_decay_s > 0")
    if config.fanin_scope not in FANIN_SCOPES:
        raise ValueError(f"fanin_scope must be one of {FANIN_SCOPES}, got {config.fanin_scope!r}")
    scoped = config.scoped_fanin
    if scoped and trained_fanin_services is None:
        raise ValueError("fanin_scope 'no_training_fanin' needs the training window's fanin_services")
    service = _service_columns(flows_df) if config.fanin_edges else []
    flows = flows_df.select(
        "flow_id", "src_ip", "dst_ip", "first_seen_ms", "bidirectional_packets", "splt_signed_ps", *service
    )
    if scoped:
        trained = trained_fanin_services.select(*SERVICE_COLUMNS).distinct().withColumn(
            "_trained", F.lit(True))
        flows = flows.join(trained, on=list(SERVICE_COLUMNS), how="left").withColumn(
            "fanin_eligible", F.col("_trained").isNull()).drop("_trained")
    hosts = (
        flows.select(F.col("src_ip").alias("ip"))
        .unionByName(flows.select(F.col("dst_ip").alias("ip")))
        .where(F.col("ip").isNotNull())
        .distinct()
        .select(F.concat(F.lit("host:"), "ip").alias("id"), F.lit("host").alias("type"))
    )
    flow_vertices = flows.select(
        F.concat(F.lit("flow:"), "flow_id").alias("id"), F.lit("flow").alias("type")
    )
    vertices = hosts.unionByName(flow_vertices)

    physical = flows.where(F.col("src_ip").isNotNull()).select(
        F.concat(F.lit("host:"), "src_ip").alias("src"),
        F.concat(F.lit("flow:"), "flow_id").alias("dst"),
        F.lit("src").alias("relationship"),
        F.lit(1.0).alias("weight"),
    ).unionByName(
        flows.where(F.col("dst_ip").isNotNull()).select(
            F.concat(F.lit("flow:"), "flow_id").alias("src"),
            F.concat(F.lit("host:"), "dst_ip").alias("dst"),
            F.lit("dst").alias("relationship"),
            F.lit(1.0).alias("weight"),
        )
    )

    candidate_schema = T.StructType(
        [
            T.StructField("a", T.StringType()),
            T.StructField("b", T.StringType()),
            T.StructField("relationship", T.StringType()),
            T.StructField("weight", T.DoubleType()),
        ]
    )

    def search(group: pd.DataFrame) -> pd.DataFrame:
        return semantic_candidates(group.drop(columns="bucket"), config, signature_stats)

    host_buckets = max(config.host_buckets, -(-2 * flows_df.count() // max(1, config.incidences_per_task)))
    candidates = (
        _incidences(flows, config.fanin_edges)
        .withColumn("bucket", F.pmod(F.xxhash64("host"), F.lit(host_buckets)))
        .groupBy("bucket")
        .applyInPandas(search, schema=candidate_schema)
    )
    semantic = _strongest_per_flow(candidates, config.max_semantic_edges_per_flow).select(
        F.concat(F.lit("flow:"), "a").alias("src"),
        F.concat(F.lit("flow:"), "b").alias("dst"),
        "relationship",
        "weight",
    )
    edges = physical.unionByName(semantic)
    return vertices, edges
