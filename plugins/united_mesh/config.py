"""``[mesh]``: gossipsub parameters and peer scoring for a chat mesh.

Defaults are for a chat community: D=4 (D_lo 3, D_hi 6), a 1 s heartbeat, and
scoring that punishes invalid messages fast while never penalising volume
(see docs/mesh.md for the reasoning and the measurements). The settings that feed
the runtime's gossipsub options take their defaults from ``united_core.defaults``,
the one table the runtime reads too; the others are the mesh's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from united_core import defaults
from united_core.api import ConfigValueError, setting


@dataclass(frozen=True)
class Config:
    d: int = setting(defaults.DEGREE, "Target mesh degree per topic (gossipsub D).", min=1, max=32)
    d_lo: int = setting(
        defaults.DEGREE_LOW, "Graft below this many mesh peers (D_lo).", min=1, max=32
    )
    d_hi: int = setting(
        defaults.DEGREE_HIGH, "Prune above this many mesh peers (D_hi).", min=1, max=64
    )
    d_lazy: int = setting(
        defaults.DEGREE_LAZY, "Peers gossiped to (IHAVE) per heartbeat (D_lazy).", min=0, max=64
    )
    heartbeat_interval: float = setting(
        defaults.HEARTBEAT_INTERVAL, "Gossipsub heartbeat, seconds.", min=0.05, max=60
    )
    gossip_window: int = setting(
        defaults.GOSSIP_WINDOW, "Heartbeats of history gossiped about (IHAVE).", min=1, max=100
    )
    gossip_history: int = setting(
        defaults.GOSSIP_HISTORY, "Heartbeats of messages kept for IWANT.", min=1, max=1000
    )
    seen_ttl: int = setting(
        defaults.SEEN_TTL,
        "Seconds a message id is remembered (duplicates dropped).",
        min=10,
        max=86400,
    )
    max_message_age: float = setting(
        defaults.MAX_MESSAGE_AGE,
        "Envelopes older than this (by their timestamp) are dropped as replays.",
        min=5,
        max=86400,
    )
    max_future_skew: float = setting(
        defaults.MAX_FUTURE_SKEW,
        "Envelopes stamped further in the future are rejected.",
        min=1,
        max=86400,
    )
    rate_limit: float = setting(
        5.0,
        "Messages a second a member may send on average (gossip and archive alike); "
        "the excess is neither forwarded nor archived.",
        min=0.01,
        max=1e6,
    )
    rate_burst: int = setting(
        200, "Messages a member may send in a row before rate_limit applies.", min=1, max=10**7
    )
    dial_per_channel: int = setting(
        4, "Online members dialed per channel, to fill its mesh (plus the server).", min=0, max=64
    )
    # Peer scoring (gossipsub v1.1). Penalties are subtracted, so weights are positive.
    score_invalid_weight: float = setting(
        defaults.INVALID_WEIGHT, "Score lost per invalid message (P4 weight).", min=0.0, max=1e6
    )
    score_invalid_decay: float = setting(
        defaults.INVALID_DECAY,
        "Per-heartbeat decay of the invalid-message counter.",
        min=0.0,
        max=1.0,
    )
    score_first_delivery_weight: float = setting(
        defaults.FIRST_DELIVERY_WEIGHT,
        "Score gained per first delivery of a message (P2 weight).",
        min=0.0,
        max=1e6,
    )
    score_first_delivery_cap: float = setting(
        defaults.FIRST_DELIVERY_CAP, "Most first deliveries counted (P2 cap).", min=0.0, max=1e6
    )
    gossip_threshold: float = setting(
        defaults.GOSSIP_THRESHOLD, "Below this score no gossip is exchanged.", max=0.0
    )
    publish_threshold: float = setting(
        defaults.PUBLISH_THRESHOLD, "Below this score a peer's publishes are refused.", max=0.0
    )
    graylist_threshold: float = setting(
        defaults.GRAYLIST_THRESHOLD, "Below this score a peer is ignored.", max=0.0
    )
    server_score_bonus: float = setting(
        1000.0, "Application score of the server, so it is never graylisted.", min=0.0, max=1e9
    )
    allow_test_actions: bool = setting(
        False, "Enable `send-invalid` (publishes a corrupted envelope; for tests only)."
    )

    def validate(self) -> None:
        if self.max_message_age >= self.seen_ttl:
            raise ConfigValueError("max_message_age", "must be below seen_ttl (replay window)")
        if not self.d_lo <= self.d <= self.d_hi:
            raise ConfigValueError("d", "must satisfy d_lo <= d <= d_hi")
        if not self.graylist_threshold <= self.publish_threshold <= self.gossip_threshold:
            raise ConfigValueError(
                "publish_threshold", "must satisfy graylist <= publish <= gossip threshold"
            )
