"""History survives crashes: SIGKILL the server or a client in a running community."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from united_core.testing import Community, NodeProcess, poll

pytestmark = pytest.mark.slow


@pytest.fixture
def community(tmp_path: Path) -> Iterator[Community]:
    c = Community(tmp_path, member_settings={"cache": "sync_interval = 0.5\n"})
    try:
        c.start_server()
        c.create_channel("general")
        for name in ("alice", "bob", "carol"):
            c.add_member(name)
        for member in c.members:
            member.ctl("join", "general")
        poll(
            lambda: all(len(m.ctl("topics")["general"]["mesh_peers"]) >= 2 for m in c.members),
            timeout=30,
        )
        yield c
    finally:
        c.stop()


def history(node: NodeProcess) -> list[dict[str, Any]]:
    return node.ctl("history", "general", "--limit", "1000")  # type: ignore[no-any-return]


def settled(members: list[NodeProcess], count: int) -> list[tuple[int, str]] | None:
    """The common, fully confirmed history of all members, once they agree."""
    views = []
    for member in members:
        rows = history(member)
        if len(rows) != count or not all(r["confirmed"] for r in rows):
            return None
        views.append([(r["seq"], r["text"]) for r in rows])
    return views[0] if all(v == views[0] for v in views) else None


def test_server_killed_mid_stream_loses_nothing_acknowledged(community: Community) -> None:
    server = community.server
    assert server is not None
    members = community.members
    for i in range(12):
        members[i % 3].ctl("send", "general", f"before-{i}")
    acknowledged = poll(lambda: settled(members, 12), timeout=30)
    assert [s for s, _ in acknowledged] == list(range(1, 13))

    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    for i in range(9):  # the mesh still carries messages while the server is down
        members[i % 3].ctl("send", "general", f"during-{i}")
    poll(lambda: all(len(history(m)) == 21 for m in members), timeout=30)
    assert all(not r["confirmed"] for r in history(members[0]) if r["text"].startswith("during-"))

    server.start()
    final = poll(lambda: settled(members, 21), timeout=60)
    assert [s for s, _ in final] == list(range(1, 22))
    assert final[:12] == acknowledged  # numbers given before the crash are kept
    assert [t for _, t in final[12:]] == [f"during-{i}" for i in range(9)]  # Lamport order


def test_client_killed_catches_up_on_restart(community: Community) -> None:
    alice, bob, carol = community.members
    alice.ctl("send", "general", "before")
    poll(lambda: settled([alice, bob, carol], 1), timeout=30)
    assert bob.stop(signal.SIGKILL) == -signal.SIGKILL
    for i in range(10):
        (alice, carol)[i % 2].ctl("send", "general", f"missed-{i}")
    poll(lambda: settled([alice, carol], 11), timeout=30)
    bob.start()
    final = poll(lambda: settled([alice, bob, carol], 11), timeout=60)
    assert [t for _, t in final] == ["before", *[f"missed-{i}" for i in range(10)]]
