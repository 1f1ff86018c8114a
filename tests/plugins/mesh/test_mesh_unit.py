"""The mesh's ordering counter and freshness policy, without a network."""

from __future__ import annotations

import time
from typing import Any

from united_directory.model import Member, MemberSet
from united_mesh.config import Config
from united_mesh.limits import VolumeLimiter
from united_mesh.service import MeshService

from united_core import envelope
from united_core.acceptance import Origin, Reason, Verdict
from united_core.identity import Identity

ALICE = Identity.generate()
TOPIC = "united/s/c"


def mesh() -> MeshService:
    node: Any = object()
    return MeshService(Config(), node, ALICE)


def sealed(*, timestamp_ms: int, hint: int) -> envelope.SignedMessage:
    return envelope.seal(
        ALICE, topic=TOPIC, payload=b"x", sequence_hint=hint, timestamp_ms=timestamp_ms
    )


def test_sequence_hints_are_monotonic_and_never_below_the_clock() -> None:
    m = mesh()
    hints = [m.next_sequence_hint() for _ in range(1000)]
    assert hints == sorted(set(hints))
    assert hints[0] >= int(time.time() * 1000) - 1000


def test_a_huge_received_hint_cannot_push_the_counter_out_of_range() -> None:
    m = mesh()
    now = int(time.time() * 1000)
    m.received(sealed(timestamp_ms=now, hint=2**64 - 1), "peer", time.time())
    hint = m.next_sequence_hint()  # would overflow uint64 if the hint had been adopted
    assert hint <= now + m.config.max_future_skew * 1000 + 1000
    envelope.seal(ALICE, topic=TOPIC, payload=b"y", sequence_hint=hint)
    # A plausible hint from another member is followed (Lamport).
    fresh = mesh()
    fresh.received(sealed(timestamp_ms=now, hint=now + 5000), "peer", time.time())
    assert fresh.next_sequence_hint() == now + 5001


def test_volume_limit_charges_each_message_once_and_refuses_the_excess() -> None:
    clock = [0.0]
    limiter = VolumeLimiter(rate=2.0, burst=3, clock=lambda: clock[0])
    ids = [bytes([i]) * 32 for i in range(6)]
    assert [limiter.allow(b"k", i) for i in ids[:4]] == [True, True, True, False]
    # The same ids again (another forwarder, a later submission): the same answers, free.
    assert [limiter.allow(b"k", i) for i in ids[:4]] == [True, True, True, False]
    assert limiter.allow(b"other", ids[5])  # buckets are per sender
    clock[0] += 1.0  # two tokens back
    assert limiter.allow(b"k", ids[4]) and limiter.allow(b"k", b"r" * 32)
    # A refused submission is not remembered: the member retries it later and gets in.
    assert not limiter.allow(b"k", b"s" * 32, submission=True)
    clock[0] += 10.0
    assert limiter.allow(b"k", b"s" * 32)
    # A refusal remembered from gossip does not stick to a later submission.
    assert not limiter.allow(b"k", ids[3]) and limiter.allow(b"k", ids[3], submission=True)
    # Buckets are per channel: a full bucket in one channel leaves another's alone.
    for i in range(3):
        limiter.allow(b"k", bytes([100 + i]) * 32, topic="a")
    assert not limiter.allow(b"k", b"x" * 32, topic="a")
    assert limiter.allow(b"k", b"y" * 32, topic="b")
    assert limiter.stats()["limited"] >= 2


def test_mesh_limits_members_on_every_origin_but_history() -> None:
    m = mesh()
    m.config = Config(rate_limit=0.01, rate_burst=1)
    m.limiter = VolumeLimiter(0.01, 1)
    m.members = MemberSet.of([Member("a", "alice", ALICE.public_key, ALICE.peer_id)])
    now = int(time.time() * 1000)
    first, second = sealed(timestamp_ms=now, hint=now), sealed(timestamp_ms=now, hint=now + 1)
    assert m.judge(first, Origin.GOSSIP) is None
    refusal = m.judge(second, Origin.GOSSIP)
    assert refusal is not None and refusal.verdict is Verdict.IGNORE
    assert refusal.code is Reason.RATE_LIMITED and not refusal.code.permanent
    assert m.judge(second, Origin.HISTORY) is None
