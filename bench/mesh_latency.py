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

Load mode (``--mode load``): instead of a paced stream, publishers send as fast as
backpressure allows, each keeping at most ``--inflight`` (16) sends outstanding,
until ``--messages`` (default 2,000 in this mode) are out. By default every member
publishes (an equal share; ``--publishers 1`` is the shape of the PERF-NOTES
harness: one publisher, the others only forward). All members is the default
because that is what a loaded chat is, and what the issue asks ("members publish as
fast as backpressure allows"): every node pays for signing its own messages and for
forwarding everyone else's, and the per-peer queues fill from every direction.
The window runs from the first send to the moment every expected delivery has
been seen (or nothing new arrived for 3 s); it reports deliveries/s over it,
p50/p99, delivered share, CPU per delivery (all node processes, /proc) and the
UNITED/raw ratios. The mesh's per-member volume limit ([mesh] rate_limit, 5/s) is
raised for the run, else the limit, not the node, is measured.

How load mode counts, so that the node's cost is measured and not the bench's:
the paced mode's ``tail`` streams (one JSON line per delivery per node over the
control socket, dropped past 1,000 queued lines) are not used. Deliveries are the
mesh plugin's per-channel ``messages`` counter (``ctl snapshot``, read before and
after the window, minus each node's own publishes): exact, and kept by the node
anyway. Latencies are each member's cache (``cache.sqlite3``, read by the bench
after the window, through SQLite, at no cost to the node): ``received_at`` (when
the cache took the message from the node's event pump) minus the envelope
timestamp, for every message from another node sent in the window (so a message
gossip lost and the cache's gap-fill brought from the server's archive counts in
the latency, late, but not in the delivered share, which is gossip's). The server has
no cache (its archive stamps messages after a reorder window), so its deliveries
are counted but not in the latency sample. ``--with-tail`` also attaches the
``tail`` streams during the window (unused), to show what they cost.
Raw py-libp2p nodes publish themselves (``load`` on their stdin) and count in
memory (a list append per delivery), reporting after the window. py-libp2p's
``publish`` only enqueues, and a full per-peer queue drops the RPC (40-65% of the
messages were lost so in a first try at N=3), so the raw publisher applies UNITED's
runtime rule (united_core/p2p/messages.py): a publish waits while a peer's outbound
queue holds 24 RPCs or more. Its ``--inflight`` bound then works as UNITED's does.

``--breakdown`` (load mode): UNITED once with every ``[p2p] speedups`` name, once
with none, and once per name with every name but that one, in one run on the same
community (restarted between variants), then raw py-libp2p; a table of CPU per
delivery for each.

Usage: python bench/mesh_latency.py [--sizes 5 10 20] [--messages 100] [--rate 10]
       python bench/mesh_latency.py --mode load --sizes 10 [--messages 2000]
           [--inflight 16] [--publishers 0 (all)] [--breakdown] [--with-tail]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from united_core.control import ControlClient
from united_core.identity import load_key_file
from united_core.p2p.speedups import ALL_SPEEDUPS
from united_core.testing import Community, NodeProcess, merge_toml, poll

BENCH = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
CHANNEL = "bench"
PAYLOAD = 200  # bytes per message (raw); UNITED's text is about as long
# Load mode: the mesh's per-member volume limit would otherwise be what is measured.
LOAD_MESH = "rate_limit = 1000000\nrate_burst = 10000000\n"


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


@dataclass
class LoadResult(Result):
    seconds: float = 0.0  # first send to last delivery
    sent: int = 0
    # UNITED: the runtime's loss counters that moved (summed over the nodes), and
    # "cache_missing": messages the members' caches still lack (gossip nor gap-fill)
    losses: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else float("nan")


def mesh_settings(d: int) -> str:
    return f"d = {d}\nd_lo = {max(1, d - 1)}\nd_hi = {d + 2}\n"


# ---- UNITED ------------------------------------------------------------------------


async def run_united(n: int, messages: int, rate: float, base: Path, d: int) -> Result:
    community = Community(base, mesh_settings=mesh_settings(d))
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
    async def start(cls, d: int, *, load: bool = False) -> RawNode:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH / "raw_gossip_node.py"),
            str(d),
            *(["load"] if load else []),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=64 * 1024 * 1024,  # load mode's ``stats`` line holds every latency
        )
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert line[0] == "ready", line
        return cls(proc, line[1])

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def line(self, prefix: str) -> str:
        """The next line of output that starts with ``prefix`` (others are skipped)."""
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), 600)
            if not raw:
                raise RuntimeError(f"raw node exited while waiting for {prefix!r}")
            text = raw.decode()
            if text.startswith(prefix + " "):
                return text

    async def stop(self) -> None:
        try:
            await self.send("quit")
            await asyncio.wait_for(self.proc.wait(), 10)
        except (TimeoutError, ConnectionError):
            self.proc.kill()
            await self.proc.wait()


