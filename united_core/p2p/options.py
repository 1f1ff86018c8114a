"""Options the P2P runtime builds its host from (go-libp2p style, one field each).

Plain data with no trio or libp2p import, so plugins can adjust them from the
``united_p2p_configure`` hook before the host exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..acceptance import Rules, Verdict

__all__ = ["GossipOptions", "HostOptions", "Rules", "ScoreSettings", "Verdict"]


GOSSIPSUB_V10 = "/meshsub/1.0.0"
GOSSIPSUB_V11 = "/meshsub/1.1.0"
GOSSIPSUB_V12 = "/meshsub/1.2.0"
KNOWN_GOSSIPSUB_PROTOCOLS = (GOSSIPSUB_V12, GOSSIPSUB_V11, GOSSIPSUB_V10)


@dataclass(frozen=True)
class ScoreSettings:
    """Gossipsub v1.1 peer-scoring parameters (the subset a chat mesh uses)."""

    first_delivery_weight: float = 0.5  # P2, per first delivery, capped
    first_delivery_cap: float = 20.0
    first_delivery_decay: float = 0.9
    invalid_weight: float = 10.0  # P4, subtracted per invalid message
    invalid_decay: float = 0.99
    app_weight: float = 1.0  # P6: the application score (set_app_scores)
    gossip_threshold: float = -10.0
    publish_threshold: float = -50.0
    graylist_threshold: float = -80.0


@dataclass
class GossipOptions:
    """Gossipsub router parameters. Defaults follow DESIGN §4 and PERF-NOTES."""

    # v1.2's IDONTWANT doubles CPU at our message sizes (PERF-NOTES #2).
    protocols: tuple[str, ...] = (GOSSIPSUB_V11, GOSSIPSUB_V10)
    degree: int = 4
    degree_low: int = 3
    degree_high: int = 6
    # Peers gossiped to (IHAVE) per heartbeat; py-libp2p hard-codes 6 (UnitedGossipSub).
    degree_lazy: int = 6
    heartbeat_interval: float = 1.0
    gossip_window: int = 3
    gossip_history: int = 5
    time_to_live: int = 60
    # Off: a predictable degree; spam protection would throttle the super-seeder;
    # eclipse protection wants 3 distinct IPs, which loopback, a LAN or a relay lacks.
    adaptive_gossip: bool = False
    spam_protection: bool = False
    eclipse_protection: bool = False
    # Peer scoring, as data (the runtime builds py-libp2p's ScoreParams from it);
    # None keeps py-libp2p's (all weights 0). Application scores (P6) per peer
    # are set at run time with ``P2PRuntime.set_app_scores``.
    scoring: ScoreSettings | None = None
    seen_ttl: int = 600


@dataclass
class HostOptions:
    """Everything the runtime needs to build and run the host."""

    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    dial_timeout: float = 10.0
    # No pruning below this many connections (there is no hard global cap by design).
    max_connections: int = 100_000
    # Bounded waits and queues (backpressure instead of silent drops).
    publish_timeout: float = 5.0
    max_inflight_publishes: int = 64
    outbound_high_water: int = 24  # of py-libp2p's 32-slot per-peer RPC queue
    inbound_queue_size: int = 1024
    event_queue_size: int = 1024
    gossip: GossipOptions = field(default_factory=GossipOptions)
    # Freshness windows of the acceptance path (``[mesh]``, ``[archive]`` set them).
    acceptance: Rules = field(default_factory=Rules)
