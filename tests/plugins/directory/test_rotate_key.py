"""`united rotate-key`: a member replaces its key while two peers are connected; the
node restarts under its new PeerId, the mesh continues, history stays intact."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import pytest

from united_core.api import NodeState
from united_core.control import ControlClientError
from united_core.identity import Identity, load_key_file, write_key_file
from united_core.node import Node
from united_core.testing import call, running_community, running_node, until


async def texts(node: Node) -> list[str]:
    rows = await node.service("cache").history("general", 1, 1000)
    return [r["text"] for r in rows]


async def bob_rows(node: Node) -> list[dict[str, object]]:
    return await node.service("cache").history("general", 1, 1000)  # type: ignore[no-any-return]


def test_rotate_key_moves_the_member_to_a_new_peer_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_community(tmp_path, ("alice", "bob")) as c:
            alice, bob = c.node("alice"), c.node("bob")
            old_peer = alice.identity.peer_id
            await alice.service("mesh").send("general", "before rotation")
            await until(lambda: _has(bob, "before rotation"), what="bob gets the first message")
            started = time.monotonic()
            result = await call(alice, "rotate-key")
            assert result["old_peer_id"] == old_peer != result["new_peer_id"]
            # The old node's addresses are its old key's: not announced under the new id.
            directory = c.server.service("directory")
            general = directory.online(c.channels["general"]["channel_id"])
            assert [(p.peer_id, list(p.addrs)) for p in general if p.peer_id == old_peer] == []
            assert [list(p.addrs) for p in general if p.peer_id == result["new_peer_id"]] in (
                [],
                [[]],
            )
            key_path = c.configs["alice"].parent / "identity.key"
            backup = Path(result["old_key_file"])
            _check_key_files(key_path, backup, result["new_peer_id"], old_peer)
            # The node stops to come back under the new PeerId (a service manager's job).
            await until(lambda: not alice.running, what="alice to stop")
            assert alice.restart_requested  # `united run` exits 75: a service manager restarts
            async with running_node(c.configs["alice"]) as alice2:
                assert alice2.identity.peer_id == result["new_peer_id"]
                await until(
                    lambda: alice2.service("discovery").connected.is_set(), what="alice logs in"
                )
                # Bob maps the new PeerId to the same member.
                members = {m["member_id"]: m["peer_id"] for m in await call(bob, "members")}
                assert members[result["member_id"]] == result["new_peer_id"]
                new_peer = result["new_peer_id"]
                await until(
                    lambda: _connected(bob, new_peer),
                    timeout=15,
                    what="bob connected to the new id",
                )
                assert not await _connected(bob, old_peer)
                await alice2.service("mesh").send("general", "after rotation")
                await until(
                    lambda: _has(bob, "after rotation"), timeout=15, what="the mesh continues"
                )
                took = time.monotonic() - started
                print(f"rotation to delivery under the new peer id: {took:.2f} s")
                # Old-key messages stay valid in every history (alice's refilled too).
                await until(lambda: _has(alice2, "before rotation"), what="alice's history")
                assert "before rotation" in await texts(bob)
                # ...and stay hers: bob learnt her previous key with the member list.
                senders = {r["text"]: r["sender"] for r in await bob_rows(bob)}
                assert senders["before rotation"] == senders["after rotation"] == "alice"
                store = c.server.service("archive").store

                async def both_archived() -> bool:  # the archive may hold late ones briefly
                    page = await store.page(c.topic("general"), 1, 10)
                    return len(page.messages) == 2

                await until(both_archived, timeout=15, what="both messages archived")

    asyncio.run(scenario())


async def _has(node: Node, text: str) -> bool:
    return text in await texts(node)


async def _connected(node: Node, peer_id: str) -> bool:
    return peer_id in {p["peer_id"] for p in await node.p2p.peers()}


def _check_key_files(key_path: Path, backup: Path, new_peer: str, old_peer: str) -> None:
    assert load_key_file(key_path).peer_id == new_peer
    assert load_key_file(backup).peer_id == old_peer
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert not key_path.with_name("identity.key.new").exists()


def test_a_rotation_interrupted_after_the_server_moved_the_member_completes_at_login(
    tmp_path: Path,
) -> None:
    """The node died between the server's "ok" and the key-file swap: at its next
    start the server refuses the old key, the pending one is welcomed, the files
    are swapped and the node stops to come back under the new PeerId. A pending
    key whose rotation never reached the server is deleted instead."""

    async def scenario() -> None:
        async with running_community(tmp_path, ("alice",)) as c:
            alice = c.node("alice")
            key_path = c.configs["alice"].parent / "identity.key"
            pending = key_path.with_name("identity.key.new")
            old_peer = alice.identity.peer_id
            # Steps 1 and 2 of a rotation, then the "crash" (the node stops).
            new = Identity.generate()
            write_key_file(pending, new)
            discovery = alice.service("discovery")
            await discovery.client.rotate_key(alice.identity, new, discovery.cache.you)
            alice.request_stop()
            await until(lambda: alice.state is NodeState.STOPPED, what="alice to stop")
            async with running_node(c.configs["alice"]) as restarted:
                assert restarted.identity.peer_id == old_peer
                await until(
                    lambda: restarted.state is NodeState.STOPPED, what="it stops after the swap"
                )
            assert load_key_file(key_path).peer_id == new.peer_id
            assert not pending.exists()
            backups = list(key_path.parent.glob("identity.key.old-*"))
            assert [load_key_file(b).peer_id for b in backups] == [old_peer]
            async with running_node(c.configs["alice"]) as moved:
                assert moved.identity.peer_id == new.peer_id
                await until(
                    lambda: moved.service("discovery").connected.is_set(), what="login, new key"
                )
                # A stale pending key (its rotation never reached the server) goes away.
                write_key_file(pending, Identity.generate())
                await moved.service("discovery").client.close()  # the next login sees it
                await until(lambda: not pending.exists(), timeout=15, what="stale key removed")
                assert moved.running

    asyncio.run(scenario())


def test_rotate_key_without_the_server_changes_nothing(tmp_path: Path) -> None:
    """The rotation needs the server: unreachable, the command is refused with a
    clear reason and the key files are left exactly as they were."""

    async def scenario() -> None:
        async with running_community(tmp_path, ("alice",)) as c:
            alice = c.node("alice")
            key_path = c.configs["alice"].parent / "identity.key"
            before = key_path.read_bytes()
            c.server.request_stop()
            discovery = alice.service("discovery")
            await until(lambda: not discovery.connected.is_set(), what="alice to lose it")
            with pytest.raises(ControlClientError) as info:
                await call(alice, "rotate-key")
            assert "not connected to the server" in str(info.value)
            assert key_path.read_bytes() == before
            assert sorted(p.name for p in key_path.parent.glob("identity.key*")) == ["identity.key"]
            assert alice.running and alice.identity.public_key == load_key_file(key_path).public_key

    asyncio.run(scenario())
