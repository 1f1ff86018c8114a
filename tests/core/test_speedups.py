"""The py-libp2p speed-ups (united_core/p2p/speedups.py), each on real hosts on loopback.

Each test compares a host with the speed-up on against one with it off and
fails when it stops taking effect; the first shows the wire is unchanged (a
host with every speed-up and one with none exchange messages both ways).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from united_core import envelope
from united_core.identity import Identity
from united_core.p2p import speedups
from united_core.p2p.events import MessageReceived
from united_core.p2p.options import HostOptions
from united_core.p2p.runtime import P2PRuntime
from united_core.p2p.speedups import (
    ALL_SPEEDUPS,
    BATCHED_WRITES,
    BUFFERED_READS,
    BUFFERED_TCP,
    INLINE_RECEIVE,
    LEAN_CHECKS,
    SENDER_RECORD,
    YAMUX_WINDOW,
)

TOPIC = "united/test/general"
NONE: tuple[str, ...] = ()


def without(name: str) -> tuple[str, ...]:
    return tuple(s for s in ALL_SPEEDUPS if s != name)


@contextlib.asynccontextmanager
async def pair(
    a_on: tuple[str, ...], b_on: tuple[str, ...]
) -> AsyncIterator[tuple[P2PRuntime, P2PRuntime]]:
    """Two connected hosts subscribed to TOPIC, each in the other's mesh."""
    a, b = (
        P2PRuntime(
            Identity.generate(),
            HostOptions(listen_addrs=("/ip4/127.0.0.1/tcp/0",), speedups=on),
        )
        for on in (a_on, b_on)
    )
    await a.start()
    await b.start()
    try:
        for rt in (a, b):
            await rt.subscribe(TOPIC)
        await b.connect(f"{a.listen_addrs[0]}/p2p/{a.peer_id}")
        for x, y in ((a, b), (b, a)):
            await until(lambda x=x, y=y: mesh_has(x, y))
        yield a, b
    finally:
        await b.stop()
        await a.stop()


async def mesh_has(rt: P2PRuntime, other: P2PRuntime) -> bool:
    return other.peer_id in (await rt.snapshot())["mesh"].get(TOPIC, [])


