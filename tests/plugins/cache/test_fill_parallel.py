"""Gap-fill with the signatures checked on every CPU: a real server, a real session."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import types
from pathlib import Path

from conftest import running_node
from support import registered, server_config
from united_cache.config import Config
from united_cache.service import CacheService

from united_core import envelope
from united_core.wire import envelope_pb2


def verifying_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("united-cache-verify")]


def test_gap_fill_refuses_a_forged_history_message_alone_and_stores_the_rest(
    tmp_path: Path,
) -> None:
    """The server's history holds one forged envelope among 1,200 (pages of 100, so
    several pages are fetched ahead while others are checked and stored): it is
    dropped and its number recorded as a hole; every other message is stored with
    its number, in order; the cache's verifying threads end when it stops."""

    async def scenario() -> None:
        config = server_config(tmp_path, plugins=("archive",))
        async with running_node(config) as server:
            directory, archive = server.service("directory"), server.service("archive")
            url = f"ws://127.0.0.1:{directory.port}/ws"
            channel = await directory.create_channel("general")
            client, alice, _, _ = await registered(url, directory, "alice")
            messages = [
                envelope.seal(alice, topic=channel.topic, payload=f"m{i}".encode(), sequence_hint=i)
                for i in range(1200)
            ]
            env = envelope_pb2.Envelope.FromString(messages[550].wire)
            env.payload = b"forged"
            # Planted behind the archive's back (its write path stores what it is given).
            messages[550] = dataclasses.replace(messages[550], wire=env.SerializeToString())
            await archive.write(messages)
            discovery = types.SimpleNamespace(
                request=client.request,
                cache=types.SimpleNamespace(joined=[channel], members=[]),
                add_login_listener=lambda listener: None,
                connected=asyncio.Event(),
            )
            cache = CacheService(Config(page_size=100), server, tmp_path, discovery)
            await cache.start()
            try:
                assert cache.judges.running
                assert await cache.fill_gaps() == 1199
                assert verifying_threads()  # started on first use
                assert cache.store is not None
                assert await cache.store.seqs(channel.topic) == set(range(1, 1201))
                rows = await cache.store.history(channel.topic, 1, 2000)
                assert [r.seq for r in rows] == [s for s in range(1, 1201) if s != 551]
                assert [r.id for r in rows] == [m.id for i, m in enumerate(messages) if i != 550]
                assert all(r.confirmed for r in rows)
                # Nothing left to fill: one request, nothing added.
                assert await cache.fill_gaps() == 0
            finally:
                await cache.stop()
                await client.close()
            assert not cache.judges.running
            assert not verifying_threads()

    asyncio.run(scenario())
