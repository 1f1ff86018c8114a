"""Archive writes and uploads per stored message, with --members members (default 5).

A real server (directory, mesh, archive) and members made with `united join`,
all in this process on loopback. Two phases:

1. live: every member sends --messages messages while the server is up;
2. outage: the server stops, every member sends --messages/2 more over the
   mesh, the server comes back and the members reconcile.

After each phase, once every member's cache holds every message confirmed, it
prints what the archive did per message stored: writes (messages handed to the
SQLite store, duplicates included: the issue's target is <= 1.1) and uploads
(envelopes members submitted), and the ids members looked up instead.

Usage: python bench/archive_writes.py [--members 5] [--messages 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from united_core.cli import main as cli_main
from united_core.node import Node, load_settings
from united_core.testing import add_to_table, free_port, on_loopback


@contextlib.asynccontextmanager
async def running(config: Path) -> AsyncIterator[Node]:
    settings, pm, _ = load_settings(config)
    node = Node(settings, pm)
    ready = asyncio.Event()
    task = asyncio.create_task(node.run(ready))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield node
    finally:
        node.request_stop()
        await asyncio.wait_for(task, 20)


def init_server(base: Path) -> Path:
    directory = base / "server"
    assert cli_main(["init", "--role", "server", "--dir", str(directory)]) == 0
    config = directory / "united.toml"
    config.write_text(
        config.read_text().replace('"/ip4/0.0.0.0/tcp/7420"', '"/ip4/127.0.0.1/tcp/0"')
    )
    add_to_table(config, "directory", f'listen_host = "127.0.0.1"\nlisten_port = {free_port()}\n')
    return config


async def join(url: str, server: Node, base: Path, name: str) -> Path:
    code = (await server.service("directory").create_invite())["code"]
    directory = base / name
    args = ["join", url, code, "--dir", str(directory), "--name", name]
    assert await asyncio.to_thread(cli_main, args) == 0
    config = directory / "united.toml"
    on_loopback(config)
    add_to_table(config, "cache", "sync_interval = 1.0\n")
    return config


async def wait_for(predicate: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)


async def all_confirmed(members: list[Node], total: int) -> bool:
    for m in members:
        rows = await m.service("cache").history("general", 1, 100_000)
        if len(rows) < total or not all(r["confirmed"] for r in rows):
            return False
    return True


def report(phase: str, before: dict[str, int], after: dict[str, int], sent: int) -> None:
    d = {k: after[k] - before.get(k, 0) for k in after}
    stored = d["stored"]
    writes = d["stored"] + d["duplicates"]
    uploads = d["submitted"] + d["submitted_known"] + d["refused"]
    print(
        f"{phase:<8} sent {sent:>4}  stored {stored:>4}  writes/stored {writes / stored:.3f}  "
        f"uploads/stored {uploads / stored:.3f}  (writes {writes}, uploads {uploads}, "
        f"lookups {d['lookups']})"
    )


def archive_stats(server: Node) -> dict[str, int]:
    s = server.service("archive").snapshot()
    keys = ("stored", "duplicates", "submitted", "submitted_known", "refused", "lookups")
    return {k: int(s[k]) for k in keys}


async def main(members: int, messages: int) -> None:
    with tempfile.TemporaryDirectory(prefix="united-bench-") as tmp:
        base = Path(tmp)
        config = init_server(base)
        async with running(config) as server:
            directory = server.service("directory")
            url = f"ws://127.0.0.1:{directory.port}/ws"
            await directory.create_channel("general")
            configs = [await join(url, server, base, f"m{i}") for i in range(members)]
        async with contextlib.AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(running(c)) for c in configs]
            async with running(config) as server:
                for node in nodes:
                    await asyncio.wait_for(node.service("discovery").connected.wait(), 20)
                    await node.service("discovery").join("general")
                await asyncio.sleep(3)  # meshes form
                before = archive_stats(server)
                for i in range(messages):
                    for n, node in enumerate(nodes):
                        await node.service("mesh").send("general", f"live {n}.{i}")
                    await asyncio.sleep(0.05)
                total = messages * members
                await wait_for(lambda: all_confirmed(nodes, total), 120, "live confirmed")
                report("live", before, archive_stats(server), total)
            await asyncio.sleep(2)
            outage = messages // 2
            for i in range(outage):
                for n, node in enumerate(nodes):
                    await node.service("mesh").send("general", f"outage {n}.{i}")
                await asyncio.sleep(0.05)
            total += outage * members
            async with running(config) as server:
                before = archive_stats(server)
                await wait_for(lambda: all_confirmed(nodes, total), 120, "outage confirmed")
                report("outage", before, archive_stats(server), outage * members)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--messages", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main(args.members, args.messages))