async def connect_raw(server: RawNode, members: list[RawNode], dial_per_member: int) -> None:
    for i, member in enumerate(members):
        await member.send(f"dial {server.addr}")
        for k in range(1, dial_per_member + 1):  # like UNITED: a few other members each
            j = i + k
            if j < len(members):
                await member.send(f"dial {members[j].addr}")


async def run_raw(n: int, messages: int, rate: float, d: int, dial_per_member: int = 4) -> Result:
    nodes = [await RawNode.start(d) for _ in range(n + 1)]
    server, members = nodes[0], nodes[1:]
    try:
        await connect_raw(server, members, dial_per_member)
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


# ---- load mode: UNITED ----------------------------------------------------------------


async def call_node(node: NodeProcess, command: str, *args: str) -> Any:
    client = await ControlClient.connect(node.config.parent / "united.sock")
    try:
        return await client.call(command, list(args))
    finally:
        await client.close()


LOSSES = ("outbound_drops", "inbound_drops", "publish_wait_timeouts")


async def channel_counts(
    nodes: list[NodeProcess],
) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """(node, channel) -> the mesh plugin's message counter (own publishes included),
    and the runtime's loss counters summed over the nodes."""
    counts: dict[tuple[str, str], int] = {}
    losses = dict.fromkeys(LOSSES, 0)
    for node in nodes:
        snapshot = await call_node(node, "snapshot")
        for channel, stats in snapshot["plugins"]["mesh"]["topics"].items():
            counts[node.name, channel] = int(stats.get("messages", 0))
        counters = snapshot.get("p2p", {}).get("counters", {})
        for key in LOSSES:
            losses[key] += int(counters.get(key, 0))
    return counts, losses


async def mesh_counts(nodes: list[NodeProcess]) -> tuple[dict[str, int], dict[str, int]]:
    """Each node's count of messages on the bench channel, and the loss counters."""
    counts, losses = await channel_counts(nodes)
    return {node.name: counts.get((node.name, CHANNEL), 0) for node in nodes}, losses


def cache_rows(node: NodeProcess, own_key: bytes, since_ms: float) -> list[tuple[float, int]]:
    """(received_at, timestamp) of the messages from others in the member's cache
    sent since ``since_ms``; read-only, so the node pays nothing for it."""
    path = node.config.parent / "data" / "cache.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute(
            "SELECT received_at, timestamp FROM messages WHERE sender != ? AND timestamp >= ?",
            (own_key, int(since_ms)),
        ).fetchall()
    finally:
        db.close()
    return [(float(r), int(t)) for r, t in rows]


async def until_settled(
    measure: Callable[[], Awaitable[tuple[int, bool]]], quiet: float = 3.0
) -> None:
    """Poll ``measure`` (progress so far, done?) every 0.2 s until it is done or has
    made no progress for ``quiet`` seconds: the drain after a load window."""
    last_seen, last_change = -1, time.monotonic()
    while True:
        seen, done = await measure()
        if done:
            return
        if seen != last_seen:
            last_seen, last_change = seen, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return
        await asyncio.sleep(0.2)


def speedups_line(names: tuple[str, ...]) -> str:
    return "[p2p]\nspeedups = [" + ", ".join(f'"{n}"' for n in names) + "]\n"


