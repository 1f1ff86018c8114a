"""The member-only mesh with real libp2p hosts: server and clients on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import make_node_dir, running_node
from support import community, peer_ids, server_config
from united_directory.model import Member, MemberSet

from united_core import envelope
from united_core.acceptance import Origin, Reason, Verdict
from united_core.node import Node
from united_core.testing import join, until


def test_members_connect_and_a_non_member_is_refused_in_the_handshake(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with community(tmp_path) as (server, clients, _):
            # Each client dialed the server after logging in.
            expected = {c.identity.peer_id for c in clients}
            await until(lambda: _contains(server, expected))
            # A node whose key is not registered cannot connect at all.
            outsider_config = make_node_dir(tmp_path, "outsider", plugins=[])
            async with running_node(outsider_config) as outsider:
                with pytest.raises(Exception) as info:
                    await outsider.p2p.connect(server.p2p.listen_addrs[0])
                assert "connect" in str(info.value).lower()
                assert outsider.identity.peer_id not in await peer_ids(server)
                assert server.service("membership", "state").refused_peers >= 1

    asyncio.run(scenario())


async def _contains(node: Node, expected: set[str]) -> bool:
    return expected <= await peer_ids(node)


def test_a_removed_member_is_disconnected(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with community(tmp_path) as (server, clients, _):
            gone, stays = clients
            await until(lambda: _contains(server, {gone.identity.peer_id, stays.identity.peer_id}))
            # The members also connect to each other.
            await stays.p2p.connect(gone.p2p.listen_addrs[0])
            await server.service("directory").remove_member(gone.identity.peer_id)

            async def cut_off() -> bool:
                return gone.identity.peer_id not in await peer_ids(server) and (
                    gone.identity.peer_id not in await peer_ids(stays)
                )

            # The server closes its connection; the other member, told by the pushed
            # member list, closes its own.
            await until(cut_off, what="removed member disconnected everywhere")
            assert stays.identity.peer_id in await peer_ids(server)
            with pytest.raises(Exception, match=r"(?i)connect"):
                await gone.p2p.connect(server.p2p.listen_addrs[0])

    asyncio.run(scenario())


def test_clients_accept_each_other_from_cached_lists_while_the_server_is_down(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_node(server_config(tmp_path)) as server:
            service = server.service("directory")
            url = f"ws://127.0.0.1:{service.port}/ws"
            configs = [await join(url, service, tmp_path / f"m{i}", f"m{i}") for i in range(2)]
            # Both know each other: the second joined after the first, so start
            # them once while the server runs to refresh the first one's cache.
            async with running_node(configs[0]) as a, running_node(configs[1]) as b:
                for node in (a, b):
                    await asyncio.wait_for(node.service("discovery").connected.wait(), 10)
        # The server is gone. The clients restart from their caches alone.
        async with running_node(configs[0]) as a, running_node(configs[1]) as b:
            assert not a.service("discovery").connected.is_set()
            assert await b.p2p.connect(a.p2p.listen_addrs[0]) == a.identity.peer_id

            async def a_sees_b() -> bool:  # the inbound side registers it a moment later
                return b.identity.peer_id in await peer_ids(a)

            await until(a_sees_b, timeout=5, what="a's side of the connection")
            outsider_config = make_node_dir(tmp_path, "outsider", plugins=[])
            async with running_node(outsider_config) as outsider:
                with pytest.raises(Exception, match=r"(?i)connect"):
                    await outsider.p2p.connect(a.p2p.listen_addrs[0])

    asyncio.run(scenario())


def test_messages_from_non_members_are_rejected(tmp_path: Path) -> None:
    """The membership policy rejects an envelope signed by a key that is not a member."""
    from united_membership import MembershipHooks
    from united_membership.state import MembershipState

    from united_core.identity import Identity

    member, outsider = Identity.generate(), Identity.generate()
    state = MembershipState()
    hooks = MembershipHooks(state)
    topic = "united/s/c"
    ok = envelope.seal(member, topic=topic, payload=b"hi", sequence_hint=1)
    bad = envelope.seal(outsider, topic=topic, payload=b"hi", sequence_hint=1)
    # No list known yet: fail closed.
    refusal = hooks.united_validate_message(ok, Origin.GOSSIP)
    assert refusal is not None and refusal.verdict is Verdict.REJECT
    state.replace(MemberSet.of([Member("m", "member", member.public_key, member.peer_id)]))
    for origin in (Origin.GOSSIP, Origin.SUBMISSION, Origin.PUBLISH):
        assert hooks.united_validate_message(ok, origin) is None
        refusal = hooks.united_validate_message(bad, origin)
        assert refusal is not None and refusal.code is Reason.NOT_A_MEMBER
    # History is the server's record: a removed member's old messages stay readable.
    assert hooks.united_validate_message(bad, Origin.HISTORY) is None
    assert state.rejected_messages == 4
    # A member who rotated keys: messages signed before may still be uploaded
    # (reconciliation), never gossiped anew under the old key.
    rotated = Identity.generate()
    state.replace(
        MemberSet.of(
            [Member("m", "member", rotated.public_key, rotated.peer_id)],
            former=[member.public_key],
        )
    )
    assert hooks.united_validate_message(ok, Origin.SUBMISSION) is None
    refusal = hooks.united_validate_message(ok, Origin.GOSSIP)
    assert refusal is not None and refusal.code is Reason.NOT_A_MEMBER


def test_hook_united_presence_changed(tmp_path: Path) -> None:
    """Discovery reports who is online in a channel; the mesh dials them."""

    async def scenario() -> None:
        async with community(tmp_path) as (server, clients, _):
            await server.service("directory").create_channel("general")
            seen: list[tuple[str, int]] = []
            for client in clients:
                mesh = client.service("mesh")
                original = mesh.dial_online

                async def spy(
                    channel: Any, online: Any, _orig: Any = original, _c: Any = client
                ) -> None:
                    seen.append((channel.name, len(online)))
                    await _orig(channel, online)

                mesh.dial_online = spy
            for client in clients:
                await client.service("discovery").join("general")
            a, b = clients
            await until(
                lambda: _contains(a, {b.identity.peer_id}), what="members dialed each other"
            )
            assert ("general", 2) in seen

    asyncio.run(scenario())
