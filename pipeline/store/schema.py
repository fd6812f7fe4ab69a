"""Every table's schema, declared once (Arrow), with the Spark form derived from it.

Conventions (binding for every table, see ``../shared/docs/DESIGN.md``):

* times are epoch **milliseconds** (UTC) in ``int64`` columns ending in ``_ms``;
  durations and inter-arrival times are milliseconds in ``float64`` ``*_ms`` columns;
* IPs are strings in their canonical text form (``ipaddress.ip_address(x).compressed``);
* ``src`` is the flow's initiator (sender of its first packet), ``dst`` the responder;
* sizes are IP-layer bytes (IP header + payload, what NFStream calls ``ip`` accounting);
* the partition columns (``date``; for scores ``model`` and ``model_version``) are *not*
  in these schemas: they live in the directory names (``date=YYYY-MM-DD/``) and Spark
  adds them on read (``pipeline.store.warehouse.read_partition``).
"""
from __future__ import annotations

import pyarrow as pa

# --------------------------------------------------------------------------- flows
DIRECTIONS = ("bidirectional", "src2dst", "dst2src")
TCP_FLAGS = ("syn", "cwr", "ece", "urg", "ack", "psh", "rst", "fin")
SPLT_LENGTH = 32
"""Number of first packet sizes kept per flow (``splt_signed_ps``)."""


def _direction_fields(direction: str) -> list[pa.Field]:
    d = direction
    return [
        pa.field(f"{d}_first_seen_ms", pa.int64()),
        pa.field(f"{d}_last_seen_ms", pa.int64()),
        pa.field(f"{d}_duration_ms", pa.float64()),
        pa.field(f"{d}_packets", pa.int64()),
        pa.field(f"{d}_bytes", pa.int64()),
        pa.field(f"{d}_min_ps", pa.float64()),
        pa.field(f"{d}_mean_ps", pa.float64()),
        pa.field(f"{d}_stddev_ps", pa.float64()),
        pa.field(f"{d}_max_ps", pa.float64()),
        pa.field(f"{d}_min_piat_ms", pa.float64()),
        pa.field(f"{d}_mean_piat_ms", pa.float64()),
        pa.field(f"{d}_stddev_piat_ms", pa.float64()),
        pa.field(f"{d}_max_piat_ms", pa.float64()),
    ] + [pa.field(f"{d}_{flag}_packets", pa.int64()) for flag in TCP_FLAGS]


FLOWS = pa.schema(
    [
        pa.field("flow_id", pa.string(), nullable=False),
        pa.field("community_id", pa.string()),
        pa.field("ip_version", pa.int8()),
        pa.field("src_ip", pa.string()),
        pa.field("dst_ip", pa.string()),
        pa.field("src_port", pa.int32()),
        pa.field("dst_port", pa.int32()),
        pa.field("protocol", pa.int16()),
        pa.field("vlan_id", pa.int32()),
        pa.field("first_seen_ms", pa.int64()),
        pa.field("last_seen_ms", pa.int64()),
    ]
    + [f for d in DIRECTIONS for f in _direction_fields(d)]
    + [
        pa.field("ip_fragment_packets", pa.int64()),
        pa.field("splt_signed_ps", pa.list_(pa.int32())),
        pa.field("expiration_reason", pa.string()),
        pa.field("capture_file", pa.string()),
    ]
)
"""One row per bidirectional flow.

``splt_signed_ps``: the first ``SPLT_LENGTH`` packet sizes (IP bytes), positive for
src->dst and negative for dst->src. ``vlan_id`` is the outer 802.1Q tag, null for untagged traffic. ``expiration_reason`` is one of ``idle``,
``active``, ``fin``, ``rst``, ``end_of_capture``. ``flow_id`` is a 16-hex-digit hash of
the canonical 5-tuple, VLAN and the first packet's timestamp in microseconds: stable
across reruns and independent of file boundaries. ``capture_file`` is the archive-relative
path of the file holding the flow's first packet.
"""

FLOW_KEY_COLUMNS = ("src_ip", "dst_ip", "src_port", "dst_port", "protocol")

SKIP_REASONS = (
    "non_ip",            # ARP, EAPoL, LLC, ... (valid frames that carry no IP)
    "truncated",         # captured length too short for the headers it claims
    "malformed_ip",      # bad IP version / header length / total length
    "unsupported_link",  # a link type we do not decode
    "corrupt_record",    # record header inconsistent (caplen > snaplen, ...)
)

