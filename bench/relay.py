"""What relaying costs the server: CPU of its libp2p thread per relayed message.

A server (its preset: relay on) and members alice and bob, in this process on
loopback, all in one channel. The server leaves the channel's gossip mesh, so
the only work it does for the members' messages is relaying. Two runs of
--messages messages from alice to bob (about --size bytes each):

- direct: alice and bob connected to each other directly;
- relayed: alice and bob stop accepting connections (as behind a home router)
  and reach each other through the server's relay (`/p2p-circuit`).

For each, the CPU time of the server's libp2p (trio) thread, read from
/proc/self/task/<tid>/stat, per message bob received, and the relay's bytes.
The difference is what relaying costs per message. Medians over --runs runs.

Usage: python bench/relay.py [--messages 300] [--size 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from united_core.api import hookimpl
from united_core.node import Node
from united_core.testing import running_community, until

MEMBERS = (
    '[relay_client]\nmode = "always"\n'
    "[mesh]\nrate_limit = 100000.0\nrate_burst = 1000000\n"  # the bench sends in bursts
)
TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(native_id: int) -> float:
    """User + system CPU seconds of one thread of this process."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


class Count:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.n = 0

    @hookimpl
    def united_message_received(self, message: Any) -> None:
        if message.text.startswith(self.prefix):
            self.n += 1


async def stop_listening(node: Node) -> None:
    async def close() -> None:
        network = node.p2p.host_context.host.get_network()
        for listener in list(network.listeners.values()):
            await listener.close()

    await node.p2p.call(close)


async def one_run(base: Path, messages: int, size: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    async with running_community(base, ("alice", "bob"), member_extra=MEMBERS) as c:
        alice, bob, server = c.node("alice"), c.node("bob"), c.server
        ids = {n: c.node(n).identity.peer_id for n in ("alice", "bob")}
        relay = server.service("relay")
        tid = server.p2p._bridge._thread.native_id  # the server's trio thread
        topic = c.topic("general")
        await until(lambda: relay.snapshot()["reservations"] == 2, 30, "two reservations")
        await server.p2p.unsubscribe(topic)

        async def in_mesh(a: Node, peer: str) -> bool:
            return peer in (await a.p2p.snapshot())["mesh"].get(topic, ())

        for mode in ("direct", "relayed"):
            if mode == "relayed":
                circuit = (await c.stats("alice"))["relay-client"]["addr"]
                for node in (alice, bob):
                    await stop_listening(node)
                await bob.p2p.disconnect(ids["alice"])
                await bob.p2p.dial(ids["alice"], [circuit])
            else:
                await bob.p2p.dial(ids["alice"], alice.p2p.announce_addrs[:1])
            await until(lambda: in_mesh(alice, ids["bob"]), 30, "bob in alice's mesh")
            await until(lambda: in_mesh(bob, ids["alice"]), 30, "alice in bob's mesh")
            rows = [r for r in await bob.p2p.peers() if r["peer_id"] == ids["alice"]]
            assert rows and all(r["relayed"] == (mode == "relayed") for r in rows), rows
            counter = Count(f"{mode} ")
            bob.pm.register(counter, name=f"bench-count-{mode}")
            bytes_before, cpu_before = relay.snapshot()["bytes_relayed"], thread_cpu(tid)
            started = time.monotonic()
            pad = "x" * max(0, size - 20)
            for i in range(messages):
                await alice.service("mesh").send("general", f"{mode} {i} {pad}")
            await until(lambda c=counter: c.n >= messages, 120, f"{mode}: all at bob")
            took = time.monotonic() - started
            cpu = thread_cpu(tid) - cpu_before
            bob.pm.unregister(counter)
            out[mode] = {
                "server_cpu_ms_per_msg": cpu / messages * 1000,
                "relayed_bytes_per_msg": (relay.snapshot()["bytes_relayed"] - bytes_before)
                / messages,
                "msgs_per_s": messages / took,
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("needs Linux (/proc per-thread CPU)", file=sys.stderr)
        return 2
    results: list[dict[str, dict[str, float]]] = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            r = asyncio.run(one_run(Path(tmp), args.messages, args.size))
        results.append(r)
        print(
            f"run {run}/{args.runs}: "
            + "; ".join(
                f"{mode} {v['server_cpu_ms_per_msg']:.3f} ms server CPU/msg, "
                f"{v['relayed_bytes_per_msg']:.0f} relayed B/msg, {v['msgs_per_s']:.0f} msg/s"
                for mode, v in r.items()
            )
        )
    print(f"\nmedians over {args.runs} runs, {args.messages} messages of ~{args.size} B:")
    for mode in ("direct", "relayed"):
        cpu = statistics.median(r[mode]["server_cpu_ms_per_msg"] for r in results)
        rate = statistics.median(r[mode]["msgs_per_s"] for r in results)
        relayed = statistics.median(r[mode]["relayed_bytes_per_msg"] for r in results)
        print(
            f"  {mode:<8} server libp2p thread {cpu:.3f} ms CPU per message, "
            f"{relayed:.0f} relayed bytes per message, {rate:.0f} msg/s end to end"
        )
    extra = statistics.median(
        r["relayed"]["server_cpu_ms_per_msg"] - r["direct"]["server_cpu_ms_per_msg"]
        for r in results
    )
    print(f"  relaying costs the server {extra:.3f} ms CPU per message (median of differences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
