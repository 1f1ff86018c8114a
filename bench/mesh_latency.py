"""Mesh delivery: a UNITED server and N member processes vs raw py-libp2p gossipsub.

For each N (default 5, 10, 20), in one run:

1. UNITED: `united init/invite/join/run` processes on loopback (a server and N
   members in one channel). M messages are published at R msg/s, round-robin over
   the members, through each member's control socket (`send`); every node's
   `tail` stream records deliveries. Latency is the envelope timestamp (sender's
   clock) to the receiver's arrival time, same machine.
2. Reference: N+1 bare py-libp2p gossipsub processes (bench/raw_gossip_node.py,
   configured the same: Noise, Yamux, gossipsub v1.1, D=4, heartbeat 1 s, strict
   signing), members connected to the "server" node and to the same number of
   other members, same M and R, 200-byte payloads.

It prints p50/p99 publish-to-delivery latency, the share of expected deliveries
that arrived (every message to every node but its sender), CPU seconds of all
node processes per delivered message (from /proc, over the publishing window
plus a 3 s drain), and the UNITED/raw ratios.

Usage: python bench/mesh_latency.py [--sizes 5 10 20] [--messages 100] [--rate 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from united_core.control import ControlClient
from united_core.testing import Community, NodeProcess, poll

BENCH = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            pass
    return total / TICKS


@dataclass
class Result:
    latencies_ms: list[float]
    delivered: int
    expected: int
    cpu_s: float

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        xs = sorted(self.latencies_ms)
        return xs[max(0, int(len(xs) * 0.99) - 1)] if xs else float("nan")

    @property
    def share(self) -> float:
        return self.delivered / self.expected if self.expected else 0.0

    @property
    def cpu_ms_per_delivery(self) -> float:
        return 1000 * self.cpu_s / self.delivered if self.delivered else float("nan")


# ---- UNITED ------------------------------------------------------------------------


async def run_united(n: int, messages: int, rate: float, base: Path, d: int) -> Result:
    community = Community(base, mesh_settings=f"d = {d}\nd_lo = {max(1, d - 1)}\nd_hi = {d + 2}\n")
    nodes: list[NodeProcess] = []
    try:
        community.start_server()
        community.create_channel("bench")
        for i in range(n):
            community.add_member(f"m{i:02d}")
        for member in community.members:
            member.ctl("join", "bench")
        server = community.server
        assert server is not None
        nodes = [server, *community.members]
        # Every node in the channel's mesh, then a few heartbeats to settle. (At N=20,
        # py-libp2p meshes keep churning below D_lo: waiting for D_lo everywhere can
        # take minutes; the delivery share shows what that costs.)
        poll(
            lambda: all(len(nd.ctl("topics")["bench"]["mesh_peers"]) >= 1 for nd in nodes),
            timeout=90,
            interval=1,
        )
        await asyncio.sleep(5)
        return await _measure_united(community, nodes, messages, rate)
    finally:
        community.stop()


async def _measure_united(
    community: Community, nodes: list[NodeProcess], messages: int, rate: float
) -> Result:
    sockets = {nd.name: nd.config.parent / "united.sock" for nd in nodes}
    latencies: list[float] = []
    delivered = 0

    async def tail(name: str) -> None:
        nonlocal delivered
        client = await ControlClient.connect(sockets[name])
        try:
            async for line in client.stream("tail", ["bench"]):
                if line["sender"] == name:
                    continue  # our own publish echoed back
                delivered += 1
                latencies.append(line["received_at"] * 1000 - line["timestamp"])
        finally:
            await client.close()

    tails = [asyncio.create_task(tail(nd.name)) for nd in nodes]
    senders = {m.name: await ControlClient.connect(sockets[m.name]) for m in community.members}
    await asyncio.sleep(1)
    pids = [nd.proc.pid for nd in nodes if nd.proc]
    cpu0 = cpu_seconds(pids)
    start = time.monotonic()
    names = list(senders)
    for i in range(messages):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        await senders[names[i % len(names)]].call("send", ["bench", f"msg-{i:06d} " + "x" * 180])
    await asyncio.sleep(3)
    cpu = cpu_seconds(pids) - cpu0
    for task in tails:
        task.cancel()
    await asyncio.gather(*tails, return_exceptions=True)
    for client in senders.values():
        await client.close()
    return Result(latencies, delivered, messages * (len(nodes) - 1), cpu)


# ---- raw py-libp2p ------------------------------------------------------------------


class RawNode:
    def __init__(self, proc: asyncio.subprocess.Process, addr: str) -> None:
        self.proc = proc
        self.addr = addr

    @classmethod
    async def start(cls, d: int) -> RawNode:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH / "raw_gossip_node.py"),
            str(d),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert line[0] == "ready", line
        return cls(proc, line[1])

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        try:
            await self.send("quit")
            await asyncio.wait_for(self.proc.wait(), 10)
        except (TimeoutError, ConnectionError):
            self.proc.kill()
            await self.proc.wait()


async def run_raw(n: int, messages: int, rate: float, d: int, dial_per_member: int = 4) -> Result:
    nodes = [await RawNode.start(d) for _ in range(n + 1)]
    server, members = nodes[0], nodes[1:]
    try:
        for i, member in enumerate(members):
            await member.send(f"dial {server.addr}")
            for k in range(1, dial_per_member + 1):  # like UNITED: a few other members each
                j = i + k
                if j < n:
                    await member.send(f"dial {members[j].addr}")
        await asyncio.sleep(4)  # meshes form over a few heartbeats
        latencies: list[float] = []
        delivered = 0
        sent_at: dict[str, tuple[float, int]] = {}

        async def collect(index: int, node: RawNode) -> None:
            nonlocal delivered
            assert node.proc.stdout is not None
            async for raw in node.proc.stdout:
                parts = raw.decode().split()
                if parts[0] != "recv" or parts[1] not in sent_at:
                    continue
                t_sent, publisher = sent_at[parts[1]]
                if publisher == index:
                    continue
                delivered += 1
                latencies.append((float(parts[2]) - t_sent) * 1000)

        readers = [asyncio.create_task(collect(i, nd)) for i, nd in enumerate(nodes)]
        pids = [nd.proc.pid for nd in nodes]
        cpu0 = cpu_seconds(pids)
        start = time.monotonic()
        for i in range(messages):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            publisher = 1 + i % n
            key = i.to_bytes(8, "big")
            sent_at[key.hex()] = (time.time(), publisher)
            await nodes[publisher].send(f"pub {(key + b'x' * 192).hex()}")
        await asyncio.sleep(3)
        cpu = cpu_seconds(pids) - cpu0
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return Result(latencies, delivered, messages * n, cpu)
    finally:
        for node in nodes:
            await node.stop()


# ---- report ------------------------------------------------------------------------


def row(label: str, r: Result) -> str:
    return (
        f"  {label:<7} p50 {r.p50:7.2f} ms  p99 {r.p99:7.2f} ms  delivered {100 * r.share:6.2f}% "
        f"({r.delivered}/{r.expected})  CPU {r.cpu_ms_per_delivery:6.3f} ms/delivery"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--d", type=int, default=4, help="gossipsub D (D_lo D-1, D_hi D+2)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(
        f"mesh_latency: {args.messages} messages at {args.rate:g} msg/s per size; "
        f"200-byte payloads; D={args.d}"
    )
    report = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"united-bench-{n}-") as tmp:
            united = await run_united(n, args.messages, args.rate, Path(tmp), args.d)
        raw = await run_raw(n, args.messages, args.rate, args.d)
        print(f"N = {n} members + server")
        print(row("UNITED", united))
        print(row("raw", raw))
        ratio_cpu = united.cpu_ms_per_delivery / raw.cpu_ms_per_delivery
        ratio_p50 = united.p50 / raw.p50
        print(f"  ratio   CPU/delivery {ratio_cpu:.2f}x  p50 latency {ratio_p50:.2f}x")
        report.append(
            {
                "n": n,
                "united": vars(united) | {"p50": united.p50, "p99": united.p99},
                "raw": vars(raw) | {"p50": raw.p50, "p99": raw.p99},
            }
        )
    if args.json:
        print(json.dumps(report, default=float))


if __name__ == "__main__":
    asyncio.run(main())
