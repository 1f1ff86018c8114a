"""The gossip adjustments, each on real py-libp2p hosts on loopback; each test fails
when its adjustment stops taking effect (docs/mesh.md, "Adjustments")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from united_mesh.config import Config as MeshConfig
from united_mesh.scoring import score_settings

from united_core import envelope
from united_core.identity import Identity
from united_core.p2p.events import MessageReceived
from united_core.p2p.options import GossipOptions, HostOptions
from united_core.p2p.runtime import P2PRuntime

TOPIC = "united/test/general"
OTHER = "united/test/random"


def options(**gossip: Any) -> HostOptions:
    return HostOptions(
        listen_addrs=("/ip4/127.0.0.1/tcp/0",),
        gossip=GossipOptions(scoring=score_settings(MeshConfig()), **gossip),
    )


@contextlib.asynccontextmanager
async def pair(**gossip: Any) -> AsyncIterator[tuple[P2PRuntime, P2PRuntime]]:
    """Two connected hosts subscribed to TOPIC and OTHER."""
    a = P2PRuntime(Identity.generate(), options(**gossip))
    b = P2PRuntime(Identity.generate(), options(**gossip))
    await a.start()
    await b.start()
    try:
        for rt in (a, b):
            await rt.subscribe(TOPIC)
            await rt.subscribe(OTHER)
        await b.connect(f"{a.listen_addrs[0]}/p2p/{a.peer_id}")
        yield a, b
    finally:
        await b.stop()
        await a.stop()


async def subscribed(rt: P2PRuntime, peer: str, topic: str) -> None:
    """Wait until ``rt`` knows ``peer`` subscribes ``topic``."""

    async def check() -> bool:
        peers = rt.host_context.pubsub.peer_topics.get(topic, set())
        return any(p.to_base58() == peer for p in peers)

    async with asyncio.timeout(10):
        while not await rt.call(check):
            await asyncio.sleep(0.05)


async def delivered(rt: P2PRuntime, n: int, timeout: float = 20) -> list[MessageReceived]:
    out: list[MessageReceived] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            event = await rt.events()
            if isinstance(event, MessageReceived):
                out.append(event)
    return out


async def peer_score(rt: P2PRuntime, peer: str) -> dict[str, float]:
    async def read() -> dict[str, float]:
        from libp2p.peer.id import ID

        scorer = rt.host_context.gossipsub.scorer
        pid = ID.from_base58(peer)
        return {
            "score": float(scorer.score(pid, [TOPIC, OTHER])),
            "invalid": float(sum(scorer.invalid_messages[pid].values())),
            "behaviour": float(scorer.behavior_penalty.get(pid, 0.0)),
        }

    return await rt.call(read)


def seal(identity: Identity, topic: str, text: str, *, age_s: float = 0.0) -> bytes:
    ts = int((time.time() - age_s) * 1000)
    return envelope.seal(
        identity, topic=topic, payload=text.encode(), sequence_hint=ts, timestamp_ms=ts
    ).wire


def test_a_gossip_only_link_carries_each_message_once() -> None:
    """EnvelopeIdMessageCache: IHAVE ids are envelope ids, so IWANT asks once per message.

    D=0: the two hosts never mesh, every message crosses by IHAVE/IWANT. Before
    the adjustment, 50 messages cost 300 IWANTs, 300 redundant copies and the
    honest publisher's score at the receiver.
    """

    async def scenario() -> None:
        async with pair(degree=0, degree_low=0, degree_high=0) as (a, b):
            await subscribed(a, b.peer_id, TOPIC)
            wires = [seal(a.identity, TOPIC, f"m{i}") for i in range(50)]
            for wire in wires:
                await a.publish(TOPIC, wire)
            got = await delivered(b, 50)
            await asyncio.sleep(a.options.gossip.heartbeat_interval * 4)  # more IHAVE rounds
            assert {e.message.id for e in got} == {envelope.open_envelope(w).id for w in wires}
            assert all(e.from_peer == a.peer_id for e in got)
            assert b.counters.iwant_sent == 50  # one IWANT per message, none repeated
            assert b.counters.duplicates == 0  # no redundant copy
            score = await peer_score(b, a.peer_id)
            assert score["invalid"] == 0 and score["behaviour"] == 0 and score["score"] >= 0
            assert (await a.snapshot())["mesh"].get(TOPIC) == []

    asyncio.run(scenario())


def test_an_invalid_message_costs_its_sender_once_however_often_it_arrives() -> None:
    async def scenario() -> None:
        async with pair() as (a, b):
            await subscribed(a, b.peer_id, TOPIC)
            forged = bytearray(seal(a.identity, TOPIC, "x"))
            forged[-1] ^= 1
            for _ in range(4):  # the same forged envelope, sent again and again
                await a.publish_unchecked(TOPIC, bytes(forged))
            await a.publish(TOPIC, seal(a.identity, TOPIC, "after"))
            (got,) = await delivered(b, 1)
            assert got.message.payload == b"after"
            assert b.counters.rejected == 1 and b.counters.repeats_dropped == 3
            score = await peer_score(b, a.peer_id)
            assert 0.9 <= score["invalid"] <= 1  # once (it decays by 1% a heartbeat)

    asyncio.run(scenario())


def test_a_wrong_topic_copy_does_not_condemn_the_genuine_message() -> None:
    """Verdicts are keyed by (id, topic): py-libp2p's were keyed by id alone."""

    async def scenario() -> None:
        async with pair() as (a, b):
            await subscribed(a, b.peer_id, OTHER)
            await subscribed(a, b.peer_id, TOPIC)
            genuine = seal(a.identity, TOPIC, "genuine")
            await a.publish_unchecked(OTHER, genuine)  # the copy on another channel first
            async with asyncio.timeout(10):
                while b.counters.rejected < 1:
                    await asyncio.sleep(0.05)
            await a.publish(TOPIC, genuine)
            (got,) = await delivered(b, 1)
            assert got.message.payload == b"genuine" and got.message.topic == TOPIC
            # The wrong copy only (the counter decays by 1% a heartbeat).
            assert 0.9 <= (await peer_score(b, a.peer_id))["invalid"] <= 1

    asyncio.run(scenario())