async def until(check: Callable[[], Any], timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


def seal(identity: Identity, text: str) -> bytes:
    ts = int(time.time() * 1000)
    return envelope.seal(
        identity, topic=TOPIC, payload=text.encode(), sequence_hint=ts, timestamp_ms=ts
    ).wire


async def exchange(sender: P2PRuntime, receiver: P2PRuntime, n: int) -> None:
    """``sender`` publishes n messages; all reach ``receiver``."""
    for i in range(n):
        await sender.publish(TOPIC, seal(sender.identity, f"m{i}"))
    got = 0
    async with asyncio.timeout(20):
        while got < n:
            if isinstance(await receiver.events(), MessageReceived):
                got += 1


async def on_trio(rt: P2PRuntime, fn: Callable[[], Any]) -> Any:
    async def run() -> Any:
        return fn()

    return await rt.call(run)


def record_writes(rt: P2PRuntime, peer: str) -> list[bytes]:
    """Bytes ``rt``'s pubsub writes to ``peer`` from now on (its outbound stream)."""
    stream = rt.host_context.pubsub.peers[ID.from_base58(peer)]
    writes: list[bytes] = []
    write = stream.write

    async def recording(data: bytes) -> None:
        writes.append(bytes(data))
        await write(data)

    stream.write = recording  # type: ignore[method-assign]
    return writes


def rpcs(writes: list[bytes]) -> list[rpc_pb2.RPC]:
    data, out = b"".join(writes), []
    while data:
        length, shift, i = 0, 0, 0
        while True:
            length |= (data[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not data[i - 1] & 0x80:
                break
        rpc = rpc_pb2.RPC()
        rpc.ParseFromString(data[i : i + length])
        out.append(rpc)
        data = data[i + length :]
    return out


def yamux_streams(rt: P2PRuntime, peer: str) -> list[Any]:
    """``rt``'s Yamux streams with ``peer`` (trio thread)."""
    conns = rt.host_context.host.get_network().get_connections(ID.from_base58(peer))
    return [s for c in conns for s in list(c.muxed_conn.streams.values())]


def count_reads(rt: P2PRuntime, peer: str) -> list[int]:
    """Reads ``rt`` makes on its streams from ``peer`` from now on (one counter)."""
    count = [0]
    for stream in yamux_streams(rt, peer):
        read = stream.read

        async def counting(n: int | None = -1, read: Any = read) -> bytes:
            count[0] += 1
            return bytes(await read(n))

        stream.read = counting
    return count


def window_updates(stream: Any) -> int:
    """WINDOW_UPDATEs a Yamux stream sent, by py-libp2p's own counters."""
    return int(
        stream._window_update_bytes_read_only
        + stream._window_update_partial_slack
        + stream._window_update_full_grow
        + stream._window_update_pending_flush
    )


def burst(rt: P2PRuntime, peer: str, n: int) -> None:
    """Queue n harmless RPCs (our subscription again) for ``peer`` at once."""
    queue = rt.host_context.pubsub.peer_queues[ID.from_base58(peer)]
    for _ in range(n):
        sub = rpc_pb2.RPC.SubOpts(subscribe=True, topicid=TOPIC)
        assert queue.push(rpc_pb2.RPC(subscriptions=[sub]))


# ---- the wire is unchanged ---------------------------------------------------------------


@pytest.mark.parametrize(("a_on", "b_on"), [(ALL_SPEEDUPS, NONE), (NONE, ALL_SPEEDUPS)])
def test_hosts_with_and_without_speedups_exchange_messages_both_ways(
    a_on: tuple[str, ...], b_on: tuple[str, ...]
) -> None:
    async def scenario() -> None:
        async with pair(a_on, b_on) as (a, b):
            await exchange(a, b, 30)
            await exchange(b, a, 30)

    asyncio.run(scenario())


# ---- one test per speed-up -----------------------------------------------------------------


@pytest.mark.parametrize("on", [True, False])
def test_sender_record_no_record_is_sent(on: bool) -> None:
    async def scenario() -> None:
        async with pair(ALL_SPEEDUPS if on else without(SENDER_RECORD), NONE) as (a, b):
            writes = await on_trio(a, lambda: record_writes(a, b.peer_id))
            await exchange(a, b, 5)
            sent = [r for r in rpcs(writes) if r.publish]
            assert len(sent) == 5
            with_record = [r for r in sent if r.HasField("senderRecord")]
            assert len(with_record) == (0 if on else 5)

    asyncio.run(scenario())


@pytest.mark.parametrize("on", [True, False])
def test_sender_record_received_records_are_not_verified(
    on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[ID] = []
    consume = speedups.maybe_consume_signed_record

    def counting(rpc: rpc_pb2.RPC, host: Any, peer_id: ID) -> bool:
        checked.append(peer_id)
        return bool(consume(rpc, host, peer_id))

    monkeypatch.setattr(speedups, "maybe_consume_signed_record", counting)

    async def scenario() -> None:
        async with pair(NONE, ALL_SPEEDUPS if on else without(SENDER_RECORD)) as (a, b):
            before = len(checked)
            await exchange(a, b, 5)
            assert (len(checked) - before == 0) if on else (len(checked) - before >= 5)

    asyncio.run(scenario())


@pytest.mark.parametrize("on", [True, False])
def test_batched_writes_one_write_carries_what_was_queued(on: bool) -> None:
    async def scenario() -> None:
        async with pair(ALL_SPEEDUPS if on else without(BATCHED_WRITES), NONE) as (a, b):

            def queue_burst() -> list[bytes]:
                writes = record_writes(a, b.peer_id)
                burst(a, b.peer_id, 30)
                return writes

            writes = await on_trio(a, queue_burst)
            await until(lambda: _true(len(rpcs(writes)) >= 30))
            print(f"30 queued RPCs took {len(writes)} writes")
            assert len(writes) <= 2 if on else len(writes) >= 30

    asyncio.run(scenario())


@pytest.mark.parametrize("on", [True, False])
def test_buffered_reads_a_read_yields_every_rpc_that_arrived(on: bool) -> None:
    async def scenario() -> None:
        async with pair(ALL_SPEEDUPS, ALL_SPEEDUPS if on else without(BUFFERED_READS)) as (a, b):
            reads = await on_trio(b, lambda: count_reads(b, a.peer_id))
            await on_trio(a, lambda: burst(a, b.peer_id, 30))
            await exchange(a, b, 1)  # after the burst, in order
            print(f"31 RPCs took {reads[0]} reads")
            assert reads[0] <= 10 if on else reads[0] >= 60  # off: a read per varint byte

    asyncio.run(scenario())


@pytest.mark.parametrize("on", [True, False])
def test_yamux_window_no_window_update_per_read(on: bool) -> None:
    async def scenario() -> None:
        # Unbuffered reads (a read per varint byte) show the rule plainly.
        b_on = tuple(s for s in without(BUFFERED_READS) if on or s != YAMUX_WINDOW)
        async with pair(ALL_SPEEDUPS, b_on) as (a, b):
            await exchange(a, b, 30)
            updates = await on_trio(
                b,
                lambda: sum(window_updates(s) for s in yamux_streams(b, a.peer_id)),
            )
            print(f"30 messages: {updates} window updates")
            assert updates == 0 if on else updates >= 60

    asyncio.run(scenario())


@pytest.mark.parametrize("on", [True, False])
def test_inline_receive_no_task_per_message(on: bool) -> None:
    async def scenario() -> None:
        async with pair(NONE, ALL_SPEEDUPS if on else without(INLINE_RECEIVE)) as (a, b):
            spawned: list[str] = []

            def count_tasks() -> None:
                manager = b.host_context.pubsub.manager
                run_task = manager.run_task

                def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
                    spawned.append(getattr(fn, "__name__", ""))
                    return run_task(fn, *args, **kwargs)

                manager.run_task = counting

            await on_trio(b, count_tasks)
            await exchange(a, b, 20)
            assert spawned.count("push_msg") == (0 if on else 20)

    asyncio.run(scenario())


@pytest.mark.parametrize("on", [True, False])
def test_lean_checks_own_messages_unverified_and_one_key_decode_per_sender(on: bool) -> None:
    async def scenario() -> None:
        both = ALL_SPEEDUPS if on else without(LEAN_CHECKS)
        async with pair(both, both) as (a, b):
            await exchange(a, b, 20)
            ours = a.host_context.pubsub.pubkeys
            theirs = b.host_context.pubsub.pubkeys
            if on:
                assert ours.verified == 0  # a's own 20 publishes: not verified again
                assert (theirs.verified, theirs.decoded) == (20, 1)
            else:
                assert (ours.verified, theirs.verified, theirs.decoded) == (0, 0, 0)

    asyncio.run(scenario())


# ---- version check, fallback, bad input ----------------------------------------------------


def test_speedups_name_the_py_libp2p_they_were_not_checked_against(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import libp2p

    monkeypatch.setattr(libp2p, "__version__", "0.9.0")
    why = speedups.mismatch()
    assert why is not None and "0.9.0" in why and "speed-ups" in why


def test_a_runtime_runs_without_speedups_when_they_cannot_be_installed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(speedups, "install", lambda: "py-libp2p 0.9.0 is not a version …")

    async def scenario() -> None:
        rt = P2PRuntime(Identity.generate(), HostOptions(listen_addrs=("/ip4/127.0.0.1/tcp/0",)))
        await rt.start()
        try:
            snap = await rt.snapshot()
            assert snap["speedups"] == [] and "0.9.0" in snap["speedups_refused"]
        finally:
            await rt.stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert "running without speed-ups" in caplog.text


@pytest.mark.parametrize(
    "garbage", [b"\xff" * 11, b"\x05\xff\xff\xff\xff\xff", b"\xff\xff\xff\x7f" + b"x" * 10]
)
def test_a_malformed_or_oversized_rpc_resets_only_that_stream(garbage: bytes) -> None:
    """A bad varint, an RPC that does not parse, a length over the limit: the stream
    is reset, the node keeps running and still delivers."""

    async def scenario() -> None:
        async with pair(ALL_SPEEDUPS, ALL_SPEEDUPS) as (a, b):

            async def send_garbage() -> bool:
                from libp2p.custom_types import TProtocol

                pid = ID.from_base58(b.peer_id)
                stream = await a.host_context.host.new_stream(pid, [TProtocol("/meshsub/1.1.0")])
                await stream.write(garbage)
                import trio

                with trio.move_on_after(5):
                    try:
                        await stream.read(1)
                    except Exception:
                        return True  # reset by b
                return False

            assert await a.call(send_garbage)
            assert (await b.snapshot())["peer_id"] == b.peer_id
            c = P2PRuntime(Identity.generate(), HostOptions(listen_addrs=("/ip4/127.0.0.1/tcp/0",)))
            await c.start()
            try:
                await c.subscribe(TOPIC)
                await c.connect(f"{b.listen_addrs[0]}/p2p/{b.peer_id}")
                await until(lambda: mesh_has(c, b))
                await exchange(c, b, 3)
            finally:
                await c.stop()

    asyncio.run(scenario())


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("on", [True, False])
def test_buffered_tcp_one_socket_read_per_noise_message(
    on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a chat's pace (one frame at a time), a Noise message was two socket reads
    (its 2-byte length, then its body); buffered, it is one."""
    import threading

    import trio

    reader: list[int] = []
    calls = [0]
    receive_some = trio.SocketStream.receive_some

    async def counting(self: trio.SocketStream, max_bytes: int | None = None) -> bytes:
        if reader and threading.get_ident() == reader[0]:
            calls[0] += 1
        return bytes(await receive_some(self, max_bytes))

    monkeypatch.setattr(trio.SocketStream, "receive_some", counting)

    async def scenario() -> None:
        both = ALL_SPEEDUPS if on else without(BUFFERED_TCP)
        async with pair(both, both) as (a, b):
            reader.append(await on_trio(b, threading.get_ident))
            await asyncio.sleep(0.2)
            before = calls[0]
            for k in range(30):  # one at a time: each arrives before the next is sent
                await a.publish(TOPIC, seal(a.identity, f"one-{k}"))
                async with asyncio.timeout(10):
                    while not isinstance(await b.events(), MessageReceived):
                        pass
            reads = calls[0] - before
            print(f"30 messages, one at a time: {reads} socket reads by the receiver")
            assert reads <= 45 if on else reads >= 60

    asyncio.run(scenario())
