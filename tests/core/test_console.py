"""The developer console and the stats stream, against real running nodes."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import make_node_dir, running_node
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from support import community

from united_core.console import CORE_SECTIONS, Console, panel_sections, render_panel
from united_core.containers import collect_commands
from united_core.control import ControlClient
from united_core.node import Node
from united_core.testing import until

F2 = "\x1bOQ"


async def meshed(a: Node, b: Node) -> bool:
    snapshot = await a.p2p.snapshot()
    return any(b.identity.peer_id in peers for peers in snapshot["mesh"].values())


def test_console_lists_peers_sends_pings_reconnects_and_shows_the_panel(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with community(tmp_path) as (server, clients, _):
            await server.service("directory").create_channel("general")
            alice, bob = clients
            for client in clients:
                await client.service("discovery").join("general")
            await until(lambda: meshed(alice, bob), what="mesh")
            lines: list[str] = []
            with create_pipe_input() as pipe:
                console = Console(
                    alice.settings.resolve("united.sock"),
                    collect_commands(alice.pm),
                    input=pipe,
                    output=DummyOutput(),
                    write=lines.append,
                    sections=panel_sections(alice.pm),
                )
                task = asyncio.create_task(console.run())

                async def typed(text: str, expect: str, timeout: float = 10) -> str:
                    before = len(lines)
                    pipe.send_text(text)
                    async with asyncio.timeout(timeout):
                        while not any(expect in line for line in lines[before:]):
                            await asyncio.sleep(0.05)
                    return "\n".join(lines[before:])

                await until(lambda: _started(lines), what="console up")
                listed = await typed("peers\n", bob.identity.peer_id)
                assert server.identity.peer_id in listed
                received_before = bob.service("mesh").topic_stats
                count = sum(s.messages for s in received_before.values())
                await typed("send-test general\n", "test message from")
                await until(lambda: _received(bob, count + 1), what="bob received the test message")
                pinged = await typed(f"ping {bob.identity.peer_id} 3\n", "median RTT")
                assert "ms" in pinged
                await typed("reconnect\n", "redialed")
                await until(lambda: meshed(alice, bob), timeout=20, what="mesh re-formed")
                # The live panel, toggled with F2 and closed with q. (A key typed while
                # the console is between two prompts may be dropped: press again.)
                deadline = asyncio.get_running_loop().time() + 20
                while "Gossipsub" not in console.last_panel:
                    if alice.stats.subscribers == 0:
                        pipe.send_text(F2)
                    await asyncio.sleep(1.0)
                    assert "failed" not in console.last_panel, console.last_panel
                    stats = alice.stats
                    assert asyncio.get_running_loop().time() < deadline, (
                        f"no panel: subscribers={stats.subscribers} ticks={stats.ticks} "
                        f"task_done={task.done()} lines={lines[-3:]}"
                    )
                assert "Peers\n" in console.last_panel and "general" in console.last_panel
                pipe.send_text("q")
                await typed("help\n", "send-test")
                pipe.send_text("quit\n")
                await asyncio.wait_for(task, 10)
            assert alice.stats.subscribers == 0  # the panel's subscription ended with it

    asyncio.run(scenario())


async def _started(lines: list[str]) -> bool:
    return any("connected to" in line for line in lines)


async def _received(node: Node, count: int) -> bool:
    return sum(s.messages for s in node.service("mesh").topic_stats.values()) >= count


def test_no_stats_work_when_unwatched_and_pushes_every_second_when_watched(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_node(make_node_dir(tmp_path)) as node:
            await asyncio.sleep(2.5)
            assert (node.stats.snapshots_built, node.stats.ticks, node.stats.subscribers) == (
                0,
                0,
                0,
            )
            client = await ControlClient.connect(node.settings.resolve("united.sock"))
            arrivals: list[float] = []
            try:
                async with asyncio.timeout(10):
                    async for snapshot in client.stream("subscribe"):
                        arrivals.append(time.monotonic())
                        assert snapshot["peer_id"] == node.identity.peer_id
                        if len(arrivals) == 4:
                            break
            finally:
                await client.close()
            gaps = [b - a for a, b in itertools.pairwise(arrivals)]
            assert all(0.7 < gap < 1.6 for gap in gaps), gaps
            await asyncio.sleep(0.5)
            assert node.stats.subscribers == 0
            built = node.stats.snapshots_built
            await asyncio.sleep(2.0)
            assert node.stats.snapshots_built == built  # detached: nothing runs

    asyncio.run(scenario())


def test_panel_renders_a_snapshot() -> None:
    snapshot = {
        "time": 1_800_000_000.0,
        "peer_id": "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "peers": [{"peer_id": "12D3KooWBBBBBBBBBBBBBBBBB", "addrs": [], "direction": "outbound"}],
        "p2p": {
            "mesh": {"united/s/c": ["12D3KooWBBBBBBBBBBBBBBBBB"]},
            "counters": {"outbound_drops": 2},
        },
        "plugins": {
            "mesh": {
                "peer_names": {"12D3KooWBBBBBBBBBBBBBBBBB": "bob"},
                "topics": {
                    "general": {
                        "topic": "united/s/c",
                        "messages": 7,
                        "last_received": None,
                        "latency_p50_ms": 3.5,
                        "latency_p95_ms": 8.25,
                    }
                },
            },
            "ping": {"peer_rtt_ms": {"12D3KooWBBBBBBBBBBBBBBBBB": 0.42}},
        },
    }
    from united_mesh import united_register_panel_sections

    sections = [*CORE_SECTIONS, *united_register_panel_sections()]
    text = render_panel(snapshot, sections)
    assert "bob" in text and "0.420" in text and "general" in text and "publish drops: 2" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_another_local_user_cannot_reach_the_control_socket() -> None:
    base = Path(tempfile.mkdtemp(prefix="united-perm-"))
    try:
        base.chmod(0o755)  # the directory is reachable: only the socket's mode protects it
        config = make_node_dir(base, "node")
        (base / "node").chmod(0o755)

        async def scenario() -> None:
            async with running_node(config) as node:
                path = node.settings.resolve("united.sock")
                assert oct(path.stat().st_mode & 0o777) == "0o600"
                # A forked child drops to "nobody" and tries to connect.
                assert await asyncio.to_thread(_connect_as, path, 65534) == "refused"
                assert await asyncio.to_thread(_connect_as, path, None) == "connected"

        asyncio.run(scenario())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _connect_as(path: Path, uid: int | None) -> str:
    """Connect to ``path`` from a child process, as ``uid`` (None: as ourselves)."""
    import socket

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(path))
                    outcome = b"connected"
                except PermissionError:
                    outcome = b"refused"
            os.write(write_end, outcome)
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as handle:
        return handle.read().decode()


def test_hook_united_stats_refresh(tmp_path: Path) -> None:
    """RTTs are measured per live tick (ping plugin), and only while someone watches."""

    async def scenario() -> None:
        async with (
            running_node(make_node_dir(tmp_path, "a")) as a,
            running_node(make_node_dir(tmp_path, "b")) as b,
        ):
            await b.p2p.connect(a.p2p.listen_addrs[0])
            assert (await a.stats.snapshot())["plugins"].get("ping", {}).get("peer_rtt_ms") in (
                None,
                {},
            )
            client = await ControlClient.connect(a.settings.resolve("united.sock"))
            try:
                async with asyncio.timeout(10):
                    async for snapshot in client.stream("subscribe"):
                        rtts = snapshot["plugins"]["ping"]["peer_rtt_ms"]
                        if b.identity.peer_id in rtts:
                            assert 0 < rtts[b.identity.peer_id] < 1000
                            break
            finally:
                await client.close()
            assert a.stats.ticks >= 1

    asyncio.run(scenario())


def test_plugin_commands_refuse_garbage_and_the_node_keeps_serving(tmp_path: Path) -> None:
    from united_core.control import ControlClientError

    async def scenario() -> None:
        async with community(tmp_path) as (server, clients, _):
            await server.service("directory").create_channel("general")
            alice = clients[0]
            await alice.service("discovery").join("general")
            client = await ControlClient.connect(alice.settings.resolve("united.sock"))
            try:
                for words in (
                    ["history"],
                    ["history", "general", "--limit", "x"],
                    ["history", "general", "--limit", "0"],
                    ["history", "general", "--bogus", "1"],
                    ["history", "nope"],
                    ["send", "nope", "hi"],
                    ["send", "general"],
                    ["send-test"],
                    ["send-test", "nope"],
                    ["send-invalid", "general"],
                    ["tail", "a", "b"],
                    ["ping"],
                    ["ping", "x", "1000"],
                    ["who"],
                    ["join", "nope"],
                ):
                    with pytest.raises(ControlClientError) as info:
                        await client.call(words[0], words[1:])
                    assert info.value.code == "bad_request", (words, info.value)
                assert (await client.call("status"))["peer_id"] == alice.identity.peer_id
                assert await client.call("history", ["general"]) == []
            finally:
                await client.close()

    asyncio.run(scenario())
