"""The node's stats snapshot as Prometheus metrics, built at scrape time.

Nothing is counted here: the collector reads one stats snapshot (the same
``united_collect_stats`` figures ``ctl snapshot`` and the console show, plus the
P2P runtime's) and maps the figures it knows to named, typed metrics with help
text. :data:`CATALOG` lists every ``united_*`` family it can export (the
dashboard test and docs/metrics.md are checked against it).

- *Counters* (``..._total``) are the runtime's and plugins' running totals since
  the node started; they restart at 0 with the node, which Prometheus' ``rate()``
  handles.
- *Gauges* are current values (peers connected, members online, queue lengths).
- A plugin this module has no table for (a third-party plugin, the member-side
  plugins) is exported generically: each top-level number (or boolean) of its
  figures becomes ``united_plugin_figure{plugin, figure}``, of type *untyped*,
  since nothing says whether it only grows. Nested tables are left out: they are
  often keyed by peer, which would make a series per peer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

COUNTER, GAUGE, INFO, UNTYPED = "counter", "gauge", "info", "untyped"


@dataclass(frozen=True)
class Family:
    """One exported metric family: its name as exposed, type, help and labels."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()


CATALOG: dict[str, Family] = {}


def _family(name: str, kind: str, help: str, labels: tuple[str, ...] = ()) -> str:
    assert name not in CATALOG, name
    assert (kind == COUNTER) == name.endswith("_total"), name
    CATALOG[name] = Family(name, kind, help, labels)
    return name


def _table(
    rows: Iterable[tuple[str, str, str, str]],
) -> list[tuple[str, str]]:
    """(figure key, metric name, kind, help) rows: registered; (key, name) returned."""
    return [(key, _family(name, kind, help)) for key, name, kind, help in rows]


# ---- the node and the P2P runtime ---------------------------------------------------------

NODE_INFO = _family(
    "united_node_info", INFO, "This node: its PeerId, plugin set and version.",
    ("peer_id", "plugin_set", "version"),
)  # fmt: skip
NODE_READY = _family(
    "united_node_ready", GAUGE, "1 while the node is running and ready (what /health says), else 0."
)
NODE_STATE = _family(
    "united_node_state", GAUGE, "The node's state: 1 for the current one.", ("state",)
)
NODE_START = _family(
    "united_node_start_time_seconds", GAUGE, "When the node started, seconds since the epoch."
)
PEERS = _family(
    "united_peers_connected",
    GAUGE,
    "Peers connected now, by connection kind (direct, relayed, hole-punched).",
    ("kind",),
)
REACHABILITY = _family(
    "united_reachability",
    GAUGE,
    "Whether this node is publicly reachable (AutoNAT): 1 for the current verdict.",
    ("reachability",),
)
NAT = _family(
    "united_nat", GAUGE, "The NAT kind AutoNAT found in front of this node: 1 for it.", ("nat",)
)
GOSSIP_RECEIVED = _family(
    "united_gossip_messages_received_total",
    COUNTER,
    "Gossip messages that reached this node, by outcome: delivered (accepted and handed "
    "to the plugins, own publishes included), rejected, ignored, duplicate (already "
    "accepted), repeat_dropped (refused before), inbox_dropped (no room in the inbox).",
    ("outcome",),
)
RECEIVED_OUTCOMES = (
    ("delivered", "delivered"),
    ("rejected", "rejected"),
    ("ignored", "ignored"),
    ("duplicates", "duplicate"),
    ("repeats_dropped", "repeat_dropped"),
    ("inbound_drops", "inbox_dropped"),
)
GOSSIP_COUNTERS = _table(
    [
        ("published", "united_gossip_messages_published_total", COUNTER,
         "Messages this node published."),
        ("iwant_sent", "united_gossip_iwant_ids_sent_total", COUNTER,
         "Message ids this node asked peers for (IWANT)."),
        ("outbound_drops", "united_gossip_outbound_drops_total", COUNTER,
         "RPCs to peers dropped because the peer's queue was full."),
        ("publish_waits", "united_gossip_publish_waits_total", COUNTER,
         "Publishes that waited for a slow peer's queue to drain."),
        ("publish_wait_timeouts", "united_gossip_publish_wait_timeouts_total", COUNTER,
         "Publishes that stopped waiting (publish_timeout) and sent anyway."),
        ("subscriptions_resent", "united_gossip_subscriptions_resent_total", COUNTER,
         "Subscription announcements sent again to a peer that re-registered this node."),
    ]
)  # fmt: skip
GOSSIP_TOPICS = _family("united_gossip_topics", GAUGE, "Gossipsub topics this node subscribes.")
GOSSIP_MESH = _family(
    "united_gossip_mesh_peers",
    GAUGE,
    "Peers in this node's gossipsub mesh, by channel.",
    ("channel",),
)
GOSSIP_QUEUED = _family(
    "united_gossip_outbound_queued",
    GAUGE,
    "RPCs waiting in the outbound queues to peers, all peers together.",
)

