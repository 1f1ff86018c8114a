"""Hole punching's address rules and figures (``united_relay_client.holepunch``);
the punching itself runs in the NAT lab (test_holepunch_natlab.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import multiaddr
from united_relay_client.config import Config as ClientConfig
from united_relay_client.holepunch import (
    _decode,
    listen_source,
    missing_calls,
    observed_public_addrs,
    public_tcp,
)
from united_relay_client.panel import render_panel


def m(addr: str) -> multiaddr.Multiaddr:
    return multiaddr.Multiaddr(addr)


def test_only_public_tcp_addresses_are_sent_or_dialed() -> None:
    assert str(public_tcp(m("/ip4/203.0.113.11/tcp/7420"))) == "/ip4/203.0.113.11/tcp/7420"
    assert str(
        public_tcp(m("/ip4/8.8.8.8/tcp/1/p2p/12D3KooWBmwkafWE2fqfzS96VoTZxPuwzaQ3thT4DnTMq8L6Bf3p"))
    ) == ("/ip4/8.8.8.8/tcp/1")
    for addr in (
        "/ip4/10.1.0.10/tcp/7420",  # a LAN address
        "/ip4/192.168.1.2/tcp/7420",
        "/ip4/0.0.0.0/tcp/7420",
        "/ip4/127.0.0.1/tcp/7420",
        "/ip6/::1/tcp/7420",
        "/ip4/203.0.113.10/tcp/7420/p2p/12D3KooWBmwkafWE2fqfzS96VoTZxPuwzaQ3thT4DnTMq8L6Bf3p/p2p-circuit",
        "/ip4/203.0.113.11/udp/7420/quic-v1",
    ):
        assert public_tcp(m(addr)) is None, addr
    sent = [
        m(a).to_bytes()
        for a in ("/ip4/10.2.0.10/tcp/7420", "/ip4/203.0.113.12/tcp/7420", "/ip4/0.0.0.0/tcp/1")
    ]
    assert [str(a) for a in _decode([*sent, b"garbage", sent[1]])] == ["/ip4/203.0.113.12/tcp/7420"]


class FakeHost:
    def __init__(self, observed: list[str], listening: list[str]) -> None:
        self._observed_addr_manager = SimpleNamespace(
            addrs=lambda min_observers=1: [m(a) for a in observed]
        )
        self._listening = [m(a) for a in listening]

    def get_transport_addrs(self) -> list[multiaddr.Multiaddr]:
        return self._listening


def test_our_addresses_are_the_observed_public_ips_with_our_listen_port() -> None:
    host: Any = FakeHost(
        ["/ip4/203.0.113.11/tcp/40312", "/ip4/10.1.0.10/tcp/5000", "/ip4/203.0.113.11/tcp/40999"],
        ["/ip4/0.0.0.0/tcp/7420"],
    )
    assert [str(a) for a in observed_public_addrs(host)] == ["/ip4/203.0.113.11/tcp/7420"]
    assert listen_source(host, m("/ip4/203.0.113.12/tcp/7420")) == ("0.0.0.0", 7420)
    nothing: Any = FakeHost([], ["/ip4/0.0.0.0/tcp/7420"])
    assert observed_public_addrs(nothing) == []
    lan_only: Any = FakeHost(["/ip4/127.0.0.1/tcp/1"], ["/ip4/127.0.0.1/tcp/7420"])
    assert observed_public_addrs(lan_only) == []


def test_the_installed_libp2p_has_what_hole_punching_uses() -> None:
    assert missing_calls() == []
    assert ClientConfig().hole_punch is True


def test_the_panel_shows_hole_punching() -> None:
    figures = {
        "mode": "auto",
        "wanted": True,
        "reserved": False,
        "hole_punch": True,
        "punch_attempts": 2,
        "punch_successes": 1,
        "punch_failures": 1,
        "punch_answered": 1,
        "punch_answered_ok": 1,
        "punch_last_error": "no direct connection within 5 s",
        "punched_peers": ["12D3KooWBmwkafWE2fqfzS96VoTZxPuwzaQ3thT4DnTMq8L6Bf3p"],
    }
    lines = render_panel({"plugins": {"relay-client": figures}})
    text = "\n".join(lines)
    assert "hole punching: 2 tried, 1 direct, 1 stayed relayed; answered 1 (1 direct)" in text
    assert f"hole-punched: {figures['punched_peers'][0][-12:]}" in text  # type: ignore[index]
    assert "last failure: no direct connection within 5 s" in text
    off = render_panel({"plugins": {"relay-client": {**figures, "hole_punch": False}}})
    assert off[-1] == "  hole punching off"
