"""Options the P2P runtime builds its host from (go-libp2p style, one field each).

Plain data with no trio or libp2p import, so plugins can adjust them from the
``united_p2p_configure`` hook before the host exists. Every default comes from
:mod:`united_core.defaults` (the one table): ``HostOptions()`` is what a node
with an empty ``united.toml`` runs with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import defaults
from ..acceptance import Rules, Verdict

__all__ = ["GossipOptions", "HostOptions", "Rules", "ScoreSettings", "Verdict"]


GOSSIPSUB_V10 = "/meshsub/1.0.0"
GOSSIPSUB_V11 = "/meshsub/1.1.0"
GOSSIPSUB_V12 = "/meshsub/1.2.0"
KNOWN_GOSSIPSUB_PROTOCOLS = (GOSSIPSUB_V12, GOSSIPSUB_V11, GOSSIPSUB_V10)


@dataclass(frozen=True)
class ScoreSettings:
    """Gossipsub v1.1 peer-scoring parameters (the subset a chat mesh uses)."""

    first_delivery_weight: float = defaults.FIRST_DELIVERY_WEIGHT  # P2, capped
    first_delivery_cap: float = defaults.FIRST_DELIVERY_CAP
    first_delivery_decay: float = defaults.FIRST_DELIVERY_DECAY
    invalid_weight: float = defaults.INVALID_WEIGHT  # P4, subtracted per invalid message
    invalid_decay: float = defaults.INVALID_DECAY
    app_weight: float = defaults.APP_WEIGHT  # P6: the application score (set_app_scores)
    gossip_threshold: float = defaults.GOSSIP_THRESHOLD
    publish_threshold: float = defaults.PUBLISH_THRESHOLD
    graylist_threshold: float = defaults.GRAYLIST_THRESHOLD


@dataclass
class GossipOptions:
    """Gossipsub router parameters (the reasons for each default: ``defaults.py``)."""

    protocols: tuple[str, ...] = defaults.GOSSIPSUB_PROTOCOLS
    degree: int = defaults.DEGREE
    degree_low: int = defaults.DEGREE_LOW
    degree_high: int = defaults.DEGREE_HIGH
    # py-libp2p hard-codes D_lazy; UnitedGossipSub makes it settable.
    degree_lazy: int = defaults.DEGREE_LAZY
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    gossip_window: int = defaults.GOSSIP_WINDOW
    gossip_history: int = defaults.GOSSIP_HISTORY
    time_to_live: int = defaults.TIME_TO_LIVE
    adaptive_gossip: bool = defaults.ADAPTIVE_GOSSIP
    spam_protection: bool = defaults.SPAM_PROTECTION
    eclipse_protection: bool = defaults.ECLIPSE_PROTECTION
    # Peer scoring, as data (the runtime builds py-libp2p's ScoreParams from it);
    # None keeps py-libp2p's (all weights 0). Application scores (P6) per peer
    # are set at run time with ``P2PRuntime.set_app_scores``.
    scoring: ScoreSettings | None = None
    seen_ttl: int = defaults.SEEN_TTL


@dataclass
class HostOptions:
    """Everything the runtime needs to build and run the host."""

    listen_addrs: tuple[str, ...] = defaults.LISTEN_ADDRS
    # Where port-0 listen addresses keep last run's port (None: a new port each run).
    port_file: Path | None = None
    # Plugins' trio-side services (``services.P2PService``), run once the host listens.
    services: list[Any] = field(default_factory=list)
    dial_timeout: float = defaults.DIAL_TIMEOUT
    max_connections: int = defaults.MAX_CONNECTIONS
    publish_timeout: float = defaults.PUBLISH_TIMEOUT
    max_inflight_publishes: int = defaults.MAX_INFLIGHT_PUBLISHES
    outbound_high_water: int = defaults.OUTBOUND_HIGH_WATER
    inbound_queue_size: int = defaults.INBOUND_QUEUE_SIZE
    # py-libp2p hot-path speed-ups switched on (names: ``speedups.ALL_SPEEDUPS``).
    speedups: tuple[str, ...] = defaults.SPEEDUPS
    gossip: GossipOptions = field(default_factory=GossipOptions)
    # Freshness windows of the acceptance path (``[mesh]``, ``[archive]`` set them).
    acceptance: Rules = field(default_factory=Rules)