# ---- plugins ------------------------------------------------------------------------------

CHANNEL_MESSAGES = _family(
    "united_channel_messages_received_total",
    COUNTER,
    "Messages delivered to this node, by channel (mesh plugin).",
    ("channel",),
)
CHANNEL_LATENCY = _family(
    "united_channel_delivery_latency_seconds",
    GAUGE,
    "Publish-to-delivery latency over the last 256 messages of a channel (from the "
    "envelope's timestamp), at quantile 0.5 and 0.95.",
    ("channel", "quantile"),
)
MESH_LIMITED = _family(
    "united_mesh_messages_rate_limited_total",
    COUNTER,
    "Messages refused because their sender went over [mesh] rate_limit.",
)
MEMBERSHIP = _table(
    [
        ("members", "united_membership_members", GAUGE,
         "Members the gate lets in (the member list it follows)."),
        ("refused_peers", "united_membership_peers_refused_total", COUNTER,
         "Connections refused in the handshake: the peer is not a member."),
        ("rejected_messages", "united_membership_messages_rejected_total", COUNTER,
         "Messages rejected because their sender is not a member."),
        ("disconnected", "united_membership_peers_disconnected_total", COUNTER,
         "Connections closed because the peer stopped being a member."),
    ]
)  # fmt: skip
DIRECTORY = _table(
    [
        ("members", "united_directory_members", GAUGE, "Registered members."),
        ("online", "united_directory_members_online", GAUGE,
         "Members with a logged-in session now."),
        ("sessions", "united_directory_sessions", GAUGE, "Logged-in WebSocket sessions."),
        ("pending", "united_directory_pending_sessions", GAUGE,
         "Connections that have not logged in yet."),
        ("channels", "united_directory_channels", GAUGE, "Channels of the community."),
        ("frames_handled", "united_directory_frames_handled_total", COUNTER,
         "Requests (frames) the directory answered."),
        ("errors_sent", "united_directory_errors_sent_total", COUNTER,
         "Requests answered with an error."),
        ("heads_pushed", "united_directory_heads_pushed_total", COUNTER,
         "Channel heads pushed to members online (history grew)."),
    ]
)  # fmt: skip
DIRECTORY_CLOSED = _family(
    "united_directory_pending_closed_total",
    COUNTER,
    "Connections closed before logging in, by reason: evicted (pushed out by a newer "
    "one, max_pending_sessions or max_pending_per_address), refused (no room for it), "
    "timed_out (its HTTP request not complete within header_timeout).",
    ("reason",),
)
ARCHIVE = _table(
    [
        ("messages", "united_archive_messages", GAUGE,
         "Messages in the archive, every channel."),
        ("channels", "united_archive_channels", GAUGE, "Channels with archived messages."),
        ("stored", "united_archive_messages_stored_total", COUNTER,
         "Messages written to the archive (new ones, gossip and uploads)."),
        ("duplicates", "united_archive_duplicates_total", COUNTER,
         "Messages the archive already held when they came again."),
        ("ingested", "united_archive_ingested_total", COUNTER,
         "Gossip messages handed to the archive."),
        ("queued", "united_archive_ingest_queue", GAUGE,
         "Writes waiting for the archive's writer."),
        ("late_waiting", "united_archive_late_messages", GAUGE,
         "Late gossip (sent while the server was away) waiting to be numbered."),
        ("batches", "united_archive_write_batches_total", COUNTER, "Write transactions."),
        ("write_seconds", "united_archive_write_seconds_total", COUNTER,
         "Time spent writing, in seconds."),
        ("write_errors", "united_archive_write_errors_total", COUNTER,
         "Messages the archive could not store."),
        ("submitted", "united_archive_submitted_total", COUNTER,
         "Envelopes members uploaded that the archive accepted."),
        ("submitted_known", "united_archive_submitted_known_total", COUNTER,
         "Uploaded envelopes the archive already held."),
        ("refused", "united_archive_submissions_refused_total", COUNTER,
         "Uploaded envelopes refused (invalid, too old, over the upload budget...)."),
        ("lookups", "united_archive_lookups_total", COUNTER,
         "Lookups of message ids by members."),
        ("history_pages", "united_archive_history_pages_total", COUNTER,
         "History pages served to members."),
    ]
)  # fmt: skip
ARCHIVE_LAST_SEQ = _family(
    "united_archive_last_seq",
    GAUGE,
    "The highest sequence number of each channel's history.",
    ("channel",),
)
RELAY = _table(
    [
        ("running", "united_relay_running", GAUGE, "1 while the relay hop is served."),
        ("reservations", "united_relay_reservations", GAUGE, "Reservations held now."),
        ("max_reservations", "united_relay_reservations_limit", GAUGE,
         "[relay] max_reservations."),
        ("reservations_made", "united_relay_reservations_made_total", COUNTER,
         "Reservations granted (renewals apart)."),
        ("renewals", "united_relay_reservation_renewals_total", COUNTER,
         "Reservations renewed."),
        ("reservations_dropped", "united_relay_reservations_dropped_total", COUNTER,
         "Reservations dropped (their member's last connection closed)."),
        ("circuits", "united_relay_circuits", GAUGE, "Circuits open now."),
        ("max_circuits", "united_relay_circuits_limit", GAUGE, "[relay] max_circuits."),
        ("circuits_total", "united_relay_circuits_opened_total", COUNTER, "Circuits opened."),
        ("bytes_relayed", "united_relay_bytes_relayed_total", COUNTER,
         "Bytes relayed through circuits, both directions."),
    ]
)  # fmt: skip
RELAY_ENDED = _family(
    "united_relay_circuits_ended_total", COUNTER, "Circuits ended, by reason.", ("reason",)
)
RELAY_REFUSED = _family(
    "united_relay_requests_refused_total",
    COUNTER,
    "Relay requests refused, by request (reserve, connect) and reason.",
    ("request", "reason"),
)
AUTONAT = _table(
    [
        ("answered", "united_autonat_probes_answered_total", COUNTER,
         "Reachability probes answered with a dial-back."),
        ("bad_requests", "united_autonat_bad_requests_total", COUNTER,
         "Malformed probe requests."),
        ("in_flight", "united_autonat_probes_in_flight", GAUGE, "Probes running now."),
    ]
)  # fmt: skip
AUTONAT_REFUSED = _family(
    "united_autonat_probes_refused_total",
    COUNTER,
    "Probe requests refused, by reason.",
    ("reason",),
)
AUTONAT_DIALS = _family(
    "united_autonat_dial_backs_total", COUNTER, "Dial-backs made, by result.", ("status",)
)
PLUGIN_FIGURE = _family(
    "united_plugin_figure",
    UNTYPED,
    "A number a plugin without metrics of its own reports in its stats "
    "(`united ctl snapshot`: plugins.PLUGIN.FIGURE); counter or gauge, unknown.",
    ("plugin", "figure"),
)

