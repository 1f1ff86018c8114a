"""History survives crashes: SIGKILL the server or a client in a running community."""

from __future__ import annotations

import signal
import threading
import time
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


def describe(members: list[NodeProcess]) -> dict[str, Any]:
    """Per member: how many rows, which are unconfirmed, which texts are missing."""
    texts = {f"before-{i}" for i in range(6)} | {f"{m.name}-{i}" for m in members for i in range(8)}
    out: dict[str, Any] = {}
    for member in members:
        rows = history(member)
        out[member.name] = {
            "rows": len(rows),
            "unconfirmed": [r["text"] for r in rows if not r["confirmed"]],
            "missing": sorted(texts - {r["text"] for r in rows}),
            "seqs": [r["seq"] for r in rows if r["confirmed"]][-5:],
        }
    return out


def test_server_killed_mid_stream_loses_nothing_acknowledged(community: Community) -> None:
    server = community.server
    assert server is not None
    members = community.members
    for i in range(6):
        members[i % 3].ctl("send", "general", f"before-{i}")
    acknowledged = poll(lambda: settled(members, 6), timeout=30)

    # Three members keep sending while the server is SIGKILLed and restarted.
    def stream(member: NodeProcess) -> None:
        for i in range(8):
            member.ctl("send", "general", f"{member.name}-{i}")
            time.sleep(0.25)

    senders = [threading.Thread(target=stream, args=(m,)) for m in members]
    for thread in senders:
        thread.start()
    time.sleep(0.6)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(2.0)
    server.start()
    for thread in senders:
        thread.join(timeout=60)

    try:
        final = poll(lambda: settled(members, 6 + 24), timeout=60)
    except TimeoutError:  # say how the members disagree
        raise AssertionError(f"no settled history within 60 s: {describe(members)}") from None
    assert [s for s, _ in final] == list(range(1, 31))  # every message has a number
    assert final[:6] == acknowledged  # numbers given before the crash are kept
    for member in members:  # each sender's messages in its send order
        mine = [t for _, t in final if t.startswith(member.name + "-")]
        assert mine == [f"{member.name}-{i}" for i in range(8)]


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
