"""``[autonat]``: how the server answers reachability probes (defaults after go's AutoNAT v2)."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.api import ConfigValueError, setting

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
    observe_ports: tuple[int, ...] = setting(
        (7422, 7423),
        "Two TCP ports where members learn their NAT kind (endpoint-independent or "
        "symmetric mapping): after a probe a member connects to each from its own listen "
        "port with a one-time token and hears back the address it came from. On the "
        "host of the libp2p listen address; open them in the firewall. [] turns it "
        "off; 0 picks a free port.",
        min=0,
        max=65535,
    )

    def validate(self) -> None:
        ports = self.observe_ports
        if len(ports) not in (0, 2):
            raise ConfigValueError("observe_ports", "two ports, or [] for none")
        if ports and ports[0] == ports[1] != 0:
            raise ConfigValueError("observe_ports", "two different ports (0: any free one)")
