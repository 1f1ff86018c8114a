"""The P2P runtime with real libp2p hosts on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import multiaddr
import pytest
import trio
import trio.lowlevel

from united_core import envelope
from united_core.acceptance import Acceptor, MessageRefused, Origin, Reason, Verdict
from united_core.identity import Identity
from united_core.p2p.events import MessageReceived, PeerConnected
from united_core.p2p.options import HostOptions
from united_core.p2p.pubsub import CountingRpcQueue
from united_core.p2p.runtime import P2PRuntime, RuntimeStopped

TOPIC = "united/test/3d5b1f84-0d1e-4a49-8f59-2d7bbf0ef5a7"
# Tests listen on loopback (the default, 0.0.0.0, is for nodes that peers elsewhere dial).
LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)


@contextlib.asynccontextmanager
async def runtime(**kwargs: Any) -> AsyncIterator[P2PRuntime]:
    rt = P2PRuntime(Identity.generate(), HostOptions(listen_addrs=LOOPBACK), **kwargs)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def next_event(rt: P2PRuntime, kind: type, timeout: float = 5) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            event = await rt.events()
            if isinstance(event, kind):
                return event


def port_of(addr: str) -> int:
    return int(multiaddr.Multiaddr(addr).value_for_protocol("tcp"))


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class TrioSideError(Exception):
    pass


def test_trio_exception_reaches_the_asyncio_caller() -> None:
    async def scenario() -> None:
        async with runtime() as rt:

            async def fails() -> None:
                await trio.lowlevel.checkpoint()
                raise TrioSideError("raised in the trio thread")

            with pytest.raises(TrioSideError, match="raised in the trio thread"):
                await rt.call(fails)

            async def where() -> str:
                return threading.current_thread().name

            assert (await rt.call(where)).startswith("united-p2p-")

    asyncio.run(scenario())


def test_calls_pending_at_stop_and_after_stop_fail_cleanly() -> None:
    async def scenario() -> None:
        rt = P2PRuntime(Identity.generate(), HostOptions(listen_addrs=LOOPBACK))
        with pytest.raises(RuntimeStopped):
            await rt.call(trio.sleep, 0)
        await rt.start()
        pending = asyncio.create_task(rt.call(trio.sleep, 60))
        await asyncio.sleep(0.1)
        await rt.stop()
        with pytest.raises(RuntimeStopped):
            await pending
        with pytest.raises(RuntimeStopped):
            await rt.call(trio.sleep, 0)
        await rt.stop()  # idempotent

    asyncio.run(scenario())


def test_cancelling_the_caller_cancels_the_trio_task() -> None:
    async def scenario() -> None:
        async with runtime() as rt:
            state = {"cancelled": False}

            async def long() -> None:
                try:
                    await trio.sleep(60)
                except trio.Cancelled:
                    state["cancelled"] = True
                    raise

            task = asyncio.create_task(rt.call(long))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.1)
            assert state["cancelled"]

    asyncio.run(scenario())


def test_stop_leaves_no_threads_and_no_listener(no_thread_leaks: None) -> None:
    async def scenario() -> None:
        rt = P2PRuntime(Identity.generate(), HostOptions(listen_addrs=LOOPBACK))
        await rt.start()
        port = port_of(rt.listen_addrs[0])
        assert accepts(port)
        names = {t.name for t in threading.enumerate()}
        assert any(n.startswith("united-p2p-") for n in names)
        await rt.stop()
        assert not accepts(port), "the TCP listener survived stop()"

    asyncio.run(scenario())


def test_host_is_built_with_the_design_settings() -> None:
    """Noise only, one connection per peer, gossipsub v1.1 with our parameters."""

    async def scenario() -> None:
        async with runtime() as a, runtime() as b:
            await a.subscribe(TOPIC)
            await b.subscribe(TOPIC)
            await b.connect(a.listen_addrs[0])

            async def inspect_host() -> dict[str, Any]:
                ctx = a.host_context
                network = ctx.host.get_network()
                await ctx.pubsub.wait_for_peer(ID_of(b), timeout=5)
                return {
                    "security": sorted(network.upgrader.security_multistream.transports),
                    "per_peer": network.connection_config.max_connections_per_peer,
                    "protocol": str(ctx.gossipsub.peer_protocol.get(ID_of(b))),
                    "heartbeat": ctx.gossipsub.heartbeat_interval,
                    "spam": ctx.gossipsub.spam_protection_enabled,
                    "eclipse": ctx.gossipsub.eclipse_protection_enabled,
                    "adaptive": ctx.gossipsub.adaptive_gossip_enabled,
                    "degree": (
                        ctx.gossipsub.degree,
                        ctx.gossipsub.degree_low,
                        ctx.gossipsub.degree_high,
                    ),
                }

            facts = await a.call(inspect_host)
            assert a.host_context.host.get_network().auto_connector._started is False
            assert facts["security"] == ["/noise"]
            assert facts["per_peer"] == 1
            assert facts["protocol"] == "/meshsub/1.1.0"
            assert facts["heartbeat"] == 1.0
            assert (facts["spam"], facts["eclipse"], facts["adaptive"]) == (False, False, False)
            assert facts["degree"] == (4, 3, 6)

    asyncio.run(scenario())


def ID_of(rt: P2PRuntime) -> Any:
    from libp2p.peer.id import ID

    return ID.from_base58(rt.peer_id)


def test_plaintext_only_dialer_is_refused() -> None:
    """A dialer offering only /plaintext/2.0.0 cannot connect (it could claim any PeerId)."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    def dial_with_plaintext(addr: str) -> str:
        async def main() -> str:
            kp = create_new_key_pair()
            host = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
            async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                try:
                    with trio.fail_after(10):
                        await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
                    return "connected"
                except Exception as exc:
                    return f"refused: {type(exc).__name__}"
                finally:
                    await host.close()

        return trio.run(main)

    async def scenario() -> None:
        async with runtime() as rt:
            outcome = await asyncio.to_thread(dial_with_plaintext, rt.listen_addrs[0])
            assert outcome.startswith("refused"), outcome
            assert await rt.peers() == []

    asyncio.run(scenario())


