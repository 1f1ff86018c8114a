"""What a probe's answer means for this node: reachability and NAT kind (plain data).

- ``public`` only when the server says ``OK`` for an address **and** this node's
  dial-back handler saw the probe's nonce, for that address, on an inbound
  direct (not relayed) connection from the dialer the server announced. The
  server's word alone is never enough: that is how py-libp2p's AutoNAT reports
  a false public (it "dials back" over the connection the request came on).
- ``private`` when no address was reached and each one either failed to connect
  (``DIAL_ERROR``) or is not where the server sees this node come from
  (``REFUSED``/``other-ip``: the node's own address is not the one its traffic
  leaves with, so something translates it, and nobody outside reaches it there).
- ``unknown`` otherwise: nothing to probe, an address the server would not try
  (unsupported, too many), or an ``OK`` without the nonce (logged: a server or
  network that lies).

The NAT kind is only what one server can tell soundly: ``none`` when public (the
address reached is the node's own, at the IP the server sees) or when private
but seen at one of its own IPs (a firewall, no translation); ``unknown``
otherwise. Endpoint-independent versus symmetric mapping needs two
observations of one local port from two destinations; one server connection
cannot give them (docs/autonat.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import multiaddr

from .wire import DIAL_ERROR, OK, OTHER_IP, REFUSED, AddrResult

PUBLIC, PRIVATE, UNKNOWN = "public", "private", "unknown"


def candidates(addrs: Iterable[str]) -> tuple[str, ...]:
    """What a node asks to be probed at: its announced addresses that are not relayed."""
    return tuple(dict.fromkeys(a for a in addrs if "/p2p-circuit" not in a))


def ip_of(addr: str) -> str | None:
    try:
        for proto, value in multiaddr.Multiaddr(addr).items():
            if proto.name in ("ip4", "ip6"):
                return str(ipaddress.ip_address(value))
    except Exception:
        return None
    return None


def conclude(
    results: Sequence[AddrResult], verified: Iterable[int], observed_ip: str | None
) -> tuple[str, str]:
    """``(reachability, nat)`` from the server's per-address ``results`` and the indexes
    of the addresses whose nonce this node saw arrive on a fresh direct connection."""
    seen = set(verified)
    if any(r.status == OK and i in seen for i, r in enumerate(results)):
        return PUBLIC, "none"
    failed = [
        r.status == DIAL_ERROR or (r.status == REFUSED and r.code == OTHER_IP) for r in results
    ]
    if results and all(failed):
        own = {ip_of(r.addr) for r in results}
        try:
            observed = str(ipaddress.ip_address(observed_ip or ""))
        except ValueError:
            observed = None
        return PRIVATE, "none" if observed is not None and observed in own else "unknown"
    return UNKNOWN, "unknown"
