"""The client half (`discovery`): its directory cache on disk, and its control commands
against a real server (in-process nodes, a real WebSocket session)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from support import community
from united_directory.client.service import DirectoryCache, DiscoveryService
from united_directory.model import Channel, Member

from united_core.api import CommandError
from united_core.control import ControlClient, ControlClientError
from united_core.identity import Identity
from united_core.testing import until


def test_the_cache_survives_a_round_trip_owner_only_and_ignores_garbage(tmp_path: Path) -> None:
    alice = Identity.generate()
    path = tmp_path / "data" / "directory-cache.json"
    cache = DirectoryCache(path)
    cache.server_id, cache.server_peer_id = "s1", "12D3KooWserver"
    cache.server_addrs = ["/ip4/192.0.2.1/tcp/7420/p2p/12D3KooWserver"]
    cache.members = [Member("m1", "alice", alice.public_key, alice.peer_id)]
    cache.joined = [Channel("c1", "general", "united/s1/c1")]
    cache.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not path.with_suffix(".tmp").exists()  # written aside, then renamed
    loaded = DirectoryCache(path)
    assert loaded.load()
    assert loaded.members == cache.members and loaded.joined == cache.joined
    assert loaded.member_set().allows_key(alice.public_key)
    assert loaded.member_set().allows_peer("12D3KooWserver")  # the server is trusted
    path.write_text("{not json")
    assert not DirectoryCache(path).load()  # a broken cache is ignored, never a crash
    assert not DirectoryCache(tmp_path / "missing.json").load()


def test_join_leave_channels_members_and_who_on_the_control_api(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with community(tmp_path) as (server, clients, _):
            await server.service("directory").create_channel("general")
            alice, bob = clients
            client = await ControlClient.connect(alice.settings.resolve("united.sock"))
            try:
                joined = await client.call("join", ["general"])
                assert joined == ["general"]
                assert [c["name"] for c in await client.call("channels")] == ["general"]
                names = {m["name"] for m in await client.call("members")}
                assert names >= {"member0", "member1"}
                await bob.require(DiscoveryService).join("general")

                async def both_online() -> bool:
                    online = await client.call("who", ["general"])
                    return {p["peer_id"] for p in online} == {
                        alice.identity.peer_id,
                        bob.identity.peer_id,
                    }

                await until(both_online, timeout=10, what="both online in general")
                assert await client.call("leave", ["general"]) == []
                try:
                    await client.call("join", ["no-such-channel"])
                    raise AssertionError("joined a channel that does not exist")
                except ControlClientError as exc:
                    assert "no-such-channel" in str(exc) or "UNKNOWN" in str(exc)
                for bad in (["join"], ["who"]):
                    try:
                        await client.call(*bad[:1], bad[1:])
                        raise AssertionError(f"{bad} was accepted")
                    except ControlClientError as exc:
                        assert "usage" in str(exc)
            finally:
                await client.close()
            assert CommandError.code == "bad_request"

    asyncio.run(scenario())
