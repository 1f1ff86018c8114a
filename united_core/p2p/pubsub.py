"""Gossipsub adjustments for py-libp2p 0.8.1 that the runtime needs for correctness.

Each adjustment is named, documented, checked against the installed py-libp2p
at start-up (:func:`check_adjustments`) and covered by a test that fails when it
stops taking effect (tests/test_p2p_runtime.py, tests/test_gossip_adjustments.py):

- ``CountingRpcQueue`` replaces py-libp2p's per-peer outbound queue class so that
  every rejected push (the library drops silently past 32 RPCs) is counted, and a
  publisher can wait for room instead of having its message dropped.
- ``UnitedGossipSub`` makes the number of peers gossiped to per heartbeat
  (D_lazy) configurable; py-libp2p 0.8.1 hard-codes 6.
- ``UnitedPubsub.push_msg`` judges *every* message through the node's one
  acceptance path (py-libp2p only runs validators registered per topic) and
  replaces py-libp2p's verdict handling:
  - *verdicts keyed by (id, topic)*: py-libp2p caches a verdict by message id
    alone, so a copy sent on the wrong topic first poisoned the genuine one;
  - *one penalty per invalid message*: py-libp2p neither marks a rejected
    message seen nor remembers it, so every re-sent or re-requested copy was
    penalised again; we remember refusals (``RefusedCache``) and drop repeats
    quietly;
  - *IGNORE is not invalid*: py-libp2p scores every failed validation like a
    REJECT (P4); an IGNORE (stale, rate-limited) now costs nobody any score.
  Delivered messages go to the runtime's own bounded inbox instead of 32-slot
  per-topic channels that drop silently.
- ``EnvelopeIdMessageCache`` keys gossipsub's message cache by the envelope id
  (py-libp2p keys it by ``from || seqno`` whatever the message-id function
  says), so IHAVE ids are the ids every node uses and IWANT is served.
- ``UnitedGossipSub.handle_ihave`` does not ask (IWANT) for messages this
  node already refused.
- ``UnitedGossipSub.mesh_heartbeat`` records a backoff for every peer its
  heartbeat prunes (go-libp2p's ``prunePeer`` does; py-libp2p only does when
  leaving a topic). Without it the pruner re-grafted the peer at the next
  heartbeat it ran short, while the pruned peer, which had recorded the
  PRUNE's backoff, took that GRAFT for a flood: a behaviour penalty and a
  PRUNE back, every few heartbeats (379 "GRAFT flood detected" warnings in a
  minute of bench/scale.py), until scores sank and two members of a channel
  stopped receiving its messages over gossip.
- ``UnitedGossipSub.publish`` holds a message back only for peers subscribed
  to its topic whose pubsub stream is not set up yet. py-libp2p also queues a
  copy "optimistically" for every connected peer *not* in the topic, in case
  its subscription is late: on a server with 100 members in 5 channels that
  is 80 list appends, an O(n) prune each and, past 100 per peer, a WARNING per
  peer per message (13,900 in four minutes of bench/scale.py), for peers that
  never subscribe. A late subscriber misses nothing: py-libp2p replays recent
  messages to a new subscriber, and gossip (IHAVE) and the cache's gap-fill
  cover the window too.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import libp2p
import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.mcache import CacheEntry, MessageCache
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.pubsub.score import PeerScorer
from libp2p.pubsub.utils import safe_bytes_from_hex

from ..acceptance import Judgement, Verdict
from ..envelope import SignedMessage, message_id_from_wire
from .services import libp2p_mismatch
from .speedups import SpeedupsPubsub

log = logging.getLogger(__name__)

SUPPORTED_LIBP2P = ("0.8.",)


@dataclass
class PubsubCounters:
    """Counters the runtime reports in its stats. Written on the trio thread only."""

    published: int = 0
    delivered: int = 0
    rejected: int = 0
    ignored: int = 0
    repeats_dropped: int = 0  # copies of refused messages dropped without a second penalty
    duplicates: int = 0  # copies of messages already accepted (redundant traffic)
    iwant_sent: int = 0  # message ids this node asked a peer for (IWANT)
    outbound_drops: int = 0  # RPCs py-libp2p refused to queue for a peer
    inbound_drops: int = 0  # validated messages the inbox had no room for
    publish_waits: int = 0  # publishes that waited for a peer queue to drain
    publish_wait_timeouts: int = 0
    subscriptions_resent: int = 0  # hellos sent again to a peer that re-registered us


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

    def pop_nowait(self) -> rpc_pb2.RPC | None:
        """The next queued RPC if there is one (``batched-writes`` drains the queue)."""
        item = self._queue.pop()
        if item is not None:
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


class AdjustmentMismatch(RuntimeError):
    """The installed py-libp2p is not one the gossip adjustments were checked against."""


def check_adjustments() -> None:
    """Refuse to run on a py-libp2p whose internals the correctness adjustments assume away.

    Checked: the version line, and every attribute the subclasses override or
    rely on. A mismatch stops the node at start-up with this message instead of
    running a mesh whose message ids, verdicts or scores silently disagree.
    """
    why = libp2p_mismatch(
        "the gossip adjustments",
        SUPPORTED_LIBP2P,
        attrs={
            Pubsub: (
                "push_msg",
                "_is_msg_seen",
                "_mark_msg_seen",
                "notify_subscriptions",
                "_handle_new_peer",
                "stream_handler",
                "get_hello_packet",
                "write_msg",
                "_handle_dead_peer",
            ),
            GossipSub: (
                "handle_ihave",
                "emit_iwant",
                "publish",
                "_check_ihave_rate_limit",
                "_check_spam_protection",
                "_check_equivocation",
                "_get_peers_to_send",
                "_emit_idontwant_for_message",
                "_notify_observers",
                "_prune_pending_messages",
                "flush_pending_messages",
                "send_rpc",
                "mesh_heartbeat",
                "_add_back_off",
            ),
            MessageCache: ("put", "get", "window", "shift"),
            PeerScorer: ("remove_peer", "on_heartbeat", "on_invalid_message"),
        },
    )
    if why is not None:
        raise AdjustmentMismatch(why)


class EnvelopeIdMessageCache(MessageCache):
    """Gossipsub's message cache, keyed by the envelope id instead of ``from || seqno``.

    IHAVE announces ids from ``window()`` and IWANT is answered from ``get()``:
    both must use the id every node computes (docs/wire-format.md), or a
    gossip-only link carries each message many times (measured before this
    change: 50 messages, 300 unknown IHAVE ids, 300 redundant copies).
    """

    def put(self, msg: rpc_pb2.Message) -> None:
        mid = message_id_from_wire(msg.data)
        if mid in self.msgs:
            return
        self.msgs[mid] = msg
        self.history[0].append(CacheEntry(mid, msg.topicIDs))


class RefusedCache:
    """Messages refused on a topic, remembered for ``ttl`` seconds (at most ``size``).

    Keyed by (message id, topic): whether an envelope is acceptable depends on
    the topic it arrived on, so a wrong-topic copy must not condemn the
    genuine message. Written and read on the trio thread only.
    """

    def __init__(self, ttl: float, size: int = 65_536) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: collections.OrderedDict[tuple[bytes, str], tuple[float, Verdict]] = (
            collections.OrderedDict()
        )

    def get(self, mid: bytes, topic: str) -> Verdict | None:
        entry = self._entries.get((mid, topic))
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self.ttl:
            del self._entries[(mid, topic)]
            return None
        return entry[1]

    def put(self, mid: bytes, topic: str, verdict: Verdict) -> None:
        self._entries[(mid, topic)] = (time.monotonic(), verdict)
        self._entries.move_to_end((mid, topic))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# (forwarder peer id, pubsub message) -> the acceptance path's judgement (trio thread).
GossipJudge = Callable[[ID, rpc_pb2.Message], Judgement]
# Called with each message that was accepted, on the trio thread.
Deliver = Callable[[rpc_pb2.Message, SignedMessage], None]


class UnitedPubsub(SpeedupsPubsub):
    """Pubsub whose every message goes through the node's acceptance path, once
    (and the speed-ups of :mod:`.speedups`, as switched on)."""

    def __init__(
        self,
        *args: object,
        judge: GossipJudge,
        deliver: Deliver,
        counters: PubsubCounters,
        refused_ttl: float,
        transient: Callable[[str], bool] = lambda peer_id: False,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._transient = transient
        self._judge = judge
        self._deliver = deliver
        self._counters = counters
        self.refused = RefusedCache(refused_ttl)
        # Own publishes, already judged by the runtime on the asyncio side: data -> message.
        self.own_messages: dict[bytes, SignedMessage] = {}

    async def stream_handler(self, stream: INetStream) -> None:
        """An inbound pubsub stream. From a peer we already have a stream to, it
        means the peer re-registered us (its old stream died with a connection,
        e.g. a duplicate closed): it forgot our subscriptions with it, so send them
        again. py-libp2p does not, and the peer then never grafts us: a one-sided
        mesh where our publishes reach nobody."""
        peer_id = stream.muxed_conn.peer_id
        if peer_id in self.peers:
            self.manager.run_task(self._resend_subscriptions, peer_id)
        await super().stream_handler(stream)

    async def _resend_subscriptions(self, peer_id: ID) -> None:
        stream = self.peers.get(peer_id)
        if stream is None:
            return
        self._counters.subscriptions_resent += 1
        if not await self.write_msg(stream, self.get_hello_packet()):
            self._handle_dead_peer(peer_id)  # ours died too: py-libp2p reopens it

    async def _handle_new_peer(self, peer_id: ID) -> None:
        """No pubsub with a transient peer (``gate.Admissions``: an AutoNAT dial-back),
        which speaks none and hangs up at once: py-libp2p would log each try as an error."""
        if self._transient(peer_id.to_base58()):
            return
        await super()._handle_new_peer(peer_id)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        """py-libp2p's push_msg, with our verdict handling (see the module docstring)."""
        if self.is_peer_blacklisted(msg_forwarder) or self.is_peer_blacklisted(ID(msg.from_id)):
            return
        if self._is_msg_seen(msg):
            self._counters.duplicates += 1
            return
        mid = self._msg_id_constructor(msg)
        topics = list(msg.topicIDs)
        topic = topics[0] if len(topics) == 1 else ""
        own = msg_forwarder == self.my_id
        # Refusals are remembered under the envelope id only for authentic
        # envelopes; unauthenticated bytes under the hash of the bytes (see
        # Judgement.authentic): a forged copy never condemns the real message.
        if (
            not own
            and len(self.refused)
            and (  # (hash only while anything is refused)
                self.refused.get(mid, topic) is not None
                or self.refused.get(_raw_key(msg.data), topic) is not None
            )
        ):
            self._counters.repeats_dropped += 1  # refused once already: no second penalty
            return
        scorer = getattr(self.router, "scorer", None)
        if not own and scorer is not None and not scorer.allow_publish(msg_forwarder, topics):
            return
        if self.strict_signing and not self.verify_signature(msg, own=own):
            return
        if own:
            # Judged by P2PRuntime.publish before it got here (or a deliberate
            # test action, publish_unchecked, which is forwarded, not delivered,
            # and not marked seen: it plays a hostile host that sends again).
            signed: SignedMessage | None = self.own_messages.get(msg.data)
        else:
            judgement = self._judge(msg_forwarder, msg) if topic else None
            if judgement is None or not judgement.accepted:
                verdict = judgement.verdict if judgement is not None else Verdict.REJECT
                authentic = judgement is not None and judgement.authentic
                key = mid if authentic else _raw_key(msg.data)
                self.refused.put(key, topic, verdict)
                if verdict is Verdict.REJECT:
                    self._counters.rejected += 1
                    if scorer is not None:
                        for t in topics:
                            scorer.on_invalid_message(msg_forwarder, t)
                else:
                    self._counters.ignored += 1
                return
            signed = judgement.message
        if signed is not None:  # publish_unchecked (a test action) may send it again
            self._mark_msg_seen(msg)
        if scorer is not None and not own:
            for t in topics:
                scorer.on_first_delivery(msg_forwarder, t)
        if ID(msg.from_id) == self.my_id and not own:
            return  # claims to be ours but was not published here
        if signed is not None and any(t in self.topic_ids for t in topics):
            self._deliver(msg, signed)
        await self.router.publish(msg_forwarder, msg)


