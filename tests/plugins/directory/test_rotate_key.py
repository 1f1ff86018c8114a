"""`united rotate-key`: a member replaces its key while two peers are connected; the
node restarts under its new PeerId, the mesh continues, history stays intact."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

from united_core.identity import load_key_file
from united_core.node import Node
from united_core.testing import call, running_community, running_node, until


async def texts(node: Node) -> list[str]:
    rows = await node.service("cache").history("general", 1, 1000)
    return [r["text"] for r in rows]


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
            key_path = c.configs["alice"].parent / "identity.key"
            backup = Path(result["old_key_file"])
            _check_key_files(key_path, backup, result["new_peer_id"], old_peer)
            # The node stops to come back under the new PeerId (a service manager's job).
            await until(lambda: not alice.running, what="alice to stop")
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
