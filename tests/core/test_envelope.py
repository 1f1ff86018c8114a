from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from united_core import envelope
from united_core.envelope import (
    BadSignature,
    EnvelopeError,
    EnvelopeTooLarge,
    MalformedEnvelope,
    TopicMismatch,
    message_id_from_wire,
    open_envelope,
    seal,
)
from united_core.identity import Identity
from united_core.wire import envelope_pb2

ALICE = Identity.generate()
MALLORY = Identity.generate()
TOPIC = "united/server-1/6f1c1f64-5a43-4b8e-9a0f-6f7f1ff0c6a1"

topics = st.text(min_size=1, max_size=60).filter(
    lambda t: len(t.encode()) <= envelope.MAX_TOPIC_BYTES
)
payloads = st.binary(max_size=2048)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
types = st.sampled_from([envelope.TEXT, envelope.TEST, envelope_pb2.MESSAGE_TYPE_EDIT])


@given(topic=topics, payload=payloads, seq=u64, ts=u64, mtype=types)
def test_round_trip(topic: str, payload: bytes, seq: int, ts: int, mtype: int) -> None:
    sealed = seal(
        ALICE, topic=topic, payload=payload, sequence_hint=seq, timestamp_ms=ts, message_type=mtype
    )
    opened = open_envelope(sealed.wire, expected_topic=topic)
    assert opened == sealed
    assert message_id_from_wire(sealed.wire) == sealed.id


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), payload=payloads)
def test_every_mutation_is_rejected_or_harmless(data: st.DataObject, payload: bytes) -> None:
    """Flipping any bits of the encoding never yields a *different* valid message."""
    sealed = seal(ALICE, topic=TOPIC, payload=payload, sequence_hint=7)
    wire = bytearray(sealed.wire)
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] ^= data.draw(st.integers(1, 255))
    try:
        opened = open_envelope(bytes(wire), expected_topic=TOPIC)
    except EnvelopeError:
        return
    # Only an encoding-level change that leaves every signed field intact may pass.
    assert (opened.id, opened.signature, opened.sender_pubkey) == (
        sealed.id,
        sealed.signature,
        sealed.sender_pubkey,
    )


@given(junk=st.binary(max_size=4096))
def test_garbage_raises_only_envelope_errors(junk: bytes) -> None:
    with pytest.raises(EnvelopeError):
        open_envelope(junk)
    assert len(message_id_from_wire(junk)) == 32


@given(payload=payloads)
def test_forged_sender_is_rejected(payload: bytes) -> None:
    """Mallory signs but claims to be Alice: the signature does not verify."""
    sealed = seal(MALLORY, topic=TOPIC, payload=payload, sequence_hint=1)
    env = envelope_pb2.Envelope.FromString(sealed.wire)
    env.sender_pubkey = ALICE.public_key
    with pytest.raises(BadSignature):
        open_envelope(env.SerializeToString(), expected_topic=TOPIC)


def test_replay_on_another_topic_is_rejected() -> None:
    sealed = seal(ALICE, topic=TOPIC, payload=b"hi", sequence_hint=1)
    other = TOPIC[:-1] + "2"
    with pytest.raises(TopicMismatch):
        open_envelope(sealed.wire, expected_topic=other)
    env = envelope_pb2.Envelope.FromString(sealed.wire)
    env.topic = other  # rewritten to match where it is replayed
    with pytest.raises(BadSignature):
        open_envelope(env.SerializeToString(), expected_topic=other)


def test_signature_does_not_depend_on_serialisation() -> None:
    """Fields re-ordered on the wire (legal protobuf) still verify, with the same id."""
    sealed = seal(ALICE, topic=TOPIC, payload=b"order", sequence_hint=3)
    env = envelope_pb2.Envelope.FromString(sealed.wire)
    parts = []
    for field, value in env.ListFields():
        single = envelope_pb2.Envelope()
        setattr(single, field.name, value)
        parts.append(single.SerializeToString())
    reordered = b"".join(reversed(parts))
    assert reordered != sealed.wire
    assert open_envelope(reordered).id == sealed.id


def test_size_bounds() -> None:
    big = b"x" * (envelope.MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(EnvelopeTooLarge):
        seal(ALICE, topic=TOPIC, payload=big, sequence_hint=1)
    with pytest.raises(EnvelopeTooLarge):
        seal(ALICE, topic="t" * (envelope.MAX_TOPIC_BYTES + 1), payload=b"", sequence_hint=1)
    with pytest.raises(EnvelopeTooLarge):
        open_envelope(b"\x00" * (envelope.MAX_ENVELOPE_BYTES + 1))
    at_bound = seal(ALICE, topic=TOPIC, payload=b"x" * envelope.MAX_PAYLOAD_BYTES, sequence_hint=1)
    assert open_envelope(at_bound.wire).payload == at_bound.payload


def test_unknown_fields_and_unspecified_type_are_rejected() -> None:
    sealed = seal(ALICE, topic=TOPIC, payload=b"hi", sequence_hint=1)
    with pytest.raises(MalformedEnvelope, match="unknown fields"):
        open_envelope(sealed.wire + b"\xf8\x01\x01")  # field 31, varint 1
    env = envelope_pb2.Envelope.FromString(sealed.wire)
    env.message_type = envelope_pb2.MESSAGE_TYPE_UNSPECIFIED
    with pytest.raises(MalformedEnvelope, match="message_type"):
        open_envelope(env.SerializeToString())


def test_message_id_is_stable_and_distinct() -> None:
    a = seal(ALICE, topic=TOPIC, payload=b"same", sequence_hint=1, timestamp_ms=5)
    b = seal(ALICE, topic=TOPIC, payload=b"same", sequence_hint=1, timestamp_ms=5)
    c = seal(ALICE, topic=TOPIC, payload=b"same", sequence_hint=2, timestamp_ms=5)
    assert a.id == b.id != c.id
