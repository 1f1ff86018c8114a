"""History heals while connected: a member that missed gossip (its mesh was cut)
gets the messages from the archive within 5 s of the channel's head moving,
without logging in again (issue 11, deliverable 4). Nodes in process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from united_core.node import Node
from united_core.testing import running_community, until
from united_core.wire import frames_pb2 as pb


async def texts(node: Node) -> list[str]:
    rows = await node.service("cache").history("general", 1, 1000)
    return [r["text"] for r in rows if r["confirmed"]]


def test_a_member_that_missed_messages_while_connected_catches_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_community(tmp_path, ("alice", "bob", "carol")) as c:
            alice, carol = c.node("alice"), c.node("carol")
            discovery = carol.service("discovery")
            sessions = discovery.sessions
            # Her login's own sync (with its gap-fill) is over: only the head can help now.
            await until(lambda: carol.service("cache").stats()["syncs"] >= 1, what="first sync")
            # Carol's mesh is cut: she leaves the topic's gossip but keeps her session.
            await carol.p2p.unsubscribe(c.topic("general"))
            await until(  # the others have heard: nothing in flight reaches her
                lambda: _out_of_meshes(carol, [alice, c.server], c.topic("general")),
                what="carol out of the others' meshes",
            )
            sent = [f"missed-{i}" for i in range(5)]
            for text in sent:
                await alice.service("mesh").send("general", text)
            await until(
                lambda: c.server.service("archive").snapshot()["stored"] >= len(sent),
                what="archived",
            )
            archived_at = time.monotonic()
            await until(
                lambda: _has(carol, sent), timeout=5, what="carol to catch up from the head"
            )
            took = time.monotonic() - archived_at
            print(f"caught up {took:.2f} s after the head moved")
            assert discovery.sessions == sessions and discovery.connected.is_set()  # no login
            stats = carol.service("cache").stats()
            assert stats["head_fills"] >= 1 and stats["filled"] >= len(sent)
            assert c.server.service("directory").stats()["heads_pushed"] >= 1

    asyncio.run(scenario())


async def _out_of_meshes(node: Node, others: list[Node], topic: str) -> bool:
    """No other node counts ``node`` as subscribed to ``topic`` any more: neither in
    its mesh nor among the topic's peers (flood publishing sends to those too)."""
    for other in others:

        async def subscribers(o: Node = other) -> set[str]:
            ctx = o.p2p.host_context
            peers = set(ctx.pubsub.peer_topics.get(topic, set()))
            peers |= set(ctx.gossipsub.mesh.get(topic, set()))
            return {p.to_base58() for p in peers}

        if node.identity.peer_id in await other.p2p.call(subscribers):
            return False
    return True


async def _has(node: Node, wanted: list[str]) -> bool:
    return set(wanted) <= set(await texts(node))


def test_odd_channel_heads_do_not_stop_catching_up(tmp_path: Path) -> None:
    """Heads for unknown channels, zero, and one far beyond the server's history are
    harmless: nothing crashes, no hole is invented, and the next real head still
    brings the missed messages."""

    async def scenario() -> None:
        async with running_community(tmp_path, ("alice", "carol")) as c:
            alice, carol = c.node("alice"), c.node("carol")
            discovery, cache = carol.service("discovery"), carol.service("cache")
            general = discovery.resolve("general")
            await alice.service("mesh").send("general", "first")
            await until(lambda: _has(carol, ["first"]), what="the first message")
            for channel_id, last_seq in [
                ("nope", 5),
                ("", 0),
                ("x" * 10_000, 2**64 - 1),
                (general, 0),
                (general, 2**64 - 1),  # more than the server holds
            ]:
                discovery._on_push(
                    pb.ServerFrame(
                        channel_head=pb.ChannelHead(channel_id=channel_id, last_seq=last_seq)
                    )
                )
            await until(lambda: not cache._head_tasks, what="the catch-ups to end")
            assert await cache.store.numbered(c.topic("general")) == 1  # no invented holes
            await carol.p2p.unsubscribe(c.topic("general"))  # she misses the next one
            await alice.service("mesh").send("general", "second")
            await until(lambda: _has(carol, ["first", "second"]), timeout=5, what="caught up")
            assert carol.running

    asyncio.run(scenario())
