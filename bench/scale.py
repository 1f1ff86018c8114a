"""Scale: a UNITED server and 100 member processes on one machine, 5 channels.

One run (defaults: ``--members 100 --channels 5 --rate 5 --seconds 60``):

1. Setup, timed by phase: a server (``united init --role server``, on loopback),
   the channels, then the members registered as a user does (``invite`` on the
   server's control socket, ``united join`` in a process), ``--batch`` (10) at a
   time; then the member processes (``united run``) started ``--batch`` at a time,
   each batch confirmed (its control socket answers ``status``) before the next
   starts; a process that exits or stays silent for 60 s stops the run with its
   log's tail. Each member joins its channels (retried until its directory login
   lets it), then the bench waits (at most 180 s) until every member has a mesh
   peer in each of its channels and the server one in every channel.
2. Channel layout: member i joins channel i mod C (and, with ``--per-member K``,
   the K-1 next ones too). The default, one channel each, gives 5 channels of 20
   members: the size of mesh_latency's largest run, so a channel here can be
   compared with it, while the server (subscribed to every channel, as in a real
   community) carries 5 meshes and 100 members at once, which is what this bench
   is about. Every message reaches 19 members and the server.
3. Load: ``--rate`` messages a second in total for ``--seconds``, round-robin over
   the members (5 msg/s, 100 members: each sends 3 in a minute), each in its first
   channel, through the member's control socket (``send``; sends are not awaited
   one after another, so a slow one does not hold the pace).
4. The window runs from the first send until every member's cache holds every
   message sent in its channels by others (or 10 s after the last send).

How deliveries and latencies are counted (as ``mesh_latency.py --mode load``;
no ``tail`` stream, which would add a JSON line per delivery to every node):
deliveries are the mesh plugin's per-channel ``messages`` counter on every node
(``snapshot``, before and after the window, minus the node's own sends); latency
is ``received_at`` in each member's cache (when its cache took the message from
the node's event pump) minus the envelope timestamp, read by the bench through
SQLite after the window (the server, which has no cache, is counted in deliveries
but not in the latency sample).

Reports: delivered share, p50/p99 publish-to-delivery latency, CPU per delivery
(every node process, /proc, over the window), the server's CPU (% of one core over
the window), RSS per member process (median, max; and the server's), the
runtime's loss counters, setup time per phase, and any warning the server logged
(a directory limit tripping shows there: which one, how often).

All processes are stopped on every exit path (SIGTERM to all at once, then SIGKILL
for any still running after 20 s), Ctrl-C and SIGTERM included.

Usage: python bench/scale.py [--members 100] [--channels 5] [--rate 5] [--seconds 60]
           [--per-member 1] [--batch 10] [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The measurements are mesh_latency.py's own (this directory is on sys.path when
# a bench script runs).
from mesh_latency import LOSSES, cache_rows, call_node, channel_counts, cpu_seconds

from united_core.control import ControlClient, ControlClientError
from united_core.identity import load_key_file
from united_core.testing import Community, NodeProcess, on_loopback

START_TIMEOUT = 60.0  # per batch of member processes
JOIN_TIMEOUT = 60.0  # a member's channel join, retried until its login lets it
MESH_TIMEOUT = 180.0
DRAIN = 10.0  # most seconds after the last send

# Every process this bench started, stopped at exit whatever happens.
PROCESSES: list[subprocess.Popen[bytes]] = []


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.M)
    return int(found.group(1)) / 1024 if found else float("nan")


def stop_all(timeout: float = 20.0) -> None:
    """SIGTERM every process still running, then SIGKILL what is left after ``timeout``."""
    running = [p for p in PROCESSES if p.poll() is None]
    for proc in running:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Member:
    node: NodeProcess
    channels: list[str]
    key: bytes = b""
    client: ControlClient | None = None

    @property
    def pid(self) -> int:
        assert self.node.proc is not None
        return self.node.proc.pid


@dataclass
class Setup:
    phases: dict[str, float] = field(default_factory=dict)
    meshed: int = 0


def log_tail(node: NodeProcess, lines: int = 15) -> str:
    try:
        return "\n".join(node.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---- setup ------------------------------------------------------------------------------


async def register(server: NodeProcess, base: Path, names: list[str]) -> list[Path]:
    """``invite`` on the server, then ``united join`` for each name, concurrently."""
    invites = [await call_node(server, "invite") for _ in names]

    async def join(name: str, invite: dict[str, str]) -> Path:
        directory = base / name
        argv = ["join", invite["url"], invite["code"], "--dir", str(directory), "--name", name]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "united_core",
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"united join --name {name} exited {proc.returncode}: {err!r}")
        config = directory / "united.toml"
        on_loopback(config)
        return config

    return list(await asyncio.gather(*(join(n, i) for n, i in zip(names, invites, strict=True))))


def spawn(node: NodeProcess) -> None:
    """``united run`` for the node (log to its node.log), registered for stop_all."""
    PROCESSES.append(node.spawn())


async def start_batch(nodes: list[NodeProcess]) -> None:
    """Start the processes, then wait until each answers ``status``; fail fast."""
    for node in nodes:
        spawn(node)
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(nodes)
    while pending:
        for node in list(pending):
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise RuntimeError(
                    f"{node.name} exited {node.proc.returncode} while starting:\n{log_tail(node)}"
                )
            try:
                await call_node(node, "status")
            except ControlClientError:
                continue
            pending.remove(node)
        if pending and time.monotonic() > deadline:
            names = ", ".join(n.name for n in pending)
            raise RuntimeError(
                f"not answering after {START_TIMEOUT:g} s: {names}\n"
                f"{pending[0].name}:\n{log_tail(pending[0])}"
            )
        if pending:
            await asyncio.sleep(0.3)


async def join_channels(member: Member) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    for channel in member.channels:
        while True:
            try:
                await call_node(member.node, "join", channel)
                break
            except ControlClientError as exc:  # refused until its login went through
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{member.node.name}: join {channel}: {exc}\n{log_tail(member.node)}"
                    ) from None
                await asyncio.sleep(0.5)


async def meshed(member: Member) -> bool:
    topics = await call_node(member.node, "topics")
    return all(len(topics.get(ch, {}).get("mesh_peers", ())) >= 1 for ch in member.channels)


async def server_meshed(server: NodeProcess, channels: list[str]) -> bool:
    topics = await call_node(server, "topics")
    return all(len(topics.get(ch, {}).get("mesh_peers", ())) >= 1 for ch in channels)


async def setup(
    community: Community, args: argparse.Namespace, channels: list[str]
) -> tuple[list[Member], Setup]:
    info = Setup()
    t = time.monotonic()
    try:
        community.start_server()
    finally:  # registered for stop_all even if it never answered
        if community.server is not None and community.server.proc is not None:
            PROCESSES.append(community.server.proc)
    server = community.server
    assert server is not None
    for channel in channels:
        await call_node(server, "channel-create", channel)
    info.phases["server"] = time.monotonic() - t

    t = time.monotonic()
    names = [f"m{i:03d}" for i in range(args.members)]
    configs: list[Path] = []
    for k in range(0, len(names), args.batch):
        configs += await register(server, community.base, names[k : k + args.batch])
        print(f"  registered {len(configs)}/{len(names)}", end="\r", flush=True)
    info.phases["registration"] = time.monotonic() - t
    print()

    members = []
    for i, (name, config) in enumerate(zip(names, configs, strict=True)):
        mine = [channels[(i + j) % len(channels)] for j in range(args.per_member)]
        key = load_key_file(config.parent / "identity.key").public_key
        members.append(Member(NodeProcess(name, config), mine, key))
    community.members = [m.node for m in members]

    t = time.monotonic()
    for k in range(0, len(members), args.batch):
        await start_batch([m.node for m in members[k : k + args.batch]])
        print(f"  started {min(k + args.batch, len(members))}/{len(members)}", end="\r", flush=True)
    info.phases["processes"] = time.monotonic() - t
    print()

    t = time.monotonic()
    for k in range(0, len(members), args.batch):
        await asyncio.gather(*(join_channels(m) for m in members[k : k + args.batch]))
    info.phases["channel joins"] = time.monotonic() - t

    t = time.monotonic()
    deadline = t + MESH_TIMEOUT
    while True:
        states = [await meshed(m) for m in members]
        info.meshed = sum(states)
        if all(states) and await server_meshed(server, channels):
            break
        if time.monotonic() > deadline:
            print(f"  warning: after {MESH_TIMEOUT:g} s only {info.meshed}/{len(members)} meshed")
            break
        await asyncio.sleep(1)
    info.phases["meshes"] = time.monotonic() - t
    return members, info


# ---- measurement -------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, int(len(s) * q) - 1)] if s else float("nan")


async def measure(
    server: NodeProcess, members: list[Member], args: argparse.Namespace, channels: list[str]
) -> dict[str, Any]:
    nodes = [server, *(m.node for m in members)]
    for m in members:
        m.client = await ControlClient.connect(m.node.config.parent / "united.sock")
    before, losses0 = await channel_counts(nodes)
    await asyncio.sleep(1)
    pids = [server.proc.pid if server.proc else 0, *(m.pid for m in members)]
    cpu0, server_cpu0 = cpu_seconds(pids), cpu_seconds(pids[:1])
    t0 = time.time()
    start = time.monotonic()
    total = int(args.rate * args.seconds)
    sent: collections.Counter[tuple[str, str]] = collections.Counter()
    failures: list[str] = []

    async def send(m: Member, i: int) -> None:
        assert m.client is not None
        try:
            await m.client.call("send", [m.channels[0], f"scale-{i:06d} " + "x" * 180])
        except ControlClientError as exc:
            failures.append(f"{m.node.name}: {exc}")
            return
        sent[m.node.name, m.channels[0]] += 1

    # One connection per member, and its sends one after another (at most one in
    # flight per member; at 5 msg/s over 100 members they are 20 s apart).
    chains: dict[str, asyncio.Task[None]] = {}

    async def chained(m: Member, i: int, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous
        await send(m, i)

    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
        m = members[i % len(members)]
        chains[m.node.name] = asyncio.create_task(chained(m, i, chains.get(m.node.name)))
    await asyncio.gather(*chains.values())
    publishing = time.monotonic() - start

    # Expected per member: the others' messages in its channels; drain until all seen.
    per_channel = collections.Counter({ch: 0 for ch in channels})
    for (_, ch), k in sent.items():
        per_channel[ch] += k
    want = {
        m.node.name: sum(per_channel[ch] for ch in m.channels)
        - sum(sent[m.node.name, ch] for ch in m.channels)
        for m in members
    }
    since_ms = t0 * 1000 - 1
    drain_end = time.monotonic() + DRAIN
    rows: dict[str, list[tuple[float, int]]] = {}
    while True:
        rows = {m.node.name: cache_rows(m.node, m.key, since_ms) for m in members}
        if all(len(rows[m.node.name]) >= want[m.node.name] for m in members):
            break
        if time.monotonic() > drain_end:
            break
        await asyncio.sleep(0.5)
    window = time.monotonic() - start
    cpu, server_cpu = cpu_seconds(pids) - cpu0, cpu_seconds(pids[:1]) - server_cpu0
    rss = [rss_mb(m.pid) for m in members]
    server_rss = rss_mb(pids[0])
    after, losses1 = await channel_counts(nodes)
    for m in members:
        if m.client is not None:
            await m.client.close()

    delivered = 0
    for node in nodes:
        for ch in channels:
            if (node.name, ch) in after:
                delta = after[node.name, ch] - before.get((node.name, ch), 0)
                delivered += delta - sent[node.name, ch]
    members_in = collections.Counter(ch for m in members for ch in m.channels)
    expected = sum(k * members_in[ch] for ch, k in per_channel.items())  # others + server
    latencies = [r * 1000 - ts for rs in rows.values() for r, ts in rs]
    missing: collections.Counter[str] = collections.Counter()  # gossip deliveries, by node
    for node in [server, *(m.node for m in members)]:
        mine = channels if node is server else next(m for m in members if m.node is node).channels
        for ch in mine:
            got = after.get((node.name, ch), 0) - before.get((node.name, ch), 0)
            short = per_channel[ch] - got  # own sends arrive back through the counter too
            if short > 0:
                missing[f"{node.name}/{ch}"] += short
    return {
        "cache_held": len(latencies),
        "cache_expected": sum(want.values()),
        "gossip_missing": dict(missing.most_common(10)),
        "sent": sum(sent.values()),
        "send_failures": failures,
        "delivered": delivered,
        "expected": expected,
        "share": delivered / expected if expected else float("nan"),
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "latency_samples": len(latencies),
        "cpu_s": cpu,
        "cpu_ms_per_delivery": 1000 * cpu / delivered if delivered else float("nan"),
        "server_cpu_pct": 100 * server_cpu / window,
        "all_cpu_pct": 100 * cpu / window,
        "publishing_s": publishing,
        "window_s": window,
        "member_rss_mb_median": statistics.median(rss),
        "member_rss_mb_max": max(rss),
        "server_rss_mb": server_rss,
        "losses": {k: losses1[k] - losses0[k] for k in LOSSES},
    }


STAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+)\s+(.*)$")


def warnings(nodes: list[NodeProcess]) -> collections.Counter[str]:
    """WARNING/ERROR lines of the nodes' logs (and py-libp2p's unstamped ones), with
    numbers and ids blanked, counted over all the nodes."""
    found: collections.Counter[str] = collections.Counter()
    for node in nodes:
        try:
            text = node.log.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            stamped = STAMPED.match(line)
            if stamped and stamped.group(1) not in ("WARNING", "ERROR", "CRITICAL"):
                continue
            msg = stamped.group(2) if stamped else line.strip()
            if not msg or msg.startswith(("File ", "Traceback", "^", "~")):
                continue
            msg = re.sub(r"12D3Koo\w+|united/[\w/-]+|\d+(\.\d+)?", "#", msg)
            found[msg[:150]] += 1
    return found


# ---- main --------------------------------------------------------------------------------


async def run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    channels = [f"c{i}" for i in range(args.channels)]
    community = Community(base)
    t = time.monotonic()
    try:
        print(
            f"scale: a server and {args.members} members, {args.channels} channels "
            f"({args.per_member} per member), {args.rate:g} msg/s for {args.seconds:g} s"
        )
        members, info = await setup(community, args, channels)
        setup_s = time.monotonic() - t
        phases = "  ".join(f"{k} {v:.1f}" for k, v in info.phases.items())
        print(f"setup {setup_s:.1f} s ({phases}); meshed {info.meshed}/{len(members)}")
        await asyncio.sleep(5)  # a few heartbeats to settle
        assert community.server is not None
        result = await measure(community.server, members, args, channels)
        result |= {"setup_s": setup_s, "setup_phases": info.phases, "meshed": info.meshed}
        result["server_warnings"] = dict(warnings([community.server]).most_common(10))
        result["member_warnings"] = dict(warnings(community.members).most_common(10))
        return result
    finally:
        await asyncio.to_thread(stop_all)


def report(r: dict[str, Any]) -> None:
    print(
        f"delivered {100 * r['share']:.2f}% ({r['delivered']}/{r['expected']}; "
        f"{r['sent']} sent, {len(r['send_failures'])} sends failed)"
    )
    print(
        f"members' caches hold {r['cache_held']}/{r['cache_expected']} of the others' "
        f"messages (gossip, or the cache's gap-fill from the server's archive)"
    )
    if r["gossip_missing"]:
        print(f"gossip deliveries missing, by node/channel: {r['gossip_missing']}")
    print(
        f"latency p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.1f} ms "
        f"({r['latency_samples']} member deliveries)"
    )
    print(
        f"CPU {r['cpu_ms_per_delivery']:.2f} ms per delivery (all processes: "
        f"{r['all_cpu_pct']:.0f}% of a core over the {r['window_s']:.1f} s window)"
    )
    print(f"server CPU {r['server_cpu_pct']:.1f}% of a core; RSS {r['server_rss_mb']:.0f} MB")
    print(
        f"member RSS median {r['member_rss_mb_median']:.1f} MB, max {r['member_rss_mb_max']:.1f} MB"
    )
    print(f"losses {r['losses']}")
    for line in r["send_failures"][:5]:
        print(f"  send failed: {line}")
    for who in ("server", "member"):
        if r[f"{who}_warnings"]:
            print(f"{who} log warnings, setup and run (count, message):")
            for msg, k in r[f"{who}_warnings"].items():
                print(f"  {k:5d}  {msg}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--rate", type=float, default=5.0, help="messages a second, in total")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--per-member", type=int, default=1, help="channels each member joins")
    parser.add_argument("--batch", type=int, default=10, help="registrations/starts at once")
    parser.add_argument("--keep", type=Path, help="build the nodes here and keep them")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.per_member <= args.channels:
        parser.error("--per-member must be between 1 and --channels")

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            result = asyncio.run(run(args, args.keep))
        else:
            with tempfile.TemporaryDirectory(prefix="united-scale-") as tmp:
                result = asyncio.run(run(args, Path(tmp)))
    except KeyboardInterrupt:
        print("\ninterrupted; every node stopped", file=sys.stderr)
        raise SystemExit(130) from None
    except RuntimeError as exc:
        print(f"scale: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        stop_all()  # idempotent: whatever the event loop could not stop
    report(result)
    if args.json:
        print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
