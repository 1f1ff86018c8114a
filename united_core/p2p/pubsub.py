"""Gossipsub adjustments for py-libp2p 0.8.1 that the runtime needs for correctness.

Each adjustment is named, documented and covered by a test that fails when it
stops taking effect (tests/test_p2p_runtime.py):

- ``CountingRpcQueue`` replaces py-libp2p's per-peer outbound queue class so that
  every rejected push (the library drops silently past 32 RPCs) is counted, and a
  publisher can wait for room instead of having its message dropped.
- ``UnitedGossipSub`` makes the number of peers gossiped to per heartbeat
  (D_lazy) configurable; py-libp2p 0.8.1 hard-codes 6.
- ``UnitedPubsub`` validates *every* message with the runtime's envelope validator
  (py-libp2p only runs validators registered per topic), and hands delivered
  messages to the runtime's own bounded inbox instead of 32-slot per-topic
  channels that drop silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import libp2p
import libp2p.pubsub.pubsub as _pubsub_module
import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, TopicValidator
from libp2p.pubsub.rpc_queue import RpcQueue

log = logging.getLogger(__name__)

SUPPORTED_LIBP2P = ("0.8.",)


@dataclass
class PubsubCounters:
    """Counters the runtime reports in its stats. Written on the trio thread only."""

    published: int = 0
    delivered: int = 0
    rejected: int = 0
    ignored: int = 0
    outbound_drops: int = 0  # RPCs py-libp2p refused to queue for a peer
    inbound_drops: int = 0  # validated messages the inbox had no room for
    publish_waits: int = 0  # publishes that waited for a peer queue to drain
    publish_wait_timeouts: int = 0


# One trio thread runs one runtime: queues created on that thread count into it.
_thread_state = threading.local()


def bind_counters(counters: PubsubCounters) -> None:
    _thread_state.counters = counters


class CountingRpcQueue(RpcQueue):
    """py-libp2p's per-peer RPC queue, with drop counting and a drained event."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.counters: PubsubCounters | None = getattr(_thread_state, "counters", None)
        self._drained = trio.Event()

    def push(self, rpc: rpc_pb2.RPC, priority: bool = False) -> bool:
        ok = super().push(rpc, priority)
        if not ok and not self.closed and self.counters is not None:
            self.counters.outbound_drops += 1
        return ok

    async def pop(self) -> rpc_pb2.RPC | None:
        item = await super().pop()
        self._drained.set()
        self._drained = trio.Event()
        return item

    async def wait_for_room(self, high_water: int) -> None:
        while len(self) >= high_water and not self.closed:
            await self._drained.wait()


def install_queue_patch() -> bool:
    """Make py-libp2p create CountingRpcQueue; False (and a warning) on a version mismatch."""
    version = libp2p.__version__
    if not version.startswith(SUPPORTED_LIBP2P) or not hasattr(_pubsub_module, "RpcQueue"):
        log.warning(
            "py-libp2p %s is not a version this runtime was checked against (%s); "
            "publish backpressure and drop counting are off",
            version,
            ", ".join(v + "x" for v in SUPPORTED_LIBP2P),
        )
        return False
    _pubsub_module.RpcQueue = CountingRpcQueue
    return True


# (forwarder peer id, pubsub message) -> accepted?; the runtime's envelope validator.
MessageValidator = Callable[[ID, rpc_pb2.Message], bool]
# Called with each message that passed validation, on the trio thread.
Deliver = Callable[[rpc_pb2.Message], None]


class UnitedPubsub(Pubsub):
    """Pubsub that validates every topic's messages and delivers to one inbox."""

    def __init__(
        self, *args: object, validator: MessageValidator, deliver: Deliver, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._united_validator: tuple[TopicValidator, ...] = (TopicValidator(validator, False),)
        self._deliver = deliver

    def get_msg_validators(self, msg: rpc_pb2.Message) -> tuple[TopicValidator, ...]:
        return self._united_validator

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        if any(topic in self.topic_ids for topic in publish_message.topicIDs):
            self._deliver(publish_message)


class UnitedGossipSub(GossipSub):
    """GossipSub with a configurable D_lazy (the spec's gossip emission degree)."""

    def __init__(self, *args: object, degree_lazy: int = 6, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.degree_lazy = degree_lazy

    def _get_adaptive_gossip_peers_count(self, topic: str, total_peers: int) -> int:
        if self.adaptive_gossip_enabled:
            return int(super()._get_adaptive_gossip_peers_count(topic, total_peers))
        return max(self.degree_lazy, int(total_peers * 0.25))