# ------------------------------------------------------------------- ingest tables
INGEST_STATS = pa.schema(
    [
        pa.field("capture_file", pa.string(), nullable=False),
        pa.field("file_bytes", pa.int64()),
        pa.field("file_format", pa.string()),        # pcap | pcapng | unknown
        pa.field("link_types", pa.string()),         # comma-separated DLT numbers
        pa.field("status", pa.string()),             # ok | partial | quarantined
        pa.field("packets_read", pa.int64()),
        pa.field("packets_in_flows", pa.int64()),
        pa.field("packets_skipped", pa.int64()),
    ]
    + [pa.field(f"skipped_{reason}", pa.int64()) for reason in SKIP_REASONS]
    + [
        pa.field("ip_fragment_packets", pa.int64()),
        pa.field("flows", pa.int64()),
        pa.field("first_packet_ms", pa.int64()),
        pa.field("last_packet_ms", pa.int64()),
        # added later (null in partitions written before): damage skipped while reading
        pa.field("bytes_skipped", pa.int64()),       # sum of this file's ingest_errors.byte_length
        pa.field("resyncs", pa.int64()),             # times reading resumed after damaged bytes
    ]
)
"""Per capture file accounting. Identity: packets_read == packets_in_flows + packets_skipped,
and packets_skipped == sum of the skipped_* columns. ``flows`` counts the flows whose first
packet is in this file, after merging flows that straddle rotated files. ``bytes_skipped``
counts capture bytes (decompressed) not read as records: damaged ranges skipped, the
unreadable rest after a fatal error, a cut-short last record. ``status``: ``ok``;
``partial`` when bytes were skipped or reading stopped early after some packets;
``quarantined`` when nothing could be read (a copy of a regular file is quarantined)."""

INGEST_ERRORS = pa.schema(
    [
        pa.field("capture_file", pa.string(), nullable=False),
        pa.field("byte_offset", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("fatal", pa.bool_()),               # True: rest of file unreadable
        pa.field("quarantine_path", pa.string()),    # where a copy of the file was put
        # added later (null in partitions written before)
        pa.field("byte_length", pa.int64()),         # bytes skipped / left unread from byte_offset
        pa.field("packets_after", pa.int64()),       # packets of the file read after this problem
    ]
)
"""One row per problem found in a capture file. ``byte_offset`` and ``byte_length`` are in
the decompressed stream (a gzip error's ``reason`` names the compressed byte too);
``byte_length`` is null when the problem cost no bytes (e.g. an unsupported link type). A
damaged range the reader skipped is one row with ``fatal`` false; the rows of one file's
``byte_length`` add up to its ``ingest_stats.bytes_skipped``."""

# -------------------------------------------------------------------------- graph
GRAPH_VERTICES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # "host:<ip>" or "flow:<flow_id>"
        pa.field("type", pa.string()),                # host | flow
    ]
)

GRAPH_EDGES = pa.schema(
    [
        pa.field("src", pa.string(), nullable=False),
        pa.field("dst", pa.string(), nullable=False),
        pa.field("relationship", pa.string()),        # src | dst | relay | similarity | fanin (pipeline.graph.build)
        pa.field("weight", pa.float64()),
    ]
)

GRAPH_FANIN_SERVICES = pa.schema(
    [
        pa.field("dst_ip", pa.string(), nullable=False),
        pa.field("dst_port", pa.int32()),              # -1 when the flow has none
        pa.field("protocol", pa.int16()),              # -1 when the flow has none
        pa.field("fanin_flows", pa.int64()),           # flows with another initiator's flow <= window before
    ]
)
"""Services that had fan-in on a night's *training window* (``pipeline.graph.build.fanin_services``;
partition ``date`` = the night whose graph uses it, not a night of the window)."""

ATOMS = pa.schema(
    [
        pa.field("flow_id", pa.string(), nullable=False),
        pa.field("atom_id", pa.string()),
        pa.field("component_id", pa.string()),
        pa.field("atom_size", pa.int64()),             # flows in the atom
        pa.field("atom_internal_edges", pa.int64()),   # flow--flow edges inside
        pa.field("atom_density", pa.float64()),        # 2 E / (n (n - 1)), 0 for n == 1
        pa.field("atom_internal_weight", pa.float64()),
    ]
)

# ------------------------------------------------------------------------- scores
FLOW_SCORES = pa.schema(
    [
        pa.field("flow_id", pa.string(), nullable=False),
        pa.field("src_ip", pa.string()),
        pa.field("dst_ip", pa.string()),
        pa.field("src_port", pa.int32()),
        pa.field("dst_port", pa.int32()),
        pa.field("protocol", pa.int16()),
        pa.field("first_seen_ms", pa.int64()),
        pa.field("last_seen_ms", pa.int64()),
        pa.field("community_id", pa.string()),
        pa.field("score", pa.float64()),               # higher = more anomalous
        pa.field("threshold", pa.float64()),
        pa.field("is_anomaly", pa.bool_()),
        # evidence, A2GNN (null for rearview rows)
        pa.field("atom_id", pa.string()),
        pa.field("atom_size", pa.int64()),
        pa.field("atom_density", pa.float64()),
        pa.field("nearest_anchor", pa.int64()),
        pa.field("anchor_distance", pa.float64()),
        # evidence, RearView (null for a2gnn rows)
        pa.field("triplet", pa.string()),              # "server_ip|server_port|protocol"
        pa.field("screening_probability", pa.float64()),
        pa.field("refined_score", pa.float64()),
        pa.field("screening_prior", pa.string()),      # condition screening used: triplet | port_protocol | protocol | global (rearview)
        # evidence, verdict (null for a2gnn and rearview rows): each piece's benign tail
        # probability (pipeline.verdict); null = that evidence was lacking for the flow
        pa.field("p_history", pa.float64()),           # the flow's relationship pattern as of its night
        pa.field("p_volume", pa.float64()),            # flows in its new relationship tonight
        pa.field("p_a2gnn", pa.float64()),
        pa.field("p_screening", pa.float64()),
        pa.field("p_refined", pa.float64()),
        pa.field("history_pattern", pa.string()),      # e.g. "new_service/new_pair/in->in"
        pa.field("service_nights_seen", pa.int32()),   # earlier nights its service was seen on (0 = never)
        pa.field("service_days_since_first", pa.int32()),  # days since the service's first night (null = never)
        pa.field("host_pair_nights_seen", pa.int32()),
        pa.field("host_pair_days_since_first", pa.int32()),
        pa.field("evidence", pa.string()),             # pieces that drove the verdict, strongest first; lacked ones
        pa.field("incident_id", pa.string()),          # null when the flow is not flagged
    ]
)

