"""Addresses other hosts can dial, dial errors with a reason, and the namespace lab."""

from __future__ import annotations

import subprocess
import sys

import pytest
from netns import Lab, netns_unavailable

from united_core.api import (
    ConfigValueError,
    describe_error,
    dialable_addrs,
    expand_wildcards,
    is_wildcard,
    validate_multiaddrs,
)
from united_core.netaddrs import local_addresses


def test_wildcards_expand_to_each_interface_address() -> None:
    local = ["198.51.100.2", "192.0.2.7", "2001:db8::1"]
    assert expand_wildcards(
        ["/ip4/0.0.0.0/tcp/7420", "/ip6/::/tcp/7420", "/ip4/203.0.113.5/tcp/1"], local=local
    ) == [
        "/ip4/198.51.100.2/tcp/7420",
        "/ip4/192.0.2.7/tcp/7420",
        "/ip6/2001:db8::1/tcp/7420",
        "/ip4/203.0.113.5/tcp/1",
    ]
    # With no interface address, a wildcard yields nothing rather than itself.
    assert expand_wildcards(["/ip4/0.0.0.0/tcp/1"], local=[]) == []
    real = expand_wildcards(["/ip4/0.0.0.0/tcp/1"])
    assert real and not any(is_wildcard(a) for a in real)
    assert local_addresses()  # at least loopback


def test_dialable_addrs_drop_wildcards_and_prefer_the_known_host() -> None:
    addrs = [
        "/ip4/0.0.0.0/tcp/1",
        "/ip4/10.0.0.1/tcp/1",
        "/ip4/192.0.2.1/tcp/1/p2p/Qm",
        "/ip4/192.0.2.1/tcp/0",
    ]
    assert dialable_addrs(addrs, prefer_host="192.0.2.1") == [
        "/ip4/192.0.2.1/tcp/1/p2p/Qm",
        "/ip4/10.0.0.1/tcp/1",
    ]


def test_announce_addrs_refuse_a_wildcard() -> None:
    with pytest.raises(ConfigValueError, match="wildcard"):
        validate_multiaddrs("announce_addrs", ["/ip4/0.0.0.0/tcp/7420"], dialable=True)
    validate_multiaddrs("listen", ["/ip4/0.0.0.0/tcp/7420"])  # fine to listen on


def test_a_dial_error_shows_its_cause_chain() -> None:
    class SwarmException(Exception):
        pass

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise SwarmException("") from exc
    except SwarmException as exc:
        text = describe_error(exc)
    assert text == "SwarmException <- ConnectionRefusedError: [Errno 111] Connection refused"
    group = ExceptionGroup("all dials failed", [TimeoutError()])
    assert describe_error(group) == "ExceptionGroup: all dials failed: [TimeoutError]"


PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=1).close()
    print("open")
except ConnectionRefusedError:
    print("refused")  # a RST came back: the host is reachable
except OSError as exc:
    print(type(exc).__name__)
"""


def reaches(lab: Lab, index: int, address: str) -> bool:
    out = lab.run(index, sys.executable, "-c", PROBE, address, timeout=10).stdout.strip()
    return out in ("open", "refused")


@pytest.mark.netns
@pytest.mark.timeout(30)
def test_the_lab_joins_hosts_cuts_links_and_cleans_up() -> None:
    if reason := netns_unavailable():
        pytest.skip(reason)
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    with pytest.raises(RuntimeError, match="boom"), Lab(hosts=2) as lab:
        names = [lab.bridge, *(h.netns for h in lab.hosts)]
        assert reaches(lab, 1, lab.host(2).address)
        lab.cut(2)
        assert not reaches(lab, 1, lab.host(2).address)
        lab.restore(2)
        assert reaches(lab, 1, lab.host(2).address)
        assert not reaches(lab, 1, "192.0.2.99")  # nothing routes out of the lab
        raise RuntimeError("boom")  # cleanup happens on failure too
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in after for name in names)
    assert after.split() == before.split() or set(after.split()) <= set(before.split())