def test_ignored_messages_cost_no_score() -> None:
    """IGNORE (here: stale, a sender whose clock is 6 minutes behind) is not invalid."""

    async def scenario() -> None:
        async with pair() as (a, b):
            await subscribed(a, b.peer_id, TOPIC)
            for i in range(12):
                await a.publish_unchecked(TOPIC, seal(a.identity, TOPIC, f"old{i}", age_s=360))
            await a.publish(TOPIC, seal(a.identity, TOPIC, "now"))
            (got,) = await delivered(b, 1)
            assert got.message.payload == b"now"
            assert b.counters.ignored == 12 and b.counters.rejected == 0
            score = await peer_score(b, a.peer_id)
            assert score["invalid"] == 0 and score["score"] >= 0

    asyncio.run(scenario())


def test_the_adjustments_refuse_a_py_libp2p_they_were_not_checked_against(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import libp2p

    from united_core.p2p.pubsub import AdjustmentMismatch, check_adjustments

    check_adjustments()
    monkeypatch.setattr(libp2p, "__version__", "0.9.0")
    with pytest.raises(AdjustmentMismatch, match=r"0\.9\.0"):
        check_adjustments()
    with pytest.raises(AdjustmentMismatch):
        P2PRuntime(Identity.generate(), HostOptions())


def test_a_forged_copy_cannot_condemn_someone_elses_message() -> None:
    """A member sends a broken copy (signature zeroed) of another member's envelope
    first: the receiver refuses those bytes, remembers the refusal under the bytes,
    not the envelope id, and still delivers the genuine message. The forger's
    penalty survives its reconnecting (py-libp2p forgot it on disconnect)."""

    async def scenario() -> None:
        async with pair() as (attacker, receiver):
            victim = P2PRuntime(Identity.generate(), options())
            await victim.start()
            try:
                await victim.subscribe(TOPIC)
                await victim.connect(f"{receiver.listen_addrs[0]}/p2p/{receiver.peer_id}")
                await subscribed(attacker, receiver.peer_id, TOPIC)
                await subscribed(victim, receiver.peer_id, TOPIC)
                genuine = seal(victim.identity, TOPIC, "mine")
                env = envelope.decode(genuine)
                env.signature = bytes(64)
                forged = env.SerializeToString()
                assert envelope.message_id_from_wire(forged) == envelope.open_envelope(genuine).id
                await attacker.publish_unchecked(TOPIC, forged)
                async with asyncio.timeout(10):
                    while receiver.counters.rejected < 1:
                        await asyncio.sleep(0.05)
                await victim.publish(TOPIC, genuine)
                (got,) = await delivered(receiver, 1)
                assert got.message.payload == b"mine" and got.from_peer == victim.peer_id
                before = (await peer_score(receiver, attacker.peer_id))["invalid"]
                assert before > 0.9
                await receiver.disconnect(attacker.peer_id)
                await attacker.connect(f"{receiver.listen_addrs[0]}/p2p/{receiver.peer_id}")
                await subscribed(receiver, attacker.peer_id, TOPIC)
                assert (await peer_score(receiver, attacker.peer_id))["invalid"] > 0.5
            finally:
                await victim.stop()

    asyncio.run(scenario())


def test_a_peer_that_re_registers_us_learns_our_subscriptions_again() -> None:
    """b's pubsub stream state for a dies while they stay connected (as when a
    duplicate connection is closed): b forgets a's subscriptions and opens a new
    stream to a. a must send its subscriptions again, or b never grafts it and
    b's publishes reach nobody (a one-sided mesh; py-libp2p does not resend)."""

    async def scenario() -> None:
        async with pair() as (a, b):
            await subscribed(b, a.peer_id, TOPIC)
            await subscribed(a, b.peer_id, TOPIC)

            async def drop_a() -> None:
                from libp2p.peer.id import ID

                b.host_context.pubsub._handle_dead_peer(ID.from_base58(a.peer_id))

            await b.call(drop_a)
            await subscribed(b, a.peer_id, TOPIC)  # learnt again, without reconnecting
            assert a.counters.subscriptions_resent >= 1
            await asyncio.sleep(1.5)  # a heartbeat grafts it
            await b.publish(TOPIC, seal(Identity.generate(), TOPIC, "after"))
            got = await delivered(a, 1)
            assert got[0].message.payload == b"after"

    asyncio.run(scenario())


def test_messages_are_not_held_for_peers_outside_the_topic() -> None:
    """UnitedGossipSub.publish: py-libp2p queued a copy of every message for every
    connected peer not subscribed to its topic (a WARNING per peer per message past
    100 of them: a server with 100 members in 5 channels logged 13,900 in four
    minutes)."""

    async def scenario() -> None:
        a = P2PRuntime(Identity.generate(), options())
        b = P2PRuntime(Identity.generate(), options())
        await a.start()
        await b.start()
        try:
            await a.subscribe(TOPIC)
            await b.subscribe(OTHER)
            await b.connect(f"{a.listen_addrs[0]}/p2p/{a.peer_id}")
            await subscribed(a, b.peer_id, OTHER)
            for i in range(20):
                await a.publish(TOPIC, seal(a.identity, TOPIC, f"m{i}"))

            async def held() -> dict[str, int]:
                pending = a.host_context.gossipsub._pending_messages
                return {p.to_base58(): len(q) for p, q in pending.items()}

            assert await a.call(held) == {}  # py-libp2p: {b: 20}
        finally:
            await b.stop()
            await a.stop()

    asyncio.run(scenario())


def test_a_pruned_peer_is_not_grafted_again_before_the_backoff_ends() -> None:
    """UnitedGossipSub.mesh_heartbeat: a peer the heartbeat prunes is backed off on
    the pruner's side too (go-libp2p's rule). py-libp2p recorded nothing, re-grafted
    it at the next shortage, and the pruned peer, which had recorded the PRUNE's
    backoff, punished that GRAFT as a flood (379 warnings a minute at 100 members)."""

    async def scenario() -> None:
        # a keeps one mesh peer (D = D_lo = D_hi = 1); b and c both graft it.
        a = P2PRuntime(Identity.generate(), options(degree=1, degree_low=1, degree_high=1))
        b = P2PRuntime(Identity.generate(), options())
        c = P2PRuntime(Identity.generate(), options())
        for rt in (a, b, c):
            await rt.start()
            await rt.subscribe(TOPIC)
        try:
            for rt in (b, c):
                await rt.connect(f"{a.listen_addrs[0]}/p2p/{a.peer_id}")

            async def backed_off() -> set[str]:
                table = a.host_context.gossipsub.back_off.get(TOPIC, {})
                return {p.to_base58() for p in table}

            async with asyncio.timeout(20):
                while not await a.call(backed_off):
                    await asyncio.sleep(0.1)
            pruned = await a.call(backed_off)
            assert pruned <= {b.peer_id, c.peer_id} and len(pruned) == 1
            await asyncio.sleep(a.options.gossip.heartbeat_interval * 4)
            mesh = set((await a.snapshot())["mesh"].get(TOPIC, []))
            assert not mesh & pruned  # not grafted again while backed off

            async def flood_penalties(rt: P2PRuntime) -> float:
                async def read() -> float:
                    scorer = rt.host_context.gossipsub.scorer
                    return float(sum(scorer.graft_flood_penalties.values()))

                return await rt.call(read)

            assert await flood_penalties(b) == 0 and await flood_penalties(c) == 0
        finally:
            for rt in (c, b, a):
                await rt.stop()

    asyncio.run(scenario())
