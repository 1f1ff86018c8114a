"""Sticky listen ports: a node told to listen on port 0 keeps the port it got.

Peers redial the address they last knew (the reconnect plugin). A member that
restarts on a new random port is found again only once the directory announces
its new address, and while the server is down nobody can (issue 11: a member
restarted during an outage got none of the others' messages). Reusing last
run's port, when it is still free, makes the old address right again. The ports
are kept in a small JSON file in the node's data directory, per listen address
as configured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path

import multiaddr

log = logging.getLogger(__name__)


def _tcp_port(addr: str) -> tuple[str, str, int] | None:
    """(ip protocol, ip, port) of a TCP multiaddr, else None."""
    try:
        ma = multiaddr.Multiaddr(addr.split("/p2p/")[0])
        names = {p.name for p in ma.protocols()}
        if "tcp" not in names:
            return None
        proto = "ip6" if "ip6" in names else "ip4"
        return proto, ma.value_for_protocol(proto), int(ma.value_for_protocol("tcp"))
    except Exception:  # not one of ours to rewrite
        return None


def _free(proto: str, ip: str, port: int) -> bool:
    family = socket.AF_INET6 if proto == "ip6" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


def _load(port_file: Path) -> dict[str, int]:
    try:
        data = json.loads(port_file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int) and 0 < v < 65536}


def sticky_listen(addrs: Iterable[str], port_file: Path | None) -> tuple[str, ...]:
    """``addrs`` with each port-0 address given last run's port, where still free."""
    addrs = tuple(addrs)
    if port_file is None:
        return addrs
    remembered = _load(port_file)
    out = []
    for addr in addrs:
        parsed, port = _tcp_port(addr), remembered.get(addr)
        if parsed is not None and parsed[2] == 0 and port is not None:
            if _free(parsed[0], parsed[1], port):
                addr = addr.replace("/tcp/0", f"/tcp/{port}", 1)
            else:
                log.info("port %d of last run is taken; listening on a new one", port)
        out.append(addr)
    return tuple(out)


def remember_ports(
    port_file: Path | None, requested: Iterable[str], listening: Iterable[str]
) -> None:
    """Keep the port each port-0 address of ``requested`` got (``listening``, as the
    host reports them) for the next run."""
    if port_file is None:
        return
    got: dict[str, int] = {}
    bound = [p for p in map(_tcp_port, listening) if p is not None]
    for addr in requested:
        parsed = _tcp_port(addr)
        if parsed is None or parsed[2] != 0:
            continue
        match = next((p for p in bound if p[:2] == parsed[:2]), None)
        if match is not None:
            got[addr] = match[2]
    if not got or got == _load(port_file):
        return
    tmp = port_file.with_suffix(".tmp")
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # data is owner-only
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(got))
        os.replace(tmp, port_file)
