"""The trio/asyncio bridge's message credits, on real hosts (united_core/p2p/bridge.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
import trio

from united_core import envelope
from united_core.identity import Identity
from united_core.p2p.events import MessageReceived
from united_core.p2p.options import HostOptions
from united_core.p2p.runtime import P2PRuntime

TOPIC = "united/test/general"


def test_a_consumer_that_stops_reading_bounds_delivery_and_resumes_it() -> None:
    """16 credits and a 16-slot inbox: a consumer that reads nothing holds 16
    messages handed over and 17 waiting (16 in the inbox, one in hand for the
    next credit); the rest are dropped and counted. Each
    message read then returns a credit, and the trio side, which was waiting for
    one, hands over the waiting 17: nothing stays stuck behind a credit."""

    async def scenario() -> None:
        opts = {"listen_addrs": ("/ip4/127.0.0.1/tcp/0",), "inbound_queue_size": 16}
        a = P2PRuntime(Identity.generate(), HostOptions(**opts))  # type: ignore[arg-type]
        b = P2PRuntime(Identity.generate(), HostOptions(**opts))  # type: ignore[arg-type]
        await a.start()
        await b.start()
        try:
            for rt in (a, b):
                await rt.subscribe(TOPIC)
            await b.connect(f"{a.listen_addrs[0]}/p2p/{a.peer_id}")
            async with asyncio.timeout(15):
                while a.peer_id not in (await b.snapshot())["mesh"].get(TOPIC, []):
                    await asyncio.sleep(0.05)
                while b.peer_id not in (await a.snapshot())["mesh"].get(TOPIC, []):
                    await asyncio.sleep(0.05)
            for i in range(100):
                ts = int(time.time() * 1000)
                wire = envelope.seal(
                    a.identity, topic=TOPIC, payload=b"m%d" % i, sequence_hint=ts, timestamp_ms=ts
                ).wire
                await a.publish(TOPIC, wire)
            async with asyncio.timeout(15):
                while b.counters.delivered + b.counters.inbound_drops < 83:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert b.counters.delivered == 16  # every credit taken, none returned
            assert b.counters.inbound_drops == 67  # 100 - 16 handed over - 17 waiting
            got = []
            async with asyncio.timeout(15):
                while len(got) < 33:
                    event = await b.events()
                    if isinstance(event, MessageReceived):
                        got.append(event.message.payload)
            assert got == [b"m%d" % i for i in range(33)]  # in order, the waiting ones too
            assert b.counters.delivered == 33
        finally:
            await b.stop()
            await a.stop()

    asyncio.run(scenario())


def test_credits_returned_while_the_trio_side_has_some_wake_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A consumer that keeps up returns its credits without a thread crossing each
    (a ``trio.Semaphore`` released with ``run_sync_soon`` woke the trio thread per
    message); only a trio side waiting for a credit is woken."""
    from united_core.p2p import bridge

    crossings: list[object] = []
    quietly = bridge.run_sync_soon_quietly

    def counting(token: object, fn: Callable[[], object]) -> None:
        crossings.append(fn)
        quietly(token, fn)  # type: ignore[arg-type]

    monkeypatch.setattr(bridge, "run_sync_soon_quietly", counting)
    credits = bridge.Credits(2)

    async def trio_side(token_box: list[object]) -> list[str]:
        token_box.append(trio.lowlevel.current_trio_token())
        taken = []
        for i in range(3):
            await credits.acquire()
            taken.append(f"credit {i}")
        return taken

    token_box: list[object] = []

    def give_back_later() -> None:
        while not token_box:
            time.sleep(0.01)
        time.sleep(0.2)
        credits.release(token_box[0])  # type: ignore[arg-type]  # the third acquire waits

    releaser = threading.Thread(target=give_back_later)
    releaser.start()
    assert trio.run(trio_side, token_box) == ["credit 0", "credit 1", "credit 2"]
    releaser.join()
    assert len(crossings) == 1  # the one release that found the trio side waiting
    credits.release(token_box[0])  # type: ignore[arg-type]  # nobody waits: no crossing
    assert len(crossings) == 1 and credits.available == 1
