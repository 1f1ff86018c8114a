"""Addresses other hosts can dial, and dial errors with their reason (issue 11).

A node that listens on ``/ip4/0.0.0.0/tcp/PORT`` must never announce that address:
a peer on another host that dials it reaches its *own* machine. The wildcard is
expanded to the addresses of this host's interfaces (non-loopback first; loopback
only when the host has nothing else, which is what a single-machine test has).

Interfaces are read in process with ``socket.if_nameindex()`` and the
``SIOCGIFFLAGS``/``SIOCGIFADDR`` ioctls (IPv4) and ``/proc/net/if_inet6`` (IPv6):
no extra dependency, no subprocess, and it follows what the kernel says now
(a namespace sees only its own interfaces). Only interfaces that are up count.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "describe_error",
    "dialable_addrs",
    "expand_wildcards",
    "is_wildcard",
    "local_addresses",
]

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_WILDCARDS = ("/ip4/0.0.0.0/", "/ip6/::/")


def is_wildcard(addr: str) -> bool:
    """True for a multiaddr on ``0.0.0.0`` or ``::`` (listenable, never dialable)."""
    return any(addr.startswith(w) for w in _WILDCARDS)


def _ipv4_addresses() -> list[str]:
    try:
        import fcntl
    except ImportError:  # not Linux/Unix
        return []
    out: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            req = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req)[16:18])[0]
                if not flags & _IFF_UP:
                    continue
                raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            except OSError:  # no IPv4 address on this interface
                continue
            out.append(socket.inet_ntoa(raw[20:24]))
    return out


def _ipv6_addresses() -> list[str]:
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) < 6:
            continue
        addr = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
        if addr.is_link_local:  # needs a zone id: not announceable
            continue
        out.append(str(addr))
    return out


def local_addresses(family: int = socket.AF_INET) -> list[str]:
    """This host's interface addresses: non-loopback ones, else the loopback ones."""
    found = _ipv4_addresses() if family == socket.AF_INET else _ipv6_addresses()
    found = list(dict.fromkeys(found))
    public = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return public or [a for a in found if ipaddress.ip_address(a).is_loopback]


def expand_wildcards(addrs: Iterable[str], *, local: Iterable[str] | None = None) -> list[str]:
    """Each wildcard listen address replaced by one address per local interface.

    ``local`` (IPv4 and IPv6 strings) replaces the interface scan (tests).
    Concrete addresses pass unchanged; duplicates are dropped; order is kept.
    """
    if local is None:
        v4, v6 = local_addresses(socket.AF_INET), local_addresses(socket.AF_INET6)
    else:
        local = list(local)
        v4 = [a for a in local if ipaddress.ip_address(a).version == 4]
        v6 = [a for a in local if ipaddress.ip_address(a).version == 6]
    out: list[str] = []
    for addr in addrs:
        if addr.startswith("/ip4/0.0.0.0/"):
            out += [addr.replace("/ip4/0.0.0.0/", f"/ip4/{ip}/", 1) for ip in v4]
        elif addr.startswith("/ip6/::/"):
            out += [addr.replace("/ip6/::/", f"/ip6/{ip}/", 1) for ip in v6]
        else:
            out.append(addr)
    return list(dict.fromkeys(out))


def dialable_addrs(addrs: Iterable[str], *, prefer_host: str | None = None) -> list[str]:
    """``addrs`` without wildcards (and port 0); those on ``prefer_host`` first.

    What a dialer should try, in order: a peer announced several interfaces, and
    the one we already reach it by (the server's URL host) is the likeliest to work.
    """
    out = [a for a in addrs if not is_wildcard(a) and "/tcp/0/" not in a + "/"]
    if prefer_host:
        tags = (f"/ip4/{prefer_host}/", f"/ip6/{prefer_host}/", f"/dns4/{prefer_host}/")
        out.sort(key=lambda a: not a.startswith(tags))
    return out


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for ``exc`` and every cause under it, never an empty string.

    py-libp2p raises dial errors with empty messages whose reason is in the
    ``__cause__``/``__context__`` chain (or in an exception group's members).
    """
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 8:
        seen.add(id(current))
        text = str(current).strip()
        if isinstance(current, BaseExceptionGroup):
            inner = "; ".join(describe_error(e) for e in current.exceptions[:3])
            text = f"{current.message}: [{inner}]"
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return " <- ".join(parts)
