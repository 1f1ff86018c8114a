"""Whether a member needs the relay (``mode = "auto"``): plain data, no libp2p.

``auto`` follows the node's reachability when a probe has concluded
(``node.p2p.reachability``, the ``autonat-client`` plugin): ``private`` reserves,
``public`` does not. While it is ``unknown`` (no probe yet, or no AutoNAT on the
server) it looks at the addresses the node announces (``node.p2p.announce_addrs``,
relayed ones left out):

- one of them is public (a global IP, a DNS name, or a documentation range,
  which the namespace tests use as their "internet"): reachable, no relay;
- else one of them is on a private network (RFC 1918, CGNAT 100.64/10,
  link-local, IPv6 ULA): behind a router, reserve;
- else (loopback only, or nothing): reachable only from this machine; no relay.
  Tests' in-process communities are loopback-only and so stay relay-free unless
  they ask for ``mode = "always"``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

# TEST-NET-1/2/3 and IPv6's documentation prefix: the namespace labs' public internet.
DOCUMENTATION = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def classify(addr: str) -> str:
    """``"public"``, ``"private"``, ``"loopback"`` or ``"unknown"`` for a multiaddr."""
    parts = addr.split("/")
    if len(parts) < 3:
        return "unknown"
    proto, value = parts[1], parts[2]
    if proto in ("dns", "dns4", "dns6", "dnsaddr"):
        return "public" if value != "localhost" else "loopback"
    if proto not in ("ip4", "ip6"):
        return "unknown"
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return "unknown"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unknown"
    if ip.is_global or any(ip in net for net in DOCUMENTATION):
        return "public"
    return "private"


def needs_relay(mode: str, addrs: Iterable[str], reachability: str = "unknown") -> bool:
    """Whether to hold a reservation, for ``mode``, the node's announced addresses and
    what a reachability probe concluded."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if reachability in ("public", "private"):
        return reachability == "private"
    kinds = {classify(a) for a in addrs if "/p2p-circuit" not in a}
    return "public" not in kinds and "private" in kinds