def all_meshed(nodes: list[NodeProcess]) -> bool:
    return all(len(nd.ctl("topics")[CHANNEL]["mesh_peers"]) >= 1 for nd in nodes)


def joined(node: NodeProcess) -> bool:
    try:  # refused until the member's discovery has logged in
        node.ctl("join", CHANNEL)
    except RuntimeError:
        return False
    return True


async def united_load(
    n: int,
    messages: int,
    inflight: int,
    publishers: int,
    base: Path,
    d: int,
    variants: list[tuple[str, tuple[str, ...] | None]],
    with_tail: bool,
) -> dict[str, LoadResult]:
    """For each (label, speedups) variant (``None``: the config's default, key not
    written), a fresh community with it, and a load window measured on it. (One
    community restarted per variant was tried first: after a restart of every node
    at once, a member's directory login could take longer than the bench waits.)"""
    results: dict[str, LoadResult] = {}
    for k, (label, speedups) in enumerate(variants):
        community = Community(base / f"v{k}", mesh_settings=mesh_settings(d) + LOAD_MESH)
        try:
            community.start_server()
            community.create_channel(CHANNEL)
            for i in range(n):
                community.add_member(f"m{i:02d}", start=False)
            server = community.server
            assert server is not None
            nodes = [server, *community.members]
            keys = {
                m.name: load_key_file(m.config.parent / "identity.key").public_key
                for m in community.members
            }
            for node in nodes:
                node.stop()
                if speedups is not None:
                    merge_toml(node.config, speedups_line(speedups))
            for node in nodes:
                node.start()
            for member in community.members:
                poll(functools.partial(joined, member), timeout=30)
            poll(
                functools.partial(all_meshed, nodes),
                timeout=90,
                interval=1,
            )
            await asyncio.sleep(5)
            results[label] = await _measure_united_load(
                community, nodes, keys, messages, inflight, publishers, with_tail
            )
            r = results[label]
            print(f"    {label}: {row_load('UNITED', r).strip()}", flush=True)
        finally:
            community.stop()
    return results


async def _measure_united_load(
    community: Community,
    nodes: list[NodeProcess],
    keys: dict[str, bytes],
    messages: int,
    inflight: int,
    publishers: int,
    with_tail: bool,
) -> LoadResult:
    pubs = community.members[: publishers or len(community.members)]
    shares = {
        m.name: messages // len(pubs) + (i < messages % len(pubs)) for i, m in enumerate(pubs)
    }
    clients = {
        m.name: [
            await ControlClient.connect(m.config.parent / "united.sock") for _ in range(inflight)
        ]
        for m in pubs
    }
    sent = dict.fromkeys((nd.name for nd in nodes), 0)
    tails: list[asyncio.Task[None]] = []

    async def tail(node: NodeProcess) -> None:  # --with-tail: read and thrown away
        client = await ControlClient.connect(node.config.parent / "united.sock")
        try:
            async for _ in client.stream("tail", [CHANNEL]):
                pass
        finally:
            await client.close()

    if with_tail:
        tails = [asyncio.create_task(tail(nd)) for nd in nodes]
    before, losses0 = await mesh_counts(nodes)
    await asyncio.sleep(1)
    pids = [nd.proc.pid for nd in nodes if nd.proc]
    cpu0 = cpu_seconds(pids)
    t0 = time.time()
    since_ms = t0 * 1000 - 1

    async def publisher(name: str) -> None:
        left = shares[name]

        async def worker(client: ControlClient) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                index = sent[name]
                sent[name] += 1
                await client.call("send", [CHANNEL, f"{name}-{index:06d} " + "x" * 180])

        await asyncio.gather(*(worker(c) for c in clients[name]))

    await asyncio.gather(*(publisher(name) for name in clients))
    total = sum(sent.values())
    members = community.members
    want = {m.name: total - sent[m.name] for m in members}
    # Drain: until every member's cache holds every other node's message (read by
    # the bench through SQLite, no cost to the nodes) or 3 s without progress.
    rows: dict[str, list[tuple[float, int]]] = {}

    async def cached() -> tuple[int, bool]:
        nonlocal rows
        rows = {m.name: cache_rows(m, keys[m.name], since_ms) for m in members}
        done = all(len(rows[m.name]) >= want[m.name] for m in members)
        return sum(len(r) for r in rows.values()), done

    await until_settled(cached)
    cpu = cpu_seconds(pids) - cpu0
    after, losses1 = await mesh_counts(nodes)
    for task in tails:
        task.cancel()
    await asyncio.gather(*tails, return_exceptions=True)
    for group in clients.values():
        for client in group:
            await client.close()
    delivered = sum(after[nd.name] - before[nd.name] - sent[nd.name] for nd in nodes)
    latencies = [received * 1000 - ts for r in rows.values() for received, ts in r]
    last = max((received for r in rows.values() for received, _ in r), default=t0)
    losses = {k: losses1[k] - losses0[k] for k in LOSSES if losses1[k] != losses0[k]}
    seen = sum(len(r) for r in rows.values())
    if seen < sum(want.values()):  # which members miss what, by the caches
        losses["cache_missing"] = sum(want.values()) - seen
    return LoadResult(
        latencies,
        delivered,
        total * (len(nodes) - 1),
        cpu,
        seconds=last - t0,
        sent=total,
        losses=losses,
    )


