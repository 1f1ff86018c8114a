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

The NAT kind (:func:`nat_kind`): ``none`` when public (the address reached is
the node's own, at the IP the server sees). Otherwise what the observations say
(:func:`mapping`, STUN-like): the server's ``result`` carries two reflector
ports and a token; the node connects to both from its own listen port and each
answer says where that connection came from. Seen as itself both times: ``none``;
at the same address and port both times: ``endpoint-independent``; at two
different ones: ``symmetric``. Without observations (an older server, one that
does not observe, a failure or a timeout) it is what one server connection can
tell soundly: ``none`` when private but seen at one of its own IPs (a firewall,
no translation), ``unknown`` otherwise.

One server with one IP cannot tell an address-dependent mapping (a new port per
destination IP, the same for every port of one IP) from an endpoint-independent
one: both reflector ports are on the same IP, so such a NAT shows up as
``endpoint-independent``, although hole punching through it fails as through a
symmetric one. It does tell endpoint-independent from address-and-port-dependent
(symmetric) mapping; RFC 4787 asks home routers for the former (docs/autonat.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import multiaddr

from .wire import DIAL_ERROR, OK, OTHER_IP, REFUSED, AddrResult

PUBLIC, PRIVATE, UNKNOWN = "public", "private", "unknown"
NONE, ENDPOINT_INDEPENDENT, SYMMETRIC = "none", "endpoint-independent", "symmetric"

Endpoint = tuple[str, int]  # (ip, port)


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


def mapping(observations: Sequence[tuple[Endpoint, Endpoint]]) -> str:
    """The NAT kind from two observations of one local port towards two destinations:
    each ``(local endpoint, endpoint the server saw)``.

    ``none`` when each was seen as itself; ``endpoint-independent`` when both were
    seen at the same (ip, port), not its own; ``symmetric`` when at different ones
    (another port, or another IP: a mapping that depends on the destination);
    ``unknown`` without two observations of one local endpoint.
    """
    pairs = [(_endpoint(local), _endpoint(seen)) for local, seen in observations]
    if len(pairs) != 2 or any(e is None for pair in pairs for e in pair):
        return UNKNOWN
    if len({local for local, _ in pairs}) != 1:
        return UNKNOWN  # not one local endpoint: nothing to compare
    if all(local == seen for local, seen in pairs):
        return NONE
    return ENDPOINT_INDEPENDENT if len({seen for _, seen in pairs}) == 1 else SYMMETRIC


def nat_kind(reachability: str, concluded: str, observed: str | None) -> str:
    """The node's NAT kind: ``none`` when public; else what the observations said
    (:func:`mapping`) when they said something; else ``concluded`` (:func:`conclude`)."""
    if reachability == PUBLIC:
        return NONE
    if observed in (NONE, ENDPOINT_INDEPENDENT, SYMMETRIC):
        return observed
    return concluded


def _endpoint(value: Endpoint) -> Endpoint | None:
    try:
        ip, port = value
        address = ipaddress.ip_address(ip)
    except (TypeError, ValueError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    return str(address), port
