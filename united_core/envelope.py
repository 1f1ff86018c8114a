"""Envelope codec: sign, encode, decode and verify the one gossipsub message format.

The signature covers *signed bytes* built from the field values with a domain
separation prefix (see docs/wire-format.md). They never depend on how protobuf
serialised the envelope, and they include the topic, so a signature cannot be
replayed on another channel. A message's id is the SHA-256 of its signed bytes,
so every store can be idempotent by id.
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from .identity import Identity, verify_signature
from .wire import envelope_pb2

DOMAIN = b"united/envelope/v1\x00"
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_TOPIC_BYTES = 256
# Payload and topic bounds plus room for the fixed fields and protobuf tags.
MAX_ENVELOPE_BYTES = MAX_PAYLOAD_BYTES + MAX_TOPIC_BYTES + 256

MessageType = envelope_pb2.MessageType
TEXT = envelope_pb2.MESSAGE_TYPE_TEXT
TEST = envelope_pb2.MESSAGE_TYPE_TEST
_KNOWN_TYPES = frozenset(envelope_pb2.MessageType.values()) - {
    envelope_pb2.MESSAGE_TYPE_UNSPECIFIED
}
_U64_MAX = 2**64 - 1


class EnvelopeError(ValueError):
    """Base of every rejection raised by this module."""


class MalformedEnvelope(EnvelopeError):
    """Not a decodable envelope, or a field out of its allowed shape."""


class EnvelopeTooLarge(EnvelopeError):
    """The encoded envelope, its payload or its topic is over the bound."""


class BadSignature(EnvelopeError):
    """The signature does not verify against the sender key and signed bytes."""


class TopicMismatch(EnvelopeError):
    """The envelope names another topic than the one it arrived on."""


@dataclass(frozen=True)
class SignedMessage:
    """A decoded envelope whose signature has been verified."""

    id: bytes
    sender_pubkey: bytes
    topic: str
    message_type: int
    timestamp: int
    sequence_hint: int
    payload: bytes
    signature: bytes
    wire: bytes

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


def signed_bytes(
    *,
    sender_pubkey: bytes,
    topic: str,
    message_type: int,
    timestamp: int,
    sequence_hint: int,
    payload: bytes,
) -> bytes:
    """The exact bytes an envelope signature covers (big-endian, length-prefixed)."""
    topic_bytes = topic.encode("utf-8")
    return b"".join(
        (
            DOMAIN,
            struct.pack(">H", len(topic_bytes)),
            topic_bytes,
            sender_pubkey,
            struct.pack(">IQQI", message_type, timestamp, sequence_hint, len(payload)),
            payload,
        )
    )


def message_id_of(signed: bytes) -> bytes:
    return hashlib.sha256(signed).digest()


def _signed_bytes_of(env: envelope_pb2.Envelope) -> bytes:
    return signed_bytes(
        sender_pubkey=env.sender_pubkey,
        topic=env.topic,
        message_type=env.message_type,
        timestamp=env.timestamp,
        sequence_hint=env.sequence_hint,
        payload=env.payload,
    )


def _check_shape(
    sender_pubkey: bytes, topic: str, message_type: int, timestamp: int, seq: int, payload: bytes
) -> None:
    if len(sender_pubkey) != 32:
        raise MalformedEnvelope("sender_pubkey must be 32 bytes")
    if not topic:
        raise MalformedEnvelope("topic is empty")
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise EnvelopeTooLarge(f"topic is over {MAX_TOPIC_BYTES} bytes")
    if message_type not in _KNOWN_TYPES:
        raise MalformedEnvelope(f"unknown message_type {message_type}")
    if not (0 <= timestamp <= _U64_MAX and 0 <= seq <= _U64_MAX):
        raise MalformedEnvelope("timestamp or sequence_hint out of range")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EnvelopeTooLarge(f"payload is {len(payload)} bytes, over {MAX_PAYLOAD_BYTES}")


def seal(
    identity: Identity,
    *,
    topic: str,
    payload: bytes,
    sequence_hint: int,
    message_type: int = TEXT,
    timestamp_ms: int | None = None,
) -> SignedMessage:
    """Sign and encode an envelope; raises EnvelopeError for out-of-bound input."""
    timestamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    pubkey = identity.public_key
    _check_shape(pubkey, topic, message_type, timestamp, sequence_hint, payload)
    signed = signed_bytes(
        sender_pubkey=pubkey,
        topic=topic,
        message_type=message_type,
        timestamp=timestamp,
        sequence_hint=sequence_hint,
        payload=payload,
    )
    signature = identity.sign(signed)
    wire = envelope_pb2.Envelope(
        sender_pubkey=pubkey,
        signature=signature,
        topic=topic,
        message_type=message_type,  # type: ignore[arg-type]
        timestamp=timestamp,
        sequence_hint=sequence_hint,
        payload=payload,
    ).SerializeToString()
    return SignedMessage(
        id=message_id_of(signed),
        sender_pubkey=pubkey,
        topic=topic,
        message_type=message_type,
        timestamp=timestamp,
        sequence_hint=sequence_hint,
        payload=payload,
        signature=signature,
        wire=wire,
    )


def decode(data: bytes) -> envelope_pb2.Envelope:
    """Parse the protobuf only; raises MalformedEnvelope / EnvelopeTooLarge."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeTooLarge(f"envelope is {len(data)} bytes, over {MAX_ENVELOPE_BYTES}")
    env = envelope_pb2.Envelope()
    try:
        env.ParseFromString(data)
    except (DecodeError, ValueError, TypeError, RuntimeError) as exc:
        raise MalformedEnvelope(f"cannot decode envelope: {exc}") from None
    # Unknown fields would travel unsigned: refuse them rather than carry them.
    if len(UnknownFieldSet(env)):
        raise MalformedEnvelope("envelope carries unknown fields")
    return env


def open_envelope(data: bytes, *, expected_topic: str | None = None) -> SignedMessage:
    """Decode and verify ``data``; every failure is an EnvelopeError subclass."""
    env = decode(data)
    try:
        topic = env.topic
    except UnicodeDecodeError:  # pragma: no cover - upb validates UTF-8 on parse
        raise MalformedEnvelope("topic is not UTF-8") from None
    _check_shape(
        env.sender_pubkey, topic, env.message_type, env.timestamp, env.sequence_hint, env.payload
    )
    signed = _signed_bytes_of(env)
    if not verify_signature(env.sender_pubkey, signed, env.signature):
        raise BadSignature("envelope signature does not verify")
    # After the signature: a topic mismatch is then a fact about the author's
    # envelope, never a forgery that could be used to condemn it.
    if expected_topic is not None and topic != expected_topic:
        raise TopicMismatch(f"envelope names topic {topic!r}, received on {expected_topic!r}")
    return SignedMessage(
        id=message_id_of(signed),
        sender_pubkey=env.sender_pubkey,
        topic=topic,
        message_type=env.message_type,
        timestamp=env.timestamp,
        sequence_hint=env.sequence_hint,
        payload=env.payload,
        signature=env.signature,
        wire=data,
    )


def message_id_from_wire(data: bytes) -> bytes:
    """The id gossipsub uses for ``data``: the envelope id, or a hash for garbage.

    Garbage still needs a stable id so the router can remember it rejected it.
    """
    try:
        return message_id_of(_signed_bytes_of(decode(data)))
    except (EnvelopeError, struct.error):
        return hashlib.sha256(b"united/undecodable\x00" + data).digest()
