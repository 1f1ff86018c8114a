"""The relay in the NAT lab (tests/natlab.py): real ``united run`` processes, the
server on the lab's internet (203.0.113.10, its preset unchanged: libp2p on
0.0.0.0:7420), alice and bob each behind a home router that drops unsolicited
inbound traffic. The presets run ``relay`` and ``relay-client``; the members'
``mode = "auto"`` finds only private addresses (10.K.0.10) and reserves.

Two members behind symmetric NATs (no hole punching possible) meet through the
relay, and messages flow both ways. Prints the time from the members' start to
their relayed connection and to the first message.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from natlab import SERVER, NatLab
from netns import CHANNEL, WS_PORT, NsNode, connected_ids, peer_id, plugin_stats, texts, wait_for

from united_core.testing import add_to_table

pytestmark = [pytest.mark.natlab, pytest.mark.slow, pytest.mark.timeout(120)]


def natlab_community(lab: NatLab, base: Path) -> tuple[NsNode, dict[str, NsNode]]:
    """The server in host "server", alice in home1 and bob in home2, all in CHANNEL."""
    result = lab.united("server", "init", "--role", "server", "--dir", str(base / "server"))
    assert result.returncode == 0, result.stderr
    config = base / "server" / "united.toml"
    add_to_table(config, "directory", f'public_url = "ws://{SERVER}:{WS_PORT}/ws"')
    server = lab.node("server", "server", config)
    server.start()
    server.ctl("channel-create", CHANNEL)
    members = {}
    for home, name in (("home1", "alice"), ("home2", "bob")):
        invite = server.ctl("invite")
        argv = ("join", invite["url"], invite["code"], "--dir", str(base / name), "--name", name)
        joined = lab.united(home, *argv)
        assert joined.returncode == 0, joined.stderr
        members[name] = lab.node(home, name, base / name / "united.toml")
    for member in members.values():
        member.start()
        member.ctl("join", CHANNEL)
    return server, members


def relayed_ids(node: NsNode) -> set[str]:
    return {r["peer_id"] for r in node.try_ctl("peers") or [] if r.get("relayed")}


def test_members_behind_symmetric_nats_talk_through_the_relay(tmp_path: Path) -> None:
    with NatLab(homes=("symmetric", "symmetric"), peer=False) as lab:
        server, members = natlab_community(lab, tmp_path)
        started = time.monotonic()
        alice, bob = members["alice"], members["bob"]
        ids = {name: peer_id(node) for name, node in members.items()}
        wait_for(
            lambda: plugin_stats(server, "relay").get("reservations") == 2,
            20,
            "both members reserved on the server",
        )
        for node in (alice, bob):
            client = plugin_stats(node, "relay-client")
            assert client["mode"] == "auto" and client["reserved"], client
            assert client["addr"] == f"/ip4/{SERVER}/tcp/7420/p2p/{peer_id(server)}/p2p-circuit"
        wait_for(lambda: ids["bob"] in relayed_ids(alice), 30, "alice relayed to bob")
        wait_for(lambda: ids["alice"] in relayed_ids(bob), 10, "bob relayed to alice")
        connected = time.monotonic() - started
        assert ids["bob"] in connected_ids(alice.ctl("peers"))

        sent = time.monotonic()
        alice.ctl("send", CHANNEL, "hello bob, through the relay")
        wait_for(
            lambda: "hello bob, through the relay" in texts(bob, confirmed=False),
            15,
            "alice's message at bob",
        )
        delivered = time.monotonic() - sent
        bob.ctl("send", CHANNEL, "hello alice")
        wait_for(lambda: "hello alice" in texts(alice, confirmed=False), 15, "bob's at alice")
        figures = plugin_stats(server, "relay")
        assert figures["circuits"] >= 1 and figures["bytes_relayed"] > 0, figures
        assert figures["refused"]["connect"] == {}, figures
        print(
            f"[natlab] relay, two symmetric NATs: relayed connection {connected:.2f} s after "
            f"the members started, a message {delivered * 1000:.0f} ms after it was sent"
        )
