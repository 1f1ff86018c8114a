"""History heals while connected: a member that missed gossip (its mesh was cut)
gets the messages from the archive within 5 s of the channel's head moving,
without logging in again (issue 11, deliverable 4). Nodes in process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from united_core.node import Node
from united_core.testing import running_community, until


async def texts(node: Node) -> list[str]:
    rows = await node.service("cache").history("general", 1, 1000)
    return [r["text"] for r in rows if r["confirmed"]]


def test_a_member_that_missed_messages_while_connected_catches_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_community(tmp_path, ("alice", "bob", "carol")) as c:
            alice, carol = c.node("alice"), c.node("carol")
            discovery = carol.service("discovery")
            sessions = discovery.sessions
            # Carol's mesh is cut: she leaves the topic's gossip but keeps her session.
            await carol.p2p.unsubscribe(c.topic("general"))
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


async def _has(node: Node, wanted: list[str]) -> bool:
    return set(wanted) <= set(await texts(node))
