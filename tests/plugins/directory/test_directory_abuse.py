"""The directory's WebSocket port under abuse: half-open requests, stalled sessions,
failed logins from a shared address. Real aiohttp server, real sockets, loopback only.

The attacker runs in its own process (its own open-file table) from the loopback
addresses 127.0.0.2 and up; members connect from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import resource
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import raw_session, registered, replies_until_close, server
from united_directory import protocol
from united_directory.client.session import DirectoryClient, DirectoryError
from united_directory.server.limits import PendingGate, address_key, prefixes

from united_core.control import ControlClient
from united_core.identity import Identity
from united_core.wire import frames_pb2 as pb

E = pb.ErrorCode
HALF_OPEN = 2000

# Opens COUNT connections from NETS loopback addresses, sends a request that never
# ends, prints "ready", then reports when the server closed each one.
ATTACKER = r"""
import asyncio, json, resource, socket, sys, time

port, count, nets, wait = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
need = count + 100
if soft != resource.RLIM_INFINITY and soft < need:
    if hard != resource.RLIM_INFINITY and hard < need:
        print(json.dumps({"skip": f"open-file hard limit {hard} < {need}"}), flush=True)
        sys.exit(0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
PARTIAL = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"

async def main():
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(200)
    lives = []
    opened = 0
    all_open = asyncio.Event()
    began = time.monotonic()

    async def one(i):
        nonlocal opened
        s = socket.socket()
        s.setblocking(False)
        s.bind((f"127.0.0.{2 + i % nets}", 0))
        try:
            async with gate:
                await loop.sock_connect(s, ("127.0.0.1", port))
            start = time.monotonic()
            opened += 1
            if opened == count:
                all_open.set()
            try:
                await loop.sock_sendall(s, PARTIAL)
                while await loop.sock_recv(s, 4096):
                    pass
            except OSError:
                pass
            lives.append(time.monotonic() - start)
        finally:
            s.close()

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    await asyncio.wait_for(all_open.wait(), 30)
    print(json.dumps({"ready": opened, "seconds": time.monotonic() - began}), flush=True)
    await asyncio.wait(tasks, timeout=wait)
    print(json.dumps({"opened": opened, "closed": len(lives), "lives": sorted(lives)}), flush=True)

asyncio.run(main())
"""


@contextlib.contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """Set this process's soft open-file limit for the block (skip if not allowed)."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < soft:
        pytest.skip(f"the open-file hard limit {hard} is below the {soft} this test needs")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (ValueError, OSError) as exc:
        pytest.skip(f"cannot set the open-file limit to {soft}: {exc}")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


async def attacker(port: int, count: int, nets: int, wait: float) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ATTACKER,
        *map(str, (port, count, nets, wait)),
        stdout=asyncio.subprocess.PIPE,
        limit=2**22,
    )
    assert proc.stdout is not None
    return proc


async def read_json(proc: Any, timeout: float) -> dict[str, Any]:
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    assert line, "the attacker process ended without a report"
    report: dict[str, Any] = json.loads(line)
    if "skip" in report:
        pytest.skip(report["skip"])
    return report


