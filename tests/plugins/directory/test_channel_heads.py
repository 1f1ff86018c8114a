"""Channel heads: the archive's ``united_history_advanced`` becomes coalesced
``ChannelHead`` pushes, to the channel's members only."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support import registered, server
from united_directory import protocol

from united_core.api import call_async
from united_core.wire import frames_pb2 as pb


def test_hook_united_history_advanced(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path) as (node, service, url):
            channel = await service.create_channel("general")
            member, _, _, pushes = await registered(url, service, "member")
            outsider, _, _, other_pushes = await registered(url, service, "outsider")
            await member.request(pb.ClientFrame(join=pb.JoinChannel(channel="general")))
            topic = protocol.topic_for(service.server_id, channel.channel_id)

            async def advance(seq: int) -> None:
                await call_async(
                    node.hook.united_history_advanced(node=node, topic=topic, last_seq=seq)
                )

            def head(n: int):  # type: ignore[no-untyped-def]
                return lambda f: (
                    f.WhichOneof("body") == "channel_head" and (f.channel_head.last_seq == n)
                )

            await advance(1)  # the first head goes out at once
            first = await pushes.wait_for(head(1), timeout=2)
            assert first.channel_head.channel_id == channel.channel_id
            started = time.monotonic()
            for seq in range(2, 6):  # a burst within the interval: only the latest follows
                await advance(seq)
            await pushes.wait_for(head(5))
            assert time.monotonic() - started >= service.head_push_interval * 0.5
            await asyncio.sleep(service.head_push_interval * 2)
            heads = [f.channel_head.last_seq for f in pushes.pushes if f.HasField("channel_head")]
            assert heads == [1, 5]  # coalesced: the latest head, at most one per interval
            # An older head or an unknown topic is not pushed; non-members hear nothing.
            await call_async(node.hook.united_history_advanced(node=node, topic=topic, last_seq=3))
            await call_async(
                node.hook.united_history_advanced(node=node, topic="united/x/y", last_seq=9)
            )
            await asyncio.sleep(service.head_push_interval * 2)
            assert len([f for f in pushes.pushes if f.HasField("channel_head")]) == 2
            assert not any(f.HasField("channel_head") for f in other_pushes.pushes)
            for client in (member, outsider):
                await client.close()

    asyncio.run(scenario())