# Plugins whose figures are mapped above (or deliberately not exported: ping's RTTs
# are per peer and measured only while the console watches; this plugin's own).
MAPPED_PLUGINS = frozenset(
    {"ping", "membership", "directory", "mesh", "archive", "relay", "autonat", "metrics"}
)
PEER_KINDS = ("direct", "relayed")
REACHABILITY_STATES = ("public", "private", "unknown")
NAT_KINDS = ("none", "endpoint-independent", "symmetric", "unknown")
NODE_STATES = ("starting", "running", "stopping", "stopped")


@dataclass
class Scrape:
    """What one scrape exports: the node's facts and its stats snapshot (or none)."""

    state: str
    ready: bool
    started_at: float
    peer_id: str
    plugin_set: str
    version: str
    snapshot: Mapping[str, Any] | None = None


@dataclass
class _Builder:
    """Samples grouped by family; families come out with the catalog's type and help."""

    samples: dict[str, list[tuple[tuple[str, ...], Any]]] = field(default_factory=dict)

    def add(self, name: str, value: Any, *labels: str) -> None:
        number = _number(value)
        if number is None:
            return
        family = CATALOG[name]
        assert len(labels) == len(family.labels), name
        self.samples.setdefault(name, []).append((labels, number))

    def table(self, figures: Mapping[str, Any], rows: list[tuple[str, str]]) -> None:
        for key, name in rows:
            if key in figures:
                self.add(name, figures[key])

    def by_label(self, name: str, values: Any, *prefix: str) -> None:
        for label, value in sorted(_mapping(values).items()):
            self.add(name, value, *prefix, str(label))

    def families(self, info: dict[str, str]) -> Iterator[Metric]:
        node_info = CATALOG[NODE_INFO]
        yield InfoMetricFamily(node_info.name.removesuffix("_info"), node_info.help, value=info)
        for name, samples in self.samples.items():
            family = CATALOG[name]
            metric: Metric
            if family.kind == COUNTER:
                metric = CounterMetricFamily(name, family.help, labels=family.labels)
            elif family.kind == GAUGE:
                metric = GaugeMetricFamily(name, family.help, labels=family.labels)
            else:
                metric = UnknownMetricFamily(name, family.help, labels=family.labels)
            for labels, value in samples:
                metric.add_metric(list(labels), value)
            yield metric


