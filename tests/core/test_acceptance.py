"""The one acceptance path: every check, in order, for every origin (no network)."""

from __future__ import annotations

import time

import pytest

from united_core import envelope
from united_core.acceptance import (
    MAX_STORED_INT,
    Acceptor,
    Origin,
    Reason,
    Refusal,
    Rules,
    Verdict,
    undecodable_id,
)
from united_core.envelope import message_id_from_wire
from united_core.identity import Identity
from united_core.wire import envelope_pb2

ALICE = Identity.generate()
TOPIC = "united/s/general"
OTHER = "united/s/random"
NOW = 1_800_000_000.0  # a fixed clock: 2027-01-15


def sealed(*, age_s: float = 0.0, hint: int | None = None, payload: bytes = b"hi") -> bytes:
    ts = int((NOW - age_s) * 1000)
    return envelope.seal(
        ALICE,
        topic=TOPIC,
        payload=payload,
        sequence_hint=ts if hint is None else hint,
        timestamp_ms=ts,
    ).wire


def acceptor(plugins: object = None, **rules: float) -> Acceptor:
    if plugins is None:
        return Acceptor(Rules(**rules), clock=lambda: NOW)
    return Acceptor(Rules(**rules), plugins, clock=lambda: NOW)  # type: ignore[arg-type]


def test_a_good_envelope_is_accepted_on_every_origin() -> None:
    for origin in Origin:
        judgement = acceptor().judge(sealed(), origin, topic=TOPIC)
        assert judgement.accepted and judgement.message is not None
        assert judgement.message.id == message_id_from_wire(sealed())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff garbage", Reason.MALFORMED),
        (b"\x00" * (envelope.MAX_ENVELOPE_BYTES + 1), Reason.TOO_LARGE),
    ],
)
def test_undecodable_data_is_rejected_with_its_reason(data: bytes, reason: Reason) -> None:
    judgement = acceptor().judge(data, Origin.SUBMISSION)
    assert judgement.verdict is Verdict.REJECT and judgement.reason is reason
    assert judgement.permanent and judgement.message is None
    assert message_id_from_wire(data) == undecodable_id(data)


def test_bad_signature_and_wrong_topic_are_rejected() -> None:
    wire = bytearray(sealed())
    wire[-1] ^= 1
    assert acceptor().judge(bytes(wire), Origin.GOSSIP, topic=TOPIC).reason is Reason.BAD_SIGNATURE
    judgement = acceptor().judge(sealed(), Origin.GOSSIP, topic=OTHER)
    assert judgement.reason is Reason.WRONG_TOPIC and judgement.verdict is Verdict.REJECT


def test_submissions_must_name_a_served_topic() -> None:
    judgement = acceptor().judge(sealed(), Origin.SUBMISSION, topics={OTHER})
    assert judgement.reason is Reason.UNKNOWN_CHANNEL and judgement.permanent
    assert acceptor().judge(sealed(), Origin.SUBMISSION, topics={TOPIC}).accepted


def test_integers_storage_cannot_hold_are_refused_on_every_origin() -> None:
    for origin in Origin:
        judgement = acceptor().judge(sealed(hint=2**64 - 1), origin)
        assert judgement.reason is Reason.OUT_OF_BOUNDS, origin
    assert acceptor().judge(sealed(hint=MAX_STORED_INT), Origin.HISTORY).accepted


def test_freshness_depends_on_the_origin() -> None:
    a = acceptor(max_message_age=300, max_submission_age=86400, max_future_skew=120)
    stale = sealed(age_s=400)
    for origin in (Origin.GOSSIP, Origin.PUBLISH):
        judgement = a.judge(stale, origin)
        assert judgement.verdict is Verdict.IGNORE and judgement.reason is Reason.STALE
    assert "clock" in a.judge(stale, Origin.PUBLISH).describe()
    assert a.judge(stale, Origin.SUBMISSION).accepted  # offline reconciliation
    assert a.judge(stale, Origin.HISTORY).accepted  # the server's record is not aged
    ancient = sealed(age_s=NOW - 978_307_200)  # dated 2001
    assert a.judge(ancient, Origin.SUBMISSION).reason is Reason.STALE
    future = sealed(age_s=-3600)
    assert a.judge(future, Origin.SUBMISSION).reason is Reason.FROM_THE_FUTURE
    assert a.judge(future, Origin.GOSSIP).verdict is Verdict.REJECT
    ahead = sealed(hint=int((NOW + 3600) * 1000))
    assert a.judge(ahead, Origin.GOSSIP).reason is Reason.FROM_THE_FUTURE


def test_plugins_decide_last_reject_wins_and_reasons_travel() -> None:
    seen: list[Origin] = []

    def plugins(message: envelope.SignedMessage, origin: Origin, from_peer: str) -> list[object]:
        seen.append(origin)
        if b"bad" in message.payload:
            return [None, Verdict.IGNORE, Refusal(Verdict.REJECT, "contains a bad word")]
        if b"meh" in message.payload:
            return [Verdict.IGNORE]
        return [None, Verdict.ACCEPT]

    a = acceptor(plugins)
    judgement = a.judge(sealed(payload=b"bad"), Origin.SUBMISSION)
    assert judgement.verdict is Verdict.REJECT and judgement.reason is Reason.POLICY
    assert judgement.describe() == "policy: contains a bad word"
    assert a.judge(sealed(payload=b"meh"), Origin.GOSSIP).verdict is Verdict.IGNORE
    assert a.judge(sealed(), Origin.PUBLISH).accepted
    assert seen == [Origin.SUBMISSION, Origin.GOSSIP, Origin.PUBLISH]
    # Plugins are not asked about what the core already refused.
    a.judge(sealed(age_s=10_000), Origin.GOSSIP)
    assert len(seen) == 3


def test_a_failing_validator_refuses() -> None:
    def broken(message: envelope.SignedMessage, origin: Origin, from_peer: str) -> list[object]:
        raise RuntimeError("boom")

    judgement = acceptor(broken).judge(sealed(), Origin.GOSSIP)
    assert judgement.verdict is Verdict.REJECT and judgement.reason is Reason.POLICY


def test_unknown_fields_are_malformed() -> None:
    env = envelope_pb2.Envelope.FromString(sealed())
    assert acceptor().judge(sealed() + b"\xf8\x01\x01", Origin.GOSSIP).reason is Reason.MALFORMED
    assert env.payload == b"hi"


def test_real_clock_default() -> None:
    wire = envelope.seal(ALICE, topic=TOPIC, payload=b"x", sequence_hint=1).wire
    assert Acceptor().judge(wire, Origin.GOSSIP, topic=TOPIC).accepted
    assert time.time() > 0
