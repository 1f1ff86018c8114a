"""Events the P2P runtime hands from its trio thread to asyncio consumers."""

from __future__ import annotations

from dataclasses import dataclass

from ..envelope import SignedMessage


@dataclass(frozen=True)
class PeerConnected:
    peer_id: str
    addrs: tuple[str, ...]
    direction: str  # "inbound" | "outbound"
    relayed: bool = False


@dataclass(frozen=True)
class PeerDisconnected:
    peer_id: str


@dataclass(frozen=True)
class MessageReceived:
    """A validated envelope delivered on a subscribed topic."""

    message: SignedMessage
    from_peer: str  # the forwarding peer (ourself for our own publishes)
    received_at: float  # time.time() on arrival


@dataclass(frozen=True)
class AddrsChanged:
    """What the node announces changed (a service added or dropped a relayed address)."""

    addrs: tuple[str, ...]


@dataclass(frozen=True)
class ReachabilityChanged:
    """What a reachability probe (AutoNAT) concluded about this node."""

    reachability: str  # "public" | "private" | "unknown"
    nat: str = "unknown"  # "none" | "endpoint-independent" | "symmetric" | "unknown"


REACHABILITIES = ("public", "private", "unknown")
NAT_KINDS = ("none", "endpoint-independent", "symmetric", "unknown")

P2PEvent = PeerConnected | PeerDisconnected | MessageReceived | AddrsChanged | ReachabilityChanged