def test_gate_refuses_inside_the_handshake_and_the_dialer_sees_it() -> None:
    calls: list[tuple[str, str]] = []

    def gate(peer_id: str, direction: str) -> bool:
        calls.append((peer_id, direction))
        return False

    async def scenario() -> None:
        async with runtime(gate=gate) as a, runtime() as b:
            with pytest.raises(Exception) as info:
                await b.connect(a.listen_addrs[0])
            assert "connect" in str(info.value).lower() or info.type.__name__.endswith("Error")
            assert (b.peer_id, "inbound") in calls
            assert await a.peers() == [] and await b.peers() == []

    asyncio.run(scenario())


def test_publish_subscribe_and_peer_events() -> None:
    async def scenario() -> None:
        async with runtime() as a, runtime() as b:
            await a.subscribe(TOPIC)
            await b.subscribe(TOPIC)
            await b.connect(a.listen_addrs[0])
            connected = await next_event(a, PeerConnected)
            assert connected.peer_id == b.peer_id and connected.direction == "inbound"
            await asyncio.sleep(1.5)  # a heartbeat forms the mesh
            sent = [
                envelope.seal(b.identity, topic=TOPIC, payload=f"m{i}".encode(), sequence_hint=i)
                for i in range(20)
            ]
            for message in sent:
                await b.publish(TOPIC, message.wire)
            got = [(await next_event(a, MessageReceived)).message for _ in sent]
            assert [m.id for m in got] == [m.id for m in sent]
            assert a.counters.delivered == 20 and b.counters.published == 20

            # Our own publishes come back to us too (the sender's cache sees them).
            own = await next_event(b, MessageReceived)
            assert own.from_peer == b.peer_id

    asyncio.run(scenario())


def test_publish_rejects_a_bad_envelope_before_sending() -> None:
    async def scenario() -> None:
        async with runtime() as a:
            with pytest.raises(MessageRefused) as info:
                await a.publish(TOPIC, b"not an envelope")
            assert info.value.judgement.reason is Reason.MALFORMED
            other = envelope.seal(a.identity, topic=TOPIC + "x", payload=b"", sequence_hint=1)
            with pytest.raises(MessageRefused) as info:
                await a.publish(TOPIC, other.wire)
            assert info.value.judgement.reason is Reason.WRONG_TOPIC
            assert a.counters.published == 0

    asyncio.run(scenario())


def test_receiver_rejects_invalid_envelopes_and_policy_verdicts() -> None:
    def policy(message: envelope.SignedMessage, origin: Origin, from_peer: str) -> list[object]:
        return [
            {b"reject-me": Verdict.REJECT, b"ignore-me": Verdict.IGNORE}.get(
                message.payload, Verdict.ACCEPT
            )
        ]

    async def scenario() -> None:
        async with runtime(acceptor=Acceptor(plugins=policy)) as a, runtime() as b:
            await a.subscribe(TOPIC)
            await b.subscribe(TOPIC)
            await b.connect(a.listen_addrs[0])
            await asyncio.sleep(1.5)

            forged = envelope.seal(b.identity, topic=TOPIC, payload=b"x", sequence_hint=1).wire
            forged = forged[:-1] + bytes([forged[-1] ^ 1])  # payload changed after signing
            # A misbehaving sender: its own validator is skipped.
            await b.publish_unchecked(TOPIC, forged)
            await b.publish_unchecked(TOPIC, b"garbage")
            for payload in (b"reject-me", b"ignore-me", b"fine"):
                await b.publish(
                    TOPIC,
                    envelope.seal(b.identity, topic=TOPIC, payload=payload, sequence_hint=2).wire,
                )
            got = await next_event(a, MessageReceived)
            assert got.message.payload == b"fine"
            assert a.counters.rejected == 3 and a.counters.ignored == 1
            assert a.counters.delivered == 1

    asyncio.run(scenario())