# ---- load mode: raw py-libp2p ---------------------------------------------------------


async def raw_load(
    n: int, messages: int, inflight: int, publishers: int, d: int, dial_per_member: int = 4
) -> LoadResult:
    nodes = [await RawNode.start(d, load=True) for _ in range(n + 1)]
    server, members = nodes[0], nodes[1:]
    try:
        await connect_raw(server, members, dial_per_member)
        await asyncio.sleep(4)  # meshes form over a few heartbeats
        pubs = members[: publishers or n]
        shares = [messages // len(pubs) + (i < messages % len(pubs)) for i in range(len(pubs))]
        pids = [nd.proc.pid for nd in nodes]
        cpu0 = cpu_seconds(pids)
        t0 = time.time()
        for node, share in zip(pubs, shares, strict=True):
            await node.send(f"load {share} {inflight} {PAYLOAD}")
        firsts = []
        for node in pubs:
            parts = (await node.line("loaded")).split()
            firsts.append(float(parts[2]))
        expected = messages * n

        async def counted() -> tuple[int, bool]:
            seen = 0
            for node in nodes:
                await node.send("count")
                seen += int((await node.line("count")).split()[1])
            return seen, seen >= expected

        await until_settled(counted)
        cpu = cpu_seconds(pids) - cpu0
        latencies: list[float] = []
        delivered, last = 0, t0
        for node in nodes:
            await node.send("stats")
            parts = (await node.line("stats")).split()
            delivered += int(parts[1])
            last = max(last, float(parts[2]))
            if len(parts) > 3:
                latencies.extend(float(x) for x in parts[3].split(","))
        start = min([t0, *firsts])
        return LoadResult(latencies, delivered, expected, cpu, seconds=last - start, sent=messages)
    finally:
        for node in nodes:
            await node.stop()


# ---- report ------------------------------------------------------------------------


def row(label: str, r: Result) -> str:
    return (
        f"  {label:<7} p50 {r.p50:7.2f} ms  p99 {r.p99:7.2f} ms  delivered {100 * r.share:6.2f}% "
        f"({r.delivered}/{r.expected})  CPU {r.cpu_ms_per_delivery:6.3f} ms/delivery"
    )


def row_load(label: str, r: LoadResult) -> str:
    return (
        f"  {label:<7} {r.per_second:8.1f} deliveries/s  p50 {r.p50:7.2f} ms  p99 {r.p99:7.2f} ms"
        f"  delivered {100 * r.share:6.2f}% ({r.delivered}/{r.expected})"
        f"  CPU {r.cpu_ms_per_delivery:6.3f} ms/delivery"
        + (f"  losses {r.losses}" if r.losses else "")
    )


def as_dict(r: Result) -> dict[str, Any]:
    out = {k: v for k, v in vars(r).items() if k != "latencies_ms"}
    out |= {"p50": r.p50, "p99": r.p99, "share": r.share, "cpu_ms": r.cpu_ms_per_delivery}
    if isinstance(r, LoadResult):
        out["per_second"] = r.per_second
    return out


async def main_paced(args: argparse.Namespace) -> list[dict[str, Any]]:
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
    return report


async def main_load(args: argparse.Namespace) -> list[dict[str, Any]]:
    messages = args.messages or 2000
    who = f"{args.publishers} publisher(s)" if args.publishers else "every member publishes"
    print(
        f"mesh_latency --mode load: {messages} messages per run, {who}, at most "
        f"{args.inflight} sends in flight per publisher; ~200-byte payloads; D={args.d}"
    )
    variants: list[tuple[str, tuple[str, ...] | None]] = [("default", None)]
    if args.breakdown:
        print(f"  speed-ups: {', '.join(ALL_SPEEDUPS)}")
        variants = [("all on", ALL_SPEEDUPS), ("all off", ())]
        variants += [(f"-{x}", tuple(y for y in ALL_SPEEDUPS if y != x)) for x in ALL_SPEEDUPS]
    report = []
    for n in args.sizes:
        print(f"N = {n} members + server", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"united-bench-load-{n}-") as tmp:
            united = await united_load(
                n,
                messages,
                args.inflight,
                args.publishers,
                Path(tmp),
                args.d,
                variants,
                args.with_tail,
            )
        raw = await raw_load(n, messages, args.inflight, args.publishers, args.d)
        main_label = "all on" if args.breakdown else "default"
        ref = united[main_label]
        print(row_load("UNITED", ref))
        print(row_load("raw", raw))
        print(
            f"  ratio   CPU/delivery {ref.cpu_ms_per_delivery / raw.cpu_ms_per_delivery:.2f}x"
            f"  deliveries/s {ref.per_second / raw.per_second:.2f}x"
            f"  p50 latency {ref.p50 / raw.p50:.2f}x"
        )
        if args.breakdown:
            print(f"  speed-ups (N = {n}): CPU ms per delivery, each variant's own run")
            print(
                f"    {'variant':<24} {'CPU ms':>8} {'vs all on':>9} {'vs raw':>7} "
                f"{'deliv/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'delivered':>9}"
            )
            for label, r in [*united.items(), ("raw py-libp2p", raw)]:
                name = "all but " + label[1:] if label.startswith("-") else label
                print(
                    f"    {name:<24} {r.cpu_ms_per_delivery:8.3f} "
                    f"{r.cpu_ms_per_delivery / ref.cpu_ms_per_delivery:8.2f}x "
                    f"{r.cpu_ms_per_delivery / raw.cpu_ms_per_delivery:6.2f}x "
                    f"{r.per_second:8.1f} {r.p50:7.2f} {r.p99:7.2f} {100 * r.share:8.2f}%"
                )
        report.append(
            {"n": n, "united": {k: as_dict(v) for k, v in united.items()}, "raw": as_dict(raw)}
        )
    return report


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("paced", "load"), default="paced")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument(
        "--messages", type=int, default=None, help="per run (paced: 100, load: 2000)"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="paced: msg/s")
    parser.add_argument("--d", type=int, default=4, help="gossipsub D (D_lo D-1, D_hi D+2)")
    parser.add_argument(
        "--inflight", type=int, default=16, help="load: sends outstanding per publisher"
    )
    parser.add_argument(
        "--publishers", type=int, default=0, help="load: members that publish (0: all)"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="load: UNITED with all speed-ups, none, and each one switched off",
    )
    parser.add_argument(
        "--with-tail",
        action="store_true",
        help="load: also attach a tail stream per node (unused) to show its cost",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.mode == "paced":
        if args.breakdown or args.with_tail:
            parser.error("--breakdown and --with-tail are for --mode load")
        args.messages = args.messages or 100
        report = await main_paced(args)
    else:
        report = await main_load(args)
    if args.json:
        print(json.dumps(report, default=float))


if __name__ == "__main__":
    asyncio.run(main())