def retain_penalties(scorer: PeerScorer) -> None:
    """Keep a peer's invalid-message (P4) and behaviour (P7) counters when it disconnects.

    py-libp2p's ``PeerScorer.remove_peer`` forgets them, so a peer that sent
    invalid messages reconnected with a clean score (go-libp2p retains scores
    for a while: ``RetainScore``). The counters stay, keep decaying every
    heartbeat, and are dropped once they have decayed to nothing.
    """
    forget = scorer.remove_peer
    decay = scorer.on_heartbeat

    def remove_peer(peer: ID) -> None:
        invalid = dict(scorer.invalid_messages.get(peer, {}))
        behaviour = scorer.behavior_penalty.get(peer, 0.0)
        forget(peer)
        if any(v > 0 for v in invalid.values()):
            scorer.invalid_messages[peer].update(invalid)
        if behaviour > 0:
            scorer.behavior_penalty[peer] = behaviour

    def on_heartbeat(dt_seconds: float = 1.0) -> None:
        decay(dt_seconds)
        for peer in [p for p, t in scorer.invalid_messages.items() if sum(t.values()) < 1e-3]:
            del scorer.invalid_messages[peer]
        for peer in [p for p, v in scorer.behavior_penalty.items() if v < 1e-3]:
            del scorer.behavior_penalty[peer]

    scorer.remove_peer = remove_peer  # type: ignore[method-assign]
    scorer.on_heartbeat = on_heartbeat  # type: ignore[method-assign]