def test_outbound_drops_are_counted_and_publish_waits_for_room() -> None:
    """The CountingRpcQueue patch is in effect: a full peer queue slows the publisher.

    Deterministic on a loaded machine: the queue is counted relative to what it
    already holds, and b's sending loop towards a is held while the queue is
    above the high-water mark, so the publish must wait until the test lets it drain
    (it used to race that loop, which could drain the queue before the publish looked).
    """

    async def scenario() -> None:
        async with runtime() as a, runtime() as b:
            b.options.publish_timeout = 60.0  # the wait ends when the queue drains, not on time
            await a.subscribe(TOPIC)
            await b.subscribe(TOPIC)
            await b.connect(a.listen_addrs[0])

            async def ready() -> bool:  # a has a queue at b, and is in b's mesh for TOPIC
                ctx = b.host_context
                return ID_of(a) in ctx.pubsub.peer_queues and ID_of(a) in ctx.gossipsub.mesh.get(
                    TOPIC, ()
                )

            async with asyncio.timeout(20):
                while not await b.call(ready):
                    await asyncio.sleep(0.05)

            async def flood() -> tuple[str, int, int, int]:
                from libp2p.pubsub.pb import rpc_pb2

                queue = b.host_context.pubsub.peer_queues[ID_of(a)]
                queued, drops = len(queue), b.counters.outbound_drops
                accepted = sum(queue.push(rpc_pb2.RPC()) for _ in range(40))  # no checkpoint
                return type(queue).__name__, queued, accepted, b.counters.outbound_drops - drops

            kind, queued, accepted, dropped = await b.call(flood)
            assert kind == CountingRpcQueue.__name__
            assert queued + accepted == 32 and dropped == 40 - accepted  # 32-slot queue

            high_water = b.options.outbound_high_water
            gate: list[trio.Event] = []

            async def hold_and_fill() -> None:
                """Hold b's sending loop to a, then fill its queue above high water."""
                from libp2p.pubsub.pb import rpc_pb2

                queue = b.host_context.pubsub.peer_queues[ID_of(a)]
                gate.append(trio.Event())

                async def held_pop() -> Any:
                    await gate[0].wait()
                    return await CountingRpcQueue.pop(queue)

                queue.pop = held_pop  # py-libp2p's loop looks it up on every RPC
                # The batched-writes loop drains with pop_nowait after each pop: held too.
                queue.pop_nowait = lambda: None
                # One pop may already be under way (the loop waiting inside it): +1.
                while len(queue) < high_water + 1:
                    queue.push(rpc_pb2.RPC())

            async def release() -> None:
                queue = b.host_context.pubsub.peer_queues[ID_of(a)]
                del queue.pop
                del queue.pop_nowait
                gate[0].set()

            await b.call(hold_and_fill)
            waits_before = b.counters.publish_waits
            publish = asyncio.create_task(
                b.publish(
                    TOPIC,
                    envelope.seal(b.identity, topic=TOPIC, payload=b"after", sequence_hint=1).wire,
                )
            )
            async with asyncio.timeout(20):
                while b.counters.publish_waits == waits_before:
                    await asyncio.sleep(0.01)
            assert not publish.done()  # waiting for room, as long as the queue is held
            await b.call(release)
            await asyncio.wait_for(publish, 20)
            assert b.counters.publish_waits == waits_before + 1
            assert b.counters.publish_wait_timeouts == 0
            got = await next_event(a, MessageReceived, timeout=20)
            assert got.message.payload == b"after"

    asyncio.run(scenario())


def test_streams_with_an_asyncio_handler() -> None:
    async def scenario() -> None:
        async with runtime() as a, runtime() as b:

            async def echo(stream: Any) -> None:
                data = await stream.read(1024)
                await stream.write(data.upper())
                await stream.close()

            await a.set_stream_handler("/united/test-echo/1", echo)
            await b.connect(a.listen_addrs[0])
            stream = await b.open_stream(a.peer_id, ["/united/test-echo/1"])
            assert stream.protocol == "/united/test-echo/1"
            await stream.write(b"hello")
            assert await stream.read(1024) == b"HELLO"
            await stream.close()

    asyncio.run(scenario())


def test_start_failure_is_raised_and_leaves_no_thread(no_thread_leaks: None) -> None:
    async def scenario() -> None:
        async with runtime() as a:
            taken = a.listen_addrs[0].split("/p2p/")[0]
            rt = P2PRuntime(Identity.generate(), HostOptions(listen_addrs=(taken,)))
            with pytest.raises(BaseException):  # noqa: B017 - whatever the OS error's wrapper
                await rt.start()

    asyncio.run(scenario())