# ------------------------------------------------------------ relationship history
RELATIONSHIP_NIGHTS = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # host | service | host_pair | client_service
        pa.field("entity", pa.string(), nullable=False),
        pa.field("flows", pa.int64()),
        pa.field("first_seen_ms", pa.int64()),
        pa.field("last_seen_ms", pa.int64()),
    ]
)
"""What each relationship did on one night (partition ``date``): one row per entity seen.

Entities (``pipeline.relationships``): ``host`` = an IP; ``service`` =
``dst_ip|dst_port|protocol``; ``host_pair`` = ``ip_low|ip_high`` (unordered);
``client_service`` = ``src_ip>dst_ip|dst_port|protocol``. The ``relationships`` view
aggregates every night (first / last night seen, nights seen, flows)."""

RELATIONSHIPS_SUMMARY = (
    ("first_night", "min(`date`)"),
    ("last_night", "max(`date`)"),
    ("nights_seen", "count(DISTINCT `date`)"),
    ("flows", "sum(flows)"),
)
"""The ``relationships`` view's per (kind, entity) aggregates of ``relationship_nights``, as
Spark SQL: used by ``pipeline.relationships.relationships_summary`` and by the metastore's
view, so both say the same thing."""

INCIDENTS = pa.schema(
    [
        pa.field("incident_id", pa.string(), nullable=False),
        pa.field("rank", pa.int64()),                  # 1 = highest score of the night
        pa.field("hosts", pa.list_(pa.string())),
        pa.field("services", pa.list_(pa.string())),   # dst_ip|dst_port|protocol of its flagged flows
        pa.field("first_seen_ms", pa.int64()),
        pa.field("last_seen_ms", pa.int64()),
        pa.field("flows", pa.int64()),                 # flows of the night in its groups (flagged or not)
        pa.field("flagged_flows", pa.int64()),
        pa.field("score", pa.float64()),               # max verdict score of its flagged flows
        pa.field("top_evidence", pa.string()),         # evidence pieces that drove it, strongest first
    ]
)
"""Flagged verdict flows grouped into what an analyst triages (``pipeline.verdict.incidents``);
partition ``date`` and ``model_version`` (the verdict's), like ``flow_scores``."""

TABLES: dict[str, pa.Schema] = {
    "flows": FLOWS,
    "ingest_stats": INGEST_STATS,
    "ingest_errors": INGEST_ERRORS,
    "graph_vertices": GRAPH_VERTICES,
    "graph_edges": GRAPH_EDGES,
    "graph_fanin_services": GRAPH_FANIN_SERVICES,
    "atoms": ATOMS,
    "flow_scores": FLOW_SCORES,
    "relationship_nights": RELATIONSHIP_NIGHTS,
    "incidents": INCIDENTS,
}
PARTITION_COLUMNS: dict[str, tuple[str, ...]] = {
    name: ("date", "model", "model_version") if name == "flow_scores"
    else ("date", "model_version") if name == "incidents" else ("date",)
    for name in TABLES
}
"""Directory partitioning of each table. Scores keep one partition per model *version*,
so reprocessing a night with a pinned (other) version never overwrites earlier scores;
``model_version`` is therefore a partition column, not a data column, of ``flow_scores``."""


def spark_schema(table: str):
    """The Spark ``StructType`` of ``table`` (without partition columns)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(TABLES[table])


def empty_table(table: str) -> pa.Table:
    """A zero-row Arrow table with ``table``'s schema."""
    return TABLES[table].empty_table()


def conform(table: str, data: pa.Table) -> pa.Table:
    """Select and cast ``data``'s columns to ``table``'s schema (missing ones become null).

    Raises ``KeyError`` naming the unknown table; ``pa.ArrowInvalid`` on a lossy cast.
    """
    schema = TABLES[table]
    columns = []
    for field in schema:
        if field.name in data.column_names:
            columns.append(data.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(data.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)
