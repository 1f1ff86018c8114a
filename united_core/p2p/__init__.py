"""The P2P runtime: a libp2p host in its own trio thread behind an asyncio bridge.

This package is the only place that imports trio or libp2p (DESIGN §3). Importing
``united_core.p2p`` itself stays cheap: ``options`` and ``events`` are plain data
that plugins may use; ``runtime`` pulls in trio and libp2p.
"""

from .events import MessageReceived, P2PEvent, PeerConnected, PeerDisconnected
from .options import GossipOptions, HostOptions, Verdict

__all__ = [
    "GossipOptions",
    "HostOptions",
    "MessageReceived",
    "P2PEvent",
    "PeerConnected",
    "PeerDisconnected",
    "Verdict",
]