@pytest.mark.parametrize(
    ("case", "extra", "fd_limit"),
    [
        # Default budgets, and the 1024 open files of the original attack: at most
        # 256 pending connections are held, the oldest of the heaviest address give
        # way; members' logins take a place and free it.
        ("bounded", "", 1024),
        # Budgets larger than the attack: every half-open request is held, and the
        # header deadline alone drops them all.
        ("deadline", "max_pending_sessions = 4096\nmax_pending_per_address = 4096\n", 4096),
    ],
    ids=["bounded", "deadline"],
)
def test_half_open_requests_do_not_stop_logins_and_are_dropped(
    tmp_path: Path, case: str, extra: str, fd_limit: int
) -> None:
    header_timeout = 4.0
    nets = 20  # 127.0.0.2 to 127.0.0.21, 100 connections each

    async def scenario() -> None:
        config = f"header_timeout = {header_timeout}\n{extra}"
        async with server(tmp_path, config) as (node, service, url):
            alice, _, _, _ = await registered(url, service, "alice")
            bob_client, bob, _, _ = await registered(url, service, "bob")
            await bob_client.close()
            proc = await attacker(service.port, HALF_OPEN, nets, header_timeout + 10)
            try:
                ready = await read_json(proc, 30)
                assert ready["ready"] == HALF_OPEN
                pending_at_ready = service.stats()["pending"]
                limit = service.config.max_pending_sessions
                assert pending_at_ready <= limit
                if case == "bounded":
                    assert pending_at_ready >= limit - 10  # the budget is full ...
                else:
                    assert pending_at_ready >= HALF_OPEN // 2  # ... or holds the attack

                # ... and members are served: the logged-in one, a returning one,
                # a new one, and the operator's control socket.
                started = time.monotonic()
                reply = await alice.request(pb.ClientFrame(list_channels=pb.ListChannels()))
                assert reply.WhichOneof("body") == "channel_list"
                again = await DirectoryClient.connect(url)
                assert (await again.login(bob)).you.display_name == "bob"
                carol, _, _, _ = await registered(url, service, "carol")
                control = await ControlClient.connect(node.settings.resolve("united.sock"))
                status = await control.call("status")
                await control.close()
                assert status
                served = time.monotonic() - started
                assert served < 3, f"members waited {served:.1f} s"
                assert service.stats()["pending"] <= limit

                report = await read_json(proc, header_timeout + 20)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            # Every half-open connection was closed by the server, none held past
            # the deadline (plus scheduling slack): refused on arrival (the budget
            # full of connections under a second old), given way to a newer one,
            # or timed out.
            lives = report["lives"]
            stats = service.stats()
            print(
                f"{case}: {HALF_OPEN} opened in {ready['seconds']:.1f} s, {pending_at_ready}"
                f" pending; members served in {served:.2f} s; closed after"
                f" {min(lives):.2f}-{max(lives):.2f} s; refused {stats['pending_refused']},"
                f" evicted {stats['pending_evicted']}, timed out {stats['pending_timed_out']}"
            )
            assert report["closed"] == HALF_OPEN, report["closed"]
            assert max(lives) < header_timeout + 2, max(lives)
            # Each was closed by the gate.
            closed_by_gate = (
                stats["pending_refused"] + stats["pending_evicted"] + stats["pending_timed_out"]
            )
            assert closed_by_gate == HALF_OPEN
            if case == "bounded":
                assert stats["pending_refused"] + stats["pending_evicted"] >= HALF_OPEN - limit
                assert stats["pending_timed_out"] > 0
            else:
                assert stats["pending_timed_out"] == HALF_OPEN
                assert min(lives) > header_timeout - 1, min(lives)
            assert service.stats()["pending"] == 0
            # Logged-in members were never disturbed.
            reply = await alice.request(pb.ClientFrame(list_channels=pb.ListChannels()))
            assert reply.WhichOneof("body") == "channel_list"
            for client in (alice, again, carol):
                await client.close()

    with open_file_limit(fd_limit):
        if len(os.listdir("/proc/self/fd")) > fd_limit - 400:
            pytest.skip("this process already holds too many open files")
        started = time.monotonic()
        asyncio.run(scenario())
        print(f"{case}: {time.monotonic() - started:.1f} s")