def families(scrape: Scrape) -> Iterator[Metric]:
    """The ``united_*`` metric families of one scrape."""
    out = _Builder()
    out.add(NODE_READY, scrape.ready)
    for state in NODE_STATES:
        out.add(NODE_STATE, state == scrape.state, state)
    if scrape.started_at:
        out.add(NODE_START, scrape.started_at)
    if scrape.snapshot is not None:
        _core(out, scrape.snapshot)
        _plugins(out, _mapping(scrape.snapshot.get("plugins")))
    info = {
        "peer_id": scrape.peer_id,
        "plugin_set": scrape.plugin_set,
        "version": scrape.version,
    }
    yield from out.families(info)


def _core(out: _Builder, snapshot: Mapping[str, Any]) -> None:
    kinds = {kind: 0 for kind in PEER_KINDS}
    for row in snapshot.get("peers") or ():
        peer = _mapping(row)
        kind = str(peer.get("kind") or ("relayed" if peer.get("relayed") else "direct"))
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, count in kinds.items():
        out.add(PEERS, count, kind)
    p2p = _mapping(snapshot.get("p2p"))
    counters = _mapping(p2p.get("counters"))
    for key, outcome in RECEIVED_OUTCOMES:
        if key in counters:
            out.add(GOSSIP_RECEIVED, counters[key], outcome)
    out.table(counters, GOSSIP_COUNTERS)
    if "topics" in p2p:
        out.add(GOSSIP_TOPICS, len(p2p["topics"] or ()))
    names = _mapping(_mapping(_mapping(snapshot.get("plugins")).get("mesh")).get("topic_names"))
    for topic, peers in sorted(_mapping(p2p.get("mesh")).items()):
        out.add(GOSSIP_MESH, len(peers or ()), str(names.get(topic, topic)))
    queues = _mapping(p2p.get("outbound_queue_lengths"))
    if "outbound_queue_lengths" in p2p:
        out.add(GOSSIP_QUEUED, sum(v for v in queues.values() if _number(v) is not None))
    verdict = _mapping(p2p.get("reachability"))
    reachability, nat = verdict.get("reachability"), verdict.get("nat")
    if isinstance(reachability, str):
        for state in dict.fromkeys((*REACHABILITY_STATES, reachability)):
            out.add(REACHABILITY, state == reachability, state)
    if isinstance(nat, str):
        for kind in dict.fromkeys((*NAT_KINDS, nat)):
            out.add(NAT, kind == nat, kind)


def _plugins(out: _Builder, plugins: Mapping[str, Any]) -> None:
    mesh = _mapping(plugins.get("mesh"))
    for channel, topic in sorted(_mapping(mesh.get("topics")).items()):
        figures = _mapping(topic)
        out.add(CHANNEL_MESSAGES, figures.get("messages"), channel)
        for quantile, key in (("0.5", "latency_p50_ms"), ("0.95", "latency_p95_ms")):
            ms = _number(figures.get(key))
            if ms is not None:
                out.add(CHANNEL_LATENCY, ms / 1000, channel, quantile)
    if "volume" in mesh:
        out.add(MESH_LIMITED, _mapping(mesh["volume"]).get("limited"))
    out.table(_mapping(plugins.get("membership")), MEMBERSHIP)
    directory = _mapping(plugins.get("directory"))
    out.table(directory, DIRECTORY)
    for reason in ("evicted", "refused", "timed_out"):
        if f"pending_{reason}" in directory:
            out.add(DIRECTORY_CLOSED, directory[f"pending_{reason}"], reason)
    archive = _mapping(plugins.get("archive"))
    out.table(archive, ARCHIVE)
    out.by_label(ARCHIVE_LAST_SEQ, archive.get("last_seq"))
    relay = _mapping(plugins.get("relay"))
    out.table(relay, RELAY)
    out.by_label(RELAY_ENDED, relay.get("ended"))
    for request, reasons in sorted(_mapping(relay.get("refused")).items()):
        out.by_label(RELAY_REFUSED, reasons, str(request))
    autonat = _mapping(plugins.get("autonat"))
    out.table(autonat, AUTONAT)
    out.by_label(AUTONAT_REFUSED, autonat.get("refused"))
    out.by_label(AUTONAT_DIALS, autonat.get("dials"))
    for plugin, figures in sorted(plugins.items()):
        if plugin in MAPPED_PLUGINS:
            continue
        for key, value in sorted(_mapping(figures).items()):
            out.add(PLUGIN_FIGURE, value, plugin, str(key))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    """A sample value: numbers and booleans; None (left out) for anything else."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


class UnitedCollector(Collector):
    """A prometheus_client collector exporting the scrape it is given.

    The server sets :attr:`scrape` and generates the exposition in one synchronous
    step, so concurrent scrapes never see each other's snapshot.
    """

    def __init__(self) -> None:
        self.scrape: Scrape | None = None

    def collect(self) -> Iterable[Metric]:
        if self.scrape is None:
            return []
        return list(families(self.scrape))
