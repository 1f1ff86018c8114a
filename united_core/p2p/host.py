"""Host construction: a py-libp2p host, pubsub and gossipsub router from ``HostOptions``.

Why a module of its own: every choice about *what* host we run (Noise only,
Yamux, one connection per peer, no auto-connector, our gossipsub parameters
and scoring, envelope ids as message ids) is made here, once, from plain-data
options; the rest of the runtime only runs what this builds. Everything here
runs on the trio thread except :func:`check_ports_free`, which runs before it
starts.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from ..envelope import message_id_from_wire
from ..identity import Identity
from .gate import GatedNoiseTransport, PeerGate
from .options import HostOptions, ScoreSettings
from .pubsub import Deliver, GossipJudge, PubsubCounters, UnitedGossipSub, UnitedPubsub

log = logging.getLogger(__name__)


@dataclass
class HostContext:
    """The running host as the trio side sees it (``P2PRuntime.host_context``).

    ``nursery`` holds trio tasks that must live as long as the host; they are
    cancelled at shutdown before the host closes.
    """

    host: IHost
    pubsub: UnitedPubsub
    gossipsub: UnitedGossipSub
    nursery: trio.Nursery
    options: HostOptions


def build_host(
    identity: Identity,
    options: HostOptions,
    *,
    gate: PeerGate,
    judge: GossipJudge,
    deliver: Deliver,
    counters: PubsubCounters,
    app_score: Callable[[str], float],
    transient: Callable[[str], bool] = lambda peer_id: False,
) -> tuple[IHost, UnitedPubsub, UnitedGossipSub]:
    """The host, its pubsub and gossipsub router (not running yet)."""
    key_pair = create_new_key_pair(identity.seed)
    noise = GatedNoiseTransport(
        key_pair, noise_privkey=create_x25519_key_pair().private_key, gate=gate
    )
    host = new_host(
        key_pair=key_pair,
        # Noise only: the default also accepts /plaintext/2.0.0 (DESIGN §4).
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=ConnectionConfig(
            # One connection per peer: the default dialer's 250 ms happy-eyeballs wait goes.
            max_connections_per_peer=1,
            dial_timeout=options.dial_timeout,
            # No pruning above 200 connections: there is no global cap by design.
            min_connections=0,
            low_watermark=0,
            high_watermark=options.max_connections,
            max_connections=options.max_connections,
        ),
        listen_addrs=[multiaddr.Multiaddr(a) for a in options.listen_addrs],
    )
    disable_auto_connector(host)
    g = options.gossip
    gossipsub = UnitedGossipSub(
        protocols=[TProtocol(p) for p in g.protocols],
        degree=g.degree,
        degree_low=g.degree_low,
        degree_high=g.degree_high,
        degree_lazy=g.degree_lazy,
        time_to_live=g.time_to_live,
        gossip_window=g.gossip_window,
        gossip_history=g.gossip_history,
        heartbeat_interval=g.heartbeat_interval,
        score_params=score_params(g.scoring, app_score) if g.scoring else None,
        adaptive_gossip_enabled=g.adaptive_gossip,
        spam_protection_enabled=g.spam_protection,
        eclipse_protection_enabled=g.eclipse_protection,
    )
    pubsub = UnitedPubsub(
        host,
        gossipsub,
        judge=judge,
        deliver=deliver,
        counters=counters,
        # A refusal is remembered as long as an accepted id is (replays of both stop).
        refused_ttl=g.seen_ttl,
        transient=transient,
        # Ids are envelope ids, so every implementation that adopts our schema agrees.
        msg_id_constructor=lambda msg: message_id_from_wire(msg.data),
        speedups=options.speedups,
        strict_signing=True,
        seen_ttl=g.seen_ttl,
    )
    return host, pubsub, gossipsub


def score_params(scoring: ScoreSettings, app_score: Callable[[str], float]) -> ScoreParams:
    """py-libp2p's ScoreParams from our plain-data settings; ``app_score(peer_id)`` is P6."""

    def app_score_of(peer: ID) -> float:
        return app_score(peer.to_base58())

    return ScoreParams(
        p2_first_message_deliveries=TopicScoreParams(
            weight=scoring.first_delivery_weight,
            cap=scoring.first_delivery_cap,
            decay=scoring.first_delivery_decay,
        ),
        p4_invalid_messages=TopicScoreParams(
            weight=scoring.invalid_weight, cap=1e6, decay=scoring.invalid_decay
        ),
        p6_appl_slack_weight=scoring.app_weight,
        app_specific_score_fn=app_score_of,
        gossip_threshold=scoring.gossip_threshold,
        publish_threshold=scoring.publish_threshold,
        graylist_threshold=scoring.graylist_threshold,
    )


def disable_auto_connector(host: IHost) -> None:
    """Keep py-libp2p's AutoConnector from ever starting.

    It dials peerstore entries until the connection count reaches the midpoint
    of the watermarks (50,000 with ours): the plugins decide whom to dial
    (DESIGN §2). Its ``start()`` is replaced on this instance only, so
    ``maybe_connect`` and the periodic task stay no-ops.
    """
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is None:
        log.warning("py-libp2p has no auto_connector here; nothing to disable")
        return

    async def never_start() -> None:
        return None

    connector.start = never_start


def check_ports_free(listen_addrs: tuple[str, ...]) -> None:
    """Fail with EADDRINUSE if a fixed listen port is taken, EADDRNOTAVAIL if the
    address is not one of this host's (port 0 too).

    py-libp2p 0.8.1 binds with SO_REUSEPORT, so a second node on the same port
    "starts" and the kernel splits incoming connections between the two. A
    plain bind (no reuse flags) detects the conflict before that can happen.
    And a listener py-libp2p fails to open is not an error there: the node
    would run listening on nothing.
    """
    for addr in listen_addrs:
        ma = multiaddr.Multiaddr(addr)
        protocols = {p.name for p in ma.protocols()}
        if "tcp" not in protocols:
            continue
        family = socket.AF_INET6 if "ip6" in protocols else socket.AF_INET
        ip = ma.value_for_protocol("ip6" if "ip6" in protocols else "ip4")
        port = int(ma.value_for_protocol("tcp"))
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # SO_REUSEADDR: TIME_WAIT leftovers of a previous run are fine; an
                # active listener (with or without reuse flags) still conflicts.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((ip, port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {addr}: {exc.strerror}") from None
