"""The mesh's ordering counter and freshness policy, without a network."""

from __future__ import annotations

import time
from typing import Any

from united_mesh.config import Config
from united_mesh.service import MeshService

from united_core import envelope
from united_core.identity import Identity
from united_core.p2p.options import Verdict

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


def test_freshness_policy() -> None:
    m = mesh()
    now = int(time.time() * 1000)
    assert m.judge(sealed(timestamp_ms=now, hint=now)) is None
    assert m.judge(sealed(timestamp_ms=now + 3_600_000, hint=now)) is Verdict.REJECT
    assert m.judge(sealed(timestamp_ms=now, hint=2**63)) is Verdict.REJECT
    old = now - int(m.config.max_message_age * 1000) - 5000
    assert m.judge(sealed(timestamp_ms=old, hint=old)) is Verdict.IGNORE
