"""Messages: subscribe, publish, and judge and deliver what gossip brings.

Why a module of its own: every envelope that enters or leaves the host passes
the node's one acceptance path here (``Acceptor.judge``), on the way out
before it is published (origin ``PUBLISH``) and on the way in inside pubsub's
``push_msg`` (origin ``GOSSIP``), and publishing applies the runtime's
backpressure. Peers and streams, and how the host is built, are elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from ..acceptance import Acceptor, Judgement, MessageRefused, Origin
from ..envelope import SignedMessage
from .bridge import TrioBridge
from .events import MessageReceived
from .host import HostContext
from .options import HostOptions
from .pubsub import CountingRpcQueue, PubsubCounters

log = logging.getLogger(__name__)


class MessagePath:
    """Topics, publishing with backpressure, and the gossip side of acceptance."""

    def __init__(
        self,
        *,
        bridge: TrioBridge,
        context: Callable[[], HostContext],
        options: HostOptions,
        counters: PubsubCounters,
        acceptor: Acceptor,
        peer_id: str,
    ) -> None:
        self._bridge = bridge
        self._context = context
        self._options = options
        self._counters = counters
        self.acceptor = acceptor
        self._peer_id = peer_id
        self._publish_slots = asyncio.Semaphore(options.max_inflight_publishes)
        self.topics: set[str] = set()

    # ---- topics (asyncio side) ------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        async def sub() -> None:
            await self._context().pubsub.subscribe(topic)

        await self._bridge.call(sub)
        self.topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        async def unsub() -> None:
            await self._context().pubsub.unsubscribe(topic)

        await self._bridge.call(unsub)
        self.topics.discard(topic)

    # ---- out (asyncio side, then trio) ------------------------------------------------------

    async def publish(self, topic: str, envelope_bytes: bytes) -> SignedMessage:
        judgement = self.acceptor.judge(
            envelope_bytes, Origin.PUBLISH, topic=topic, from_peer=self._peer_id
        )
        if not judgement.accepted or judgement.message is None:
            raise MessageRefused(judgement)
        async with self._publish_slots:
            await self._bridge.call(self._publish_trio, topic, envelope_bytes, judgement.message)
        return judgement.message

    async def publish_unchecked(self, topic: str, data: bytes) -> None:
        async with self._publish_slots:
            await self._bridge.call(self._publish_trio, topic, data, None)

    async def _publish_trio(
        self, topic: str, data: bytes, signed: SignedMessage | None = None
    ) -> None:
        ctx = self._context()
        high_water = self._options.outbound_high_water
        full = [
            q
            for q in list(ctx.pubsub.peer_queues.values())
            if isinstance(q, CountingRpcQueue) and len(q) >= high_water
        ]
        if full:
            self._counters.publish_waits += 1
            with trio.move_on_after(self._options.publish_timeout) as scope:
                for queue in full:
                    await queue.wait_for_room(high_water)
            if scope.cancelled_caught:
                self._counters.publish_wait_timeouts += 1
        if signed is not None:
            ctx.pubsub.own_messages[data] = signed
        try:
            await ctx.pubsub.publish(topic, data)
        finally:
            ctx.pubsub.own_messages.pop(data, None)
        self._counters.published += 1

    # ---- in (trio side, inside pubsub's push_msg) ---------------------------------------

    def judge(self, forwarder: ID, msg: rpc_pb2.Message) -> Judgement:
        """The acceptance path for gossip (trio thread), once per message and topic."""
        return self.acceptor.judge(
            msg.data, Origin.GOSSIP, topic=msg.topicIDs[0], from_peer=forwarder.to_base58()
        )

    def deliver(self, msg: rpc_pb2.Message, signed: SignedMessage) -> None:
        """Hand an accepted message to the inbox (no await: called inside push_msg)."""
        event = MessageReceived(signed, ID(msg.from_id).to_base58(), time.time())
        if not self._bridge.deliver(event):
            log.warning("inbox full: dropped a message on %s", signed.topic)