def test_request_deadline_is_absolute_and_idle_keep_alive_is_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path, "header_timeout = 1.0\n") as (_, service, _):
            loop = asyncio.get_running_loop()

            async def connect() -> socket.socket:
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", service.port))
                return s

            async def closed_after(s: socket.socket, started: float) -> float:
                with contextlib.suppress(OSError):
                    while await loop.sock_recv(s, 4096):
                        pass
                s.close()
                return loop.time() - started

            # A request dribbled one byte every 0.1 s still ends at the deadline.
            slow = await connect()
            started = loop.time()
            closed = asyncio.ensure_future(closed_after(slow, started))
            with contextlib.suppress(OSError):
                await loop.sock_sendall(slow, b"GET /ws HTTP/1.1\r\n")
                for byte in itertools.cycle(b"X-Pad: y\r\n"):
                    if closed.done() or loop.time() - started > 5:
                        break
                    await loop.sock_sendall(slow, bytes([byte]))
                    await asyncio.sleep(0.1)
            assert 0.9 < await asyncio.wait_for(closed, 5) < 2
            # A finished request (404) is answered; the idle connection then closes.
            idle = await connect()
            await loop.sock_sendall(idle, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(loop.sock_recv(idle, 4096), 5)
            assert answer.startswith(b"HTTP/1.1 404")
            assert await asyncio.wait_for(closed_after(idle, loop.time()), 5) < 2
            await asyncio.sleep(0.1)
            assert service.stats()["pending"] == 0

    asyncio.run(scenario())


def test_failed_logins_from_a_shared_address_do_not_lock_out_members(tmp_path: Path) -> None:
    """Everyone is on 127.0.0.1, as behind one NAT; default limits."""

    async def fail_logins(url: str, attempts: int, make_frame: Any) -> list[int]:
        """Fail ``attempts`` logins, reconnecting whenever the server ends a session."""
        codes: list[int] = []
        while len(codes) < attempts:
            client = await DirectoryClient.connect(url)
            try:
                while len(codes) < attempts and not client.closed.is_set():
                    challenge = await client._next_challenge()
                    await client.request(make_frame(challenge))
            except DirectoryError as exc:
                if exc.code:
                    codes.append(exc.code)
            except ConnectionError:
                pass
            finally:
                await client.close()
        return codes

    def unknown_key(challenge: pb.Challenge) -> pb.ClientFrame:
        stranger = Identity.generate()
        signed = protocol.auth_bytes(challenge.server_id, challenge.nonce, stranger.public_key)
        return pb.ClientFrame(
            auth=pb.AuthResponse(
                public_key=stranger.public_key,
                signature=stranger.sign(signed),
                nonce=challenge.nonce,
            )
        )

    def bad_invite(challenge: pb.Challenge) -> pb.ClientFrame:
        stranger = Identity.generate()
        signed = protocol.register_bytes(
            challenge.server_id, challenge.nonce, stranger.public_key, "x"
        )
        return pb.ClientFrame(
            register=pb.Register(
                invite_code="made-up",
                display_name="x",
                public_key=stranger.public_key,
                signature=stranger.sign(signed),
                nonce=challenge.nonce,
            )
        )

    async def scenario() -> None:
        async with server(tmp_path) as (_, service, url):
            members = {}
            for name in ("alice", "bob"):
                client, identity, _, _ = await registered(url, service, name)
                await client.close()
                members[name] = identity
            alice = members["alice"]
            forger = Identity.generate()

            def forged_for_alice(challenge: pb.Challenge) -> pb.ClientFrame:
                signed = protocol.auth_bytes(challenge.server_id, challenge.nonce, alice.public_key)
                return pb.ClientFrame(
                    auth=pb.AuthResponse(
                        public_key=alice.public_key,
                        signature=forger.sign(signed),
                        nonce=challenge.nonce,
                    )
                )

            started = time.monotonic()
            budget = service.config.max_failed_auth_per_minute  # 100
            codes = await fail_logins(url, budget // 2, unknown_key)
            codes += await fail_logins(url, budget, bad_invite)
            # The anonymous budget is spent: the rest is refused before any work.
            assert E.ERROR_CODE_RATE_LIMITED in codes
            assert codes.count(E.ERROR_CODE_NOT_A_MEMBER) == budget // 2
            # Thirty forged signatures for alice's key from the same address.
            forged = await fail_logins(url, 30, forged_for_alice)
            assert set(forged) == {E.ERROR_CODE_BAD_SIGNATURE}
            assert service.limits.member_failures.count(("127.0.0.1", alice.public_key)) == 30

            # Alice and bob, same address, log in at once.
            for name in ("alice", "bob"):
                client = await DirectoryClient.connect(url)
                welcome = await client.login(members[name])
                assert welcome.you.display_name == name
                await client.close()
            # Past the per-key limit a forged attempt ends its session at once.
            client = await DirectoryClient.connect(url)
            challenge = await client._next_challenge()
            with pytest.raises(DirectoryError):
                await client.request(forged_for_alice(challenge))
            await asyncio.wait_for(client.closed.wait(), 5)
            await client.close()
            # New registrations from this address wait for the budget's minute.
            code = (await service.create_invite())["code"]
            client = await DirectoryClient.connect(url)
            with pytest.raises(DirectoryError) as info:
                await client.register(Identity.generate(), "late", code)
            assert info.value.code == E.ERROR_CODE_RATE_LIMITED
            await client.close()
            # Alice still logs in after all of it.
            client = await DirectoryClient.connect(url)
            assert (await client.login(alice)).you.display_name == "alice"
            await client.close()
            print(f"{len(codes) + len(forged)} failed logins in {time.monotonic() - started:.1f} s")

    asyncio.run(scenario())


def test_logged_in_sessions_are_capped_per_member_and_address(tmp_path: Path) -> None:
    async def scenario() -> None:
        extra = "max_sessions_per_member = 2\nmax_sessions_per_address = 3\n"
        async with server(tmp_path, extra) as (_, service, url):
            first, alice, _, _ = await registered(url, service, "alice")
            second = await DirectoryClient.connect(url)
            await second.login(alice)
            third = await DirectoryClient.connect(url)
            await third.login(alice)
            # A third session of alice's: the oldest is closed, the newer stay.
            await asyncio.wait_for(first.closed.wait(), 5)
            assert not second.closed.is_set() and not third.closed.is_set()
            await first.close()
            bob_client, _, _, _ = await registered(url, service, "bob")
            # Three members' sessions from this address: a fourth login is refused.
            code = (await service.create_invite())["code"]
            late = await DirectoryClient.connect(url)
            with pytest.raises(DirectoryError) as info:
                await late.register(Identity.generate(), "carol", code)
            assert info.value.code == E.ERROR_CODE_RATE_LIMITED
            await late.close()
            await bob_client.close()
            await asyncio.sleep(0.2)
            # A session that ends frees its place.
            carol = await DirectoryClient.connect(url)
            assert (await carol.register(Identity.generate(), "carol", code)).you.member_id
            for client in (second, third, carol):
                await client.close()

    asyncio.run(scenario())


def test_stalled_websocket_sessions_hold_no_more_than_the_budget(tmp_path: Path) -> None:
    """Upgraded but silent sessions count as pending too; a member still gets in."""

    async def scenario() -> None:
        extra = "max_pending_sessions = 4\nmax_pending_per_address = 4\n"
        async with server(tmp_path, extra) as (_, service, url):
            held = [await raw_session(url) for _ in range(4)]
            assert service.stats()["pending"] == 4
            await asyncio.sleep(service.endpoint.gate.min_age)  # stalled, not just opened
            client, _, _, _ = await registered(url, service, "alice")
            await replies_until_close(held[0][1])  # the oldest gave way
            assert service.stats()["pending"] == 3
            await client.close()
            for http, _, _ in held:
                await http.close()

    asyncio.run(scenario())


def test_a_budget_full_of_young_connections_refuses_the_newcomer(tmp_path: Path) -> None:
    """Three addresses of one /24, one connection each: as heavy, so the third is
    closed as it arrives (never reaching aiohttp) until the others are a second old."""

    async def scenario() -> None:
        async with server(tmp_path, "max_pending_sessions = 2\n") as (_, service, _):
            loop = asyncio.get_running_loop()

            async def connect(source: str) -> socket.socket:
                s = socket.socket()
                s.setblocking(False)
                s.bind((source, 0))
                await loop.sock_connect(s, ("127.0.0.1", service.port))
                return s

            async def until(key: str, value: int) -> None:
                async with asyncio.timeout(5):
                    while service.stats()[key] != value:
                        await asyncio.sleep(0.01)

            async def closed(s: socket.socket) -> bool:
                with contextlib.suppress(OSError):
                    await loop.sock_sendall(s, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
                    return not await asyncio.wait_for(loop.sock_recv(s, 4096), 5)
                return True

            held = [await connect("127.0.0.2"), await connect("127.0.0.3")]
            await until("pending", 2)
            refused = await connect("127.0.0.4")
            await until("pending_refused", 1)
            assert await closed(refused)
            await asyncio.sleep(service.endpoint.gate.min_age)
            late = await connect("127.0.0.4")  # now the oldest goes
            await until("pending_evicted", 1)
            assert await closed(held[0])
            assert service.stats()["pending"] == 2 and service.stats()["pending_refused"] == 1
            for s in (*held, refused, late):
                s.close()

    asyncio.run(scenario())


class Transport:
    """Stands in for an asyncio transport in the gate's unit tests."""

    aborted = False

    def abort(self) -> None:
        self.aborted = True


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def admit(gate: PendingGate, host: str) -> Transport:
    transport = Transport()
    gate.admit(transport, host)  # type: ignore[arg-type]
    return transport


def test_pending_gate_is_fair_between_addresses() -> None:
    clock = Clock()
    gate = PendingGate(limit=6, per_address=4, clock=clock)
    a = [admit(gate, "a") for _ in range(5)]
    # Its own share: its oldest goes, however young (the same address cannot be
    # told apart from itself).
    assert a[0].aborted and gate.count("a") == 4
    clock.now = 5.0
    b = [admit(gate, "b") for _ in range(3)]
    # Full at 6: b's last newcomer pushed out a's oldest, never b's own.
    assert [t.aborted for t in a] == [True, True, False, False, False]
    assert gate.count("a") == 3 and gate.count("b") == 3 and len(gate) == 6
    admit(gate, "c")  # a and b as heavy: the one holding most longest, a, gives way
    assert a[2].aborted and gate.count("a") == 2 and gate.count("c") == 1
    assert not any(t.aborted for t in b)
    gate.release(b[0])  # type: ignore[arg-type]  # logged in: no longer counted
    assert len(gate) == 5 and gate.evicted == 3 and gate.refused == 0


@pytest.mark.parametrize(
    "attack",
    [
        # The review's case: one connection on each /64 of 2001:db8:0:0::/56.
        [f"2001:db8:0:{i:x}::1" for i in range(256)],
        # The same with IPv4: every address of 203.0.113.0/24.
        [f"203.0.113.{i}" for i in range(256)],
    ],
    ids=["ipv6-56", "ipv4-24"],
)
def test_an_attacker_spread_over_one_network_pushes_out_only_itself(attack: list[str]) -> None:
    """256 pending connections from 256 addresses of one network, renewed 256 at a
    time every 50 ms (faster than a login's round trip): honest logins from other
    networks get in at once and are never pushed out, however long they take."""
    assert len({prefixes(h)[-2] for h in attack}) == 1
    assert len({address_key(h) for h in attack}) == 256
    clock = Clock()
    gate = PendingGate(limit=256, per_address=32, clock=clock)
    for host in attack:
        admit(gate, host)
    logins: list[Transport] = []
    bursts = 30  # 1.5 s of it
    for burst in range(bursts):
        clock.now = burst * 0.05
        honest = [
            f"2001:db8:5:{burst:x}::7",  # another /48
            f"2001:db8:0:1{burst:02x}::7",  # another /56 of the attacker's /48
            f"198.51.{burst}.7",  # IPv4, a /24 each
            f"192.0.2.{burst}",  # IPv4, one /24
        ]
        logins += [admit(gate, host) for host in honest]
        for host in attack:
            admit(gate, host)  # all under a second old, and they still go
        assert not any(t.aborted for t in logins), burst
        assert len(gate) == 256
    # The attack gave way to itself or was refused.
    assert gate.evicted + gate.refused == bursts * (256 + 4)
    assert sum(gate.count(h) for h in attack) == 256 - len(logins)


def test_a_flood_from_more_networks_than_the_budget_spares_young_and_answering_logins() -> None:
    """Bots in distinct /24s, one connection each: every network is as heavy, so a
    connection goes only once it is min_age old and not logging in; otherwise the
    newcomer is refused."""
    clock = Clock()
    gate = PendingGate(limit=8, per_address=32, clock=clock)
    bots = (f"10.{i // 256}.{i % 256}.1" for i in itertools.count())
    first = [admit(gate, next(bots)) for _ in range(8)]
    clock.now = 0.5
    early = admit(gate, "198.51.100.7")  # all young and as heavy: refused
    assert early.aborted and gate.refused == 1 and len(gate) == 8
    clock.now = 1.0
    login = admit(gate, "198.51.100.7")  # the bots are a second old: the oldest goes
    assert not login.aborted and first[0].aborted
    flood = [admit(gate, next(bots)) for _ in range(50)]
    assert all(t.aborted for t in first)  # the other seven old ones went ...
    assert sum(t.aborted for t in flood) == 50 - 7  # ... then newcomers were refused
    assert not login.aborted and gate.refused == 1 + 43
    clock.now = 5.0
    gate.answering(login)  # type: ignore[arg-type]  # its AuthResponse is being checked
    flood = [admit(gate, next(bots)) for _ in range(20)]
    assert not login.aborted  # old, but answering: skipped; the seven old bots went
    assert sum(not t.aborted for t in flood) == 7 and len(gate) == 8
    gate.answering(login, False)  # type: ignore[arg-type]  # its login failed
    clock.now = 10.0
    admit(gate, next(bots))
    assert login.aborted  # old, not logging in, as heavy: first in line


def test_pending_gate_bookkeeping_under_random_traffic() -> None:
    """Counts, the heaviest-network index and the victim rules, against a brute
    force model, over random admissions, releases and logins."""
    rng = random.Random(9)
    clock = Clock()
    gate = PendingGate(limit=24, per_address=4, clock=clock)
    hosts = [
        *(f"2001:db8:{a}:{b:x}::{c}" for a in (1, 2) for b in (0, 1, 0x100) for c in (1, 2)),
        *(f"192.0.{a}.{b}" for a in (2, 3) for b in (1, 2, 3)),
        "::ffff:192.0.2.1",
        "?",
    ]
    paths = {h: prefixes(h) for h in hosts}
    live: dict[Transport, str] = {}
    since: dict[Transport, float] = {}
    answering: set[Transport] = set()

    def weight(prefix: tuple[str, ...]) -> int:
        return sum(paths[h][: len(prefix)] == prefix for h in live.values())

    for step in range(2000):
        clock.now += rng.random() * 0.2
        roll = rng.random()
        if roll < 0.6:
            host = rng.choice(hosts)
            path = paths[host]
            before = dict(live)
            weights = {
                t: [weight(paths[h][: k + 1]) for k in range(len(paths[h]))]
                for t, h in live.items()
            }
            mine = [weight(path[: k + 1]) + 1 for k in range(len(path))]
            new = Transport()
            admitted = gate.admit(new, host)  # type: ignore[arg-type]
            assert admitted != new.aborted
            gone = [t for t in before if t.aborted]
            assert len(gone) <= 1 and not (gone and not admitted)
            if admitted:
                live[new], since[new] = host, clock.now
            for victim in gone:
                assert victim not in answering, step
                victim_path = paths[live.pop(victim)]
                if victim_path != path:  # another address: a network at least as heavy
                    k = next(
                        i for i, (x, y) in enumerate(zip(victim_path, path, strict=False)) if x != y
                    )
                    assert weights[victim][k] >= mine[k], step
                    if weights[victim][k] == mine[k]:
                        assert clock.now - since[victim] >= gate.min_age, step
        elif roll < 0.85 and live:
            transport = rng.choice(list(live))
            gate.release(transport)  # type: ignore[arg-type]
            del live[transport]
            answering.discard(transport)
        elif live:
            transport = rng.choice(list(live))
            on = transport not in answering
            gate.answering(transport, on)  # type: ignore[arg-type]
            (answering.add if on else answering.discard)(transport)
        assert len(gate) == len(live) <= 24
        for host in hosts:
            count = sum(paths[h][-1] == paths[host][-1] for h in live.values())
            assert gate.count(host) == count <= 4
        check_group(gate._root)
    for transport in list(live):
        gate.release(transport)  # type: ignore[arg-type]
    assert gate._root.count == 0 and not gate._root.children and not gate._root.buckets
    assert gate.evicted > 100 and gate.refused > 10


def check_group(group: Any) -> None:
    if not group.children:
        assert group.count == len(group.members)
        return
    assert group.count == sum(c.count for c in group.children.values())
    assert group.top == max(c.count for c in group.children.values())
    by_count = {n: set(b) for n, b in group.buckets.items()}
    assert all(by_count.values())
    assert by_count == {
        n: {c for c in group.children.values() if c.count == n}
        for n in {c.count for c in group.children.values()}
    }
    for child in group.children.values():
        check_group(child)


def test_pending_gate_deadline_drops_requests_that_never_arrive() -> None:
    async def scenario() -> None:
        gate = PendingGate(limit=10, per_address=10, header_timeout=0.05)
        stalled, arrived, logged_in = Transport(), Transport(), Transport()
        for t in (stalled, arrived, logged_in):
            gate.admit(t, "a")  # type: ignore[arg-type]
        gate.request_arrived(arrived)  # type: ignore[arg-type]
        gate.release(logged_in)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        assert stalled.aborted and not arrived.aborted and not logged_in.aborted
        assert gate.timed_out == 1 and len(gate) == 1  # arrived: pending until login

    asyncio.run(scenario())


def test_address_key_groups_ipv6_by_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("?") == "?"
    assert prefixes("192.0.2.7") == ("192.0.2.0/24", "192.0.2.7")
    assert prefixes("::ffff:192.0.2.7") == ("192.0.2.0/24", "192.0.2.7")
    assert prefixes("2001:db8:1:2ff::1") == (
        "2001:db8:1::/48",
        "2001:db8:1:200::/56",
        "2001:db8:1:2ff::/64",
    )
    assert prefixes("?") == ("?",)


def test_an_announced_reachability_is_one_of_the_known_words() -> None:
    """What a member says of its reachability is shown to others: only known words."""
    from united_directory.protocol import clean_reachability

    assert clean_reachability("private", "symmetric") == ("private", "symmetric")
    assert clean_reachability("public", "none") == ("public", "none")
    for reachability, nat in [("", ""), ("root", "x" * 10_000), ("PUBLIC", "\x00"), ("é", "é")]:
        assert clean_reachability(reachability, nat) == ("unknown", "unknown")
