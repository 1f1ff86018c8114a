"""``[autonat]``: how the server answers reachability probes (defaults after go's AutoNAT v2)."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.api import setting

from ..wire import MAX_REQUEST_ADDRS


@dataclass(frozen=True)
class Config:
    max_addrs: int = setting(
        4,
        "Addresses dialed back per probe at most; the rest of a request is refused "
        "(too-many). Each dial takes up to dial_timeout.",
        min=1,
        max=MAX_REQUEST_ADDRS,
    )
    dial_timeout: float = setting(
        5.0,
        "Seconds one dial-back may take: connect, Noise and Yamux handshakes, the nonce "
        "and its acknowledgement. A member behind NAT makes the dial wait this long.",
        min=0.5,
        max=60,
    )
    peer_probes_per_minute: int = setting(
        6,
        "Probes one member may ask for per minute (one at a time); more are refused "
        "(rate-limited) with the seconds to wait.",
        min=1,
        max=600,
    )
    max_concurrent: int = setting(
        16,
        "Probes running at once for all members together; more are refused (busy).",
        min=1,
        max=4096,
    )
