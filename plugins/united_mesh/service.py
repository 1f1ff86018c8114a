"""The mesh: one gossipsub topic per channel, signed envelopes, Lamport order hints.

- Subscribes the topic of every channel this node takes part in
  (``united_channels_changed``): all of them on the server, the joined ones on a
  client, at start-up and whenever the set changes.
- Dials, per channel, up to ``dial_per_channel`` online members the directory
  reports (``united_presence_changed``); connections are shared across channels.
  Of two members, the one with the smaller PeerId dials.
- Sends text as envelopes signed with the node identity. ``sequence_hint`` is a
  Lamport counter that never goes below the wall clock in milliseconds, so it
  stays monotonic across restarts without being persisted.
- Keeps per-channel counters and feeds ``tail`` subscribers (bounded queues: a
  slow reader loses its oldest lines, counted, and never slows the node).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from united_core import envelope
from united_core.acceptance import Origin, Reason, Refusal, Verdict
from united_core.api import P2PAPI, NodeAPI, describe_error
from united_core.envelope import SignedMessage

from .config import Config
from .limits import VolumeLimiter

if TYPE_CHECKING:
    from united_directory.model import Channel, MemberSet, Presence

    from united_core.identity import Identity

log = logging.getLogger(__name__)
TAIL_QUEUE = 1000


@dataclass
class TopicStats:
    messages: int = 0
    last_received: float = 0.0
    # Publish-to-delivery latencies (ms, from the envelope timestamp), last 256.
    latencies: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=256)
    )

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


@dataclass(eq=False)
class TailSubscriber:
    topic: str | None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(TAIL_QUEUE))
    dropped: int = 0


class MeshService:
    """Created on first use (hooks may fire while other plugins start); it touches
    the network only once the node runs, then applies what it learned."""

    def __init__(self, config: Config, node: NodeAPI, identity: Identity) -> None:
        self.config = config
        self.node = node
        self.identity = identity
        self.channels: dict[str, Channel] = {}  # subscribed, by topic
        self.wanted: tuple[Channel, ...] = ()
        self.members: MemberSet | None = None  # until the directory's hook says
        self.clock = 0
        self.topic_stats: dict[str, TopicStats] = {}
        self.tails: set[TailSubscriber] = set()
        self.presence: dict[str, tuple[Channel, tuple[Presence, ...]]] = {}  # last known, by topic
        self.limiter = VolumeLimiter(config.rate_limit, config.rate_burst)
        self._lock = asyncio.Lock()

    @property
    def p2p(self) -> P2PAPI:
        return self.node.p2p

    # ---- channels and topics ---------------------------------------------------------

    async def set_channels(self, channels: tuple[Channel, ...]) -> None:
        self.wanted = channels
        if self.node.running:
            await self.apply_channels()

    async def apply_channels(self) -> None:
        if self.members is not None:  # the runtime is up now: apply the server's bonus
            self.set_members(self.members)
        async with self._lock:  # changes apply in order, even when they arrive quickly
            wanted = {c.topic: c for c in self.wanted}
            for topic in set(self.channels) - set(wanted):
                await self.p2p.unsubscribe(topic)
                log.info("left topic %s", topic)
            for topic, channel in wanted.items():
                if topic not in self.channels:
                    await self.p2p.subscribe(topic)
                    log.info("subscribed #%s (%s)", channel.name, topic)
            self.channels = wanted

    def channel(self, ref: str) -> Channel:
        for channel in self.channels.values():
            if ref in (channel.name, channel.channel_id, channel.topic):
                return channel
        raise KeyError(ref)

    async def dial_online(
        self, channel: Channel, online: tuple[Presence, ...], *, force: bool = False
    ) -> None:
        """Dial members online in ``channel`` through the node's dialer; ``force`` drops
        the smaller-PeerId rule. (Redialing a dropped peer is the ``reconnect``
        plugin's job: both sides retry, the larger PeerId after a delay.)"""
        self.presence[channel.topic] = (channel, online)
        if not self.node.running or channel.topic not in {c.topic for c in self.wanted}:
            return
        connected = {p["peer_id"] for p in await self.p2p.peers()}
        budget = self.config.dial_per_channel - sum(1 for p in online if p.peer_id in connected)
        for presence in online:
            if budget <= 0:
                break
            if presence.peer_id in connected or presence.peer_id == self.identity.peer_id:
                continue
            # Of two members that learn of each other at once, only one dials: the
            # one with the smaller PeerId (two simultaneous dials make two connections).
            if presence.peer_id < self.identity.peer_id and not force:
                continue
            try:  # the node's dialer: wildcards refused, the reason recorded (ctl peers)
                await self.p2p.dial(presence.peer_id, presence.addrs)
                budget -= 1
            except Exception as exc:
                log.info("could not dial %s: %s", presence.peer_id, describe_error(exc))

    # ---- messages ----------------------------------------------------------------------

    def next_sequence_hint(self) -> int:
        self.clock = max(self.clock + 1, int(time.time() * 1000))
        return self.clock

    async def send(
        self, channel_ref: str, text: str, message_type: int = envelope.TEXT
    ) -> SignedMessage:
        channel = self.channel(channel_ref)
        sealed = envelope.seal(
            self.identity,
            topic=channel.topic,
            payload=text.encode("utf-8"),
            sequence_hint=self.next_sequence_hint(),
            message_type=message_type,
        )
        return await self.p2p.publish(channel.topic, sealed.wire)

    async def send_invalid(self, channel_ref: str) -> bytes:
        """Publish an envelope whose signature does not verify (test action)."""
        channel = self.channel(channel_ref)
        sealed = envelope.seal(
            self.identity,
            topic=channel.topic,
            payload=b"tampered",
            sequence_hint=self.next_sequence_hint(),
            message_type=envelope.TEST,
        )
        corrupted = sealed.wire[:-1] + bytes(
            [sealed.wire[-1] ^ 0x01]
        )  # payload changed after signing
        await self.p2p.publish_unchecked(channel.topic, corrupted)
        return sealed.id

    def received(self, message: SignedMessage, from_peer: str, received_at: float) -> None:
        # Follow others' counters, but never past "now + the allowed skew": one
        # member's huge hint must not push everyone's counter out of range.
        ceiling = int(time.time() * 1000) + int(self.config.max_future_skew * 1000)
        self.clock = max(self.clock, min(message.sequence_hint, ceiling))
        stats = self.topic_stats.setdefault(message.topic, TopicStats())
        stats.messages += 1
        stats.last_received = received_at
        if from_peer != self.identity.peer_id:
            stats.latencies.append(max(0.0, received_at * 1000 - message.timestamp))
        if not self.tails:
            return
        line = self.describe(message, received_at)
        for tail in list(self.tails):
            if tail.topic not in (None, message.topic):
                continue
            if tail.queue.full():
                tail.queue.get_nowait()
                tail.dropped += 1
            tail.queue.put_nowait(line)

    def set_members(self, members: MemberSet) -> None:
        """A new member list: who to limit, and the server's scoring bonus (P6)."""
        self.members = members
        if self.node.running:
            self.p2p.set_app_scores(
                {peer: self.config.server_score_bonus for peer in members.trusted_peer_ids}
            )

    def judge(self, message: SignedMessage, origin: Origin) -> Refusal | None:
        """Per-member, per-channel volume limits (``rate_limit``/``rate_burst``), on every
        origin but history. The server (trusted, not a member) is not limited."""
        members = self.members
        if (
            origin is Origin.HISTORY
            or members is None
            or message.sender_pubkey not in members.by_key
        ):
            return None
        if self.limiter.allow(
            message.sender_pubkey,
            message.id,
            topic=message.topic,
            submission=origin is Origin.SUBMISSION,
        ):
            return None
        return Refusal(
            Verdict.IGNORE,
            f"the sender is over its volume limit in this channel "
            f"({self.config.rate_limit:g}/s, burst {self.config.rate_burst})",
            Reason.RATE_LIMITED,
        )

    def describe(self, message: SignedMessage, received_at: float) -> dict[str, Any]:
        member = (
            self.members.by_key.get(message.sender_pubkey) if self.members is not None else None
        )
        channel = self.channels.get(message.topic)
        return {
            "channel": channel.name if channel else message.topic,
            "sender": member.display_name
            if member
            else "server"
            if self._is_server(message)
            else "?",
            "sender_peer_id": member.peer_id if member else "",
            "text": message.text,
            "timestamp": message.timestamp,
            "sequence_hint": message.sequence_hint,
            "id": message.id.hex(),
            "received_at": received_at,
        }

    def _is_server(self, message: SignedMessage) -> bool:
        members = self.members
        return (
            members is not None
            and members.allows_key(message.sender_pubkey)
            and message.sender_pubkey not in members.by_key
        )

    @contextlib.asynccontextmanager
    async def tail(self, topic: str | None) -> AsyncIterator[TailSubscriber]:
        subscriber = TailSubscriber(topic)
        self.tails.add(subscriber)
        try:
            yield subscriber
        finally:
            self.tails.discard(subscriber)

    def stats(self) -> dict[str, Any]:
        topics = {}
        for topic, channel in self.channels.items():
            s = self.topic_stats.get(topic, TopicStats())
            topics[channel.name] = {
                "topic": topic,
                "messages": s.messages,
                "last_received": s.last_received or None,
                "latency_p50_ms": s.percentile(0.5),
                "latency_p95_ms": s.percentile(0.95),
            }
        members = self.members
        names: dict[str, str] = {}
        if members is not None:
            names = {m.peer_id: m.display_name for m in members.members}
            names.update({p: "server" for p in members.trusted_peer_ids})
        return {
            "topics": topics,
            "names": names,
            # Tables the console's core Peers section reads (docs/hooks.md).
            "peer_names": names,
            "topic_names": {topic: channel.name for topic, channel in self.channels.items()},
            "subscribed": sorted(c.name for c in self.channels.values()),
            "tails": len(self.tails),
            "volume": self.limiter.stats(),
        }