def _raw_key(data: bytes) -> bytes:
    """What unauthenticated bytes are remembered under (never an envelope id)."""
    return hashlib.sha256(b"united/raw\x00" + data).digest()


class UnitedGossipSub(GossipSub):
    """GossipSub with a configurable D_lazy, an envelope-id message cache, and IHAVE
    handling that does not ask again for what this node refused."""

    def __init__(self, *args: object, degree_lazy: int = 6, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.degree_lazy = degree_lazy
        self.mcache = EnvelopeIdMessageCache(self.mcache.window_size, self.mcache.history_size)
        if self.scorer is not None:
            retain_penalties(self.scorer)

    def mesh_heartbeat(
        self,
    ) -> tuple[collections.defaultdict[ID, list[str]], collections.defaultdict[ID, list[str]]]:
        """py-libp2p's mesh maintenance, with a backoff for each peer it prunes (see
        the module docstring): the pruner does not GRAFT that peer again before the
        PRUNE's backoff ends, so the peer never sees a GRAFT it must punish."""
        peers_to_graft, peers_to_prune = super().mesh_heartbeat()
        for peer, topics in peers_to_prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
        return peers_to_graft, peers_to_prune

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        """py-libp2p 0.8.1's ``GossipSub.publish`` without the optimistic queue for
        peers outside the topic (see the module docstring); the rest as it is."""
        if not self._check_spam_protection(msg_forwarder, pubsub_msg):
            return
        if not self._check_equivocation(pubsub_msg):
            return
        self.mcache.put(pubsub_msg)
        pubsub = self.pubsub
        if pubsub is None:
            return
        msg_id = pubsub.get_message_id(pubsub_msg)
        origin = ID(pubsub_msg.from_id)
        peers = self._get_peers_to_send(
            pubsub_msg.topicIDs, msg_forwarder=msg_forwarder, origin=origin, msg_id=msg_id
        )
        rpc_msg = rpc_pb2.RPC(publish=[pubsub_msg])
        envelope_bytes, _ = _gossipsub_module.env_to_send_in_RPC(pubsub.host)  # type: ignore[attr-defined]
        rpc_msg.senderRecord = envelope_bytes
        await self._emit_idontwant_for_message(msg_id, pubsub_msg.topicIDs)
        await self._notify_observers(pubsub_msg.topicIDs, msg_id)
        topics = list(pubsub_msg.topicIDs)
        for peer_id in peers:
            if peer_id not in pubsub.peers:
                continue
            if self.scorer is not None and not self.scorer.allow_publish(peer_id, topics):
                continue
            self.send_rpc(peer_id, rpc_msg)
        # Subscribed peers whose stream is not set up yet get it once it is
        # (``flush_pending_messages``), as in py-libp2p.
        queued: set[ID] = set()
        for topic in topics:
            for peer_id in pubsub.peer_topics.get(topic, ()):
                if (
                    peer_id in (msg_forwarder, origin)
                    or peer_id in self.peer_protocol
                    or peer_id in self.direct_peers
                    or peer_id in queued
                ):
                    continue
                self._prune_pending_messages(peer_id)
                self._pending_messages[peer_id].append((time.time(), rpc_msg))
                queued.add(peer_id)
        now = time.time()
        for topic in topics:
            self.time_since_last_publish[topic] = int(now)
            self.recent_message_deliveries[topic].append(now)

    def _get_adaptive_gossip_peers_count(self, topic: str, total_peers: int) -> int:
        if self.adaptive_gossip_enabled:
            return int(super()._get_adaptive_gossip_peers_count(topic, total_peers))
        return max(self.degree_lazy, int(total_peers * 0.25))

    async def handle_ihave(self, ihave_msg: rpc_pb2.ControlIHave, sender_peer_id: ID) -> None:
        """py-libp2p's handle_ihave, skipping ids refused on that topic as well as seen ones."""
        if not self._check_ihave_rate_limit(sender_peer_id, ihave_msg.topicID):
            return
        pubsub = self.pubsub
        if pubsub is None:
            return
        refused = getattr(pubsub, "refused", None)
        wanted = []
        for msg_id in ihave_msg.messageIDs:
            mid = safe_bytes_from_hex(msg_id)
            if mid is None or pubsub.seen_messages.has(mid):
                continue
            if refused is not None and refused.get(mid, ihave_msg.topicID) is not None:
                continue
            wanted.append(mid)
        if wanted:
            counters = getattr(pubsub, "_counters", None)
            if counters is not None:
                counters.iwant_sent += len(wanted)
            await self.emit_iwant(wanted, sender_peer_id)
