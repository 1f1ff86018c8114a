"""The mesh end to end: a server and three members as real `united run` processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from united_core.testing import Community, NodeProcess, add_to_table, poll, united

pytestmark = pytest.mark.slow


class Tail:
    """`united ctl tail --json` on one node, collected in a thread."""

    def __init__(self, node: NodeProcess, channel: str | None = None) -> None:
        args = [
            sys.executable,
            "-m",
            "united_core",
            "ctl",
            "-c",
            str(node.config),
            "tail",
            "--json",
        ]
        if channel:
            args.insert(-1, channel)
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.lines: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def texts(self) -> list[str]:
        return [line["text"] for line in self.lines]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def community(tmp_path: Path) -> Iterator[Community]:
    c = Community(tmp_path, mesh_settings="allow_test_actions = true\n")
    try:
        c.start_server()
        c.create_channel("general")
        c.create_channel("random")
        for name in ("alice", "bob", "carol"):
            c.add_member(name)
        yield c
    finally:
        c.stop()


def join_all(community: Community, channels: list[str]) -> None:
    for member in community.members:
        for channel in channels:
            member.ctl("join", channel)
    everyone = len(community.members)  # the server plus the other members

    def meshes_formed() -> bool:
        for node in [community.server, *community.members]:
            assert node is not None
            topics = node.ctl("topics")
            if any(
                len(topics.get(ch, {}).get("mesh_peers", [])) < min(everyone, 3) for ch in channels
            ):
                return False
        return True

    poll(meshes_formed, timeout=30, interval=0.5)


def test_every_member_and_the_server_receive_every_message(community: Community) -> None:
    join_all(community, ["general"])
    server = community.server
    assert server is not None
    nodes = [server, *community.members]
    tails = {n.name: Tail(n, "general") for n in nodes}
    time.sleep(1.0)  # the tail subscriptions are in place
    try:
        sent: dict[str, list[str]] = {}
        for member in community.members:
            sent[member.name] = [f"{member.name}-{i}" for i in range(5)]
            for text in sent[member.name]:
                member.ctl("send", "general", text)
        expected = {t for texts in sent.values() for t in texts}

        def everyone_has_everything() -> bool:
            return all(expected <= set(tail.texts()) for tail in tails.values())

        poll(everyone_has_everything, timeout=15)
        for name, tail in tails.items():
            for line in tail.lines:
                # Publish to delivery: the sender's timestamp to the receiver's clock.
                latency_ms = line["received_at"] * 1000 - line["timestamp"]
                assert latency_ms < 2000, (name, line)
            for sender, texts in sent.items():
                got = [t for t in tail.texts() if t.startswith(sender + "-")]
                assert got == texts, f"{name} got {sender}'s messages out of order: {got}"
            senders = {line["sender"] for line in tail.lines}
            assert senders == {"alice", "bob", "carol"}
    finally:
        for tail in tails.values():
            tail.close()


def test_a_non_member_process_cannot_join_the_mesh(community: Community, tmp_path: Path) -> None:
    server = community.server
    assert server is not None
    # A node that copies a member's config but has its own, unregistered key.
    directory = tmp_path / "mallory"
    assert united("init", "--role", "client", "--dir", str(directory)).returncode == 0
    config = directory / "united.toml"
    url = server.ctl("invite")["url"]
    add_to_table(config, "discovery", f'server_url = "{url}"\n')
    mallory = NodeProcess("mallory", config)
    mallory.start()
    try:
        server_addr = server.ctl("status")["listen_addrs"][0]
        result = united("ctl", "-c", str(config), "connect", server_addr)
        assert result.returncode == 1
        mallory_id = mallory.ctl("status")["peer_id"]
        assert mallory_id not in {p["peer_id"] for p in server.ctl("peers")}
        member_addr = community.members[0].ctl("status")["listen_addrs"][0]
        assert united("ctl", "-c", str(config), "connect", member_addr).returncode == 1
        assert "NOT_A_MEMBER" in (directory / "node.log").read_text()
    finally:
        mallory.stop()


def test_a_bad_signature_is_dropped_everywhere_and_costs_the_sender(community: Community) -> None:
    join_all(community, ["general"])
    alice, bob, carol = community.members
    server = community.server
    assert server is not None
    alice_id = alice.ctl("status")["peer_id"]
    receivers = [server, bob, carol]
    tails = {n.name: Tail(n, "general") for n in receivers}
    time.sleep(1.0)
    try:
        before = {n.name: n.ctl("scores").get(alice_id, 0.0) for n in receivers}
        for _ in range(3):
            alice.ctl("send-invalid", "general")
        alice.ctl("send", "general", "a valid one after")
        poll(lambda: all("a valid one after" in t.texts() for t in tails.values()), timeout=15)
        for name, tail in tails.items():
            assert "tampered" not in tail.texts(), name
        after = {n.name: n.ctl("scores").get(alice_id, 0.0) for n in receivers}
        lowered = [n for n in before if after[n] < before[n]]
        # Every receiver that got the invalid envelopes straight from alice scored her down.
        assert lowered, (before, after)
        for name in lowered:
            assert after[name] < 0, (name, after[name])
    finally:
        for tail in tails.values():
            tail.close()


def test_two_channels_are_received_without_switching(community: Community) -> None:
    join_all(community, ["general", "random"])
    alice, bob, carol = community.members
    tail = Tail(carol)  # no channel: everything carol takes part in
    time.sleep(1.0)
    try:
        alice.ctl("send", "general", "hello general")
        bob.ctl("send", "random", "hello random")
        poll(lambda: {"hello general", "hello random"} <= set(tail.texts()), timeout=15)
        channels = {line["text"]: line["channel"] for line in tail.lines}
        assert channels["hello general"] == "general" and channels["hello random"] == "random"
    finally:
        tail.close()
