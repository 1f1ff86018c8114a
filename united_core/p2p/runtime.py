"""The bridge: an asyncio-facing handle on a libp2p host running in its own trio thread.

asyncio -> trio: every public coroutine runs its work as a task in the runtime's
trio nursery and awaits an asyncio future; the asyncio loop never blocks on the
trio thread. Cancelling the asyncio caller cancels the trio task.

trio -> asyncio: peer and message events are posted with
``loop.call_soon_threadsafe``. Messages are bounded by credits: the trio side
takes a credit per message handed over and the asyncio consumer returns it, so a
slow consumer slows delivery (and, past the inbox bound, drops are counted)
instead of growing memory.

Shutdown: ``stop()`` sets the trio stop event; the nursery is cancelled, the
pubsub services stop, ``host.close()`` runs before leaving ``host.run()``, the
seen-message cache's thread is stopped and the thread is joined. Calls still
pending, or made afterwards, fail with :class:`RuntimeStopped`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from ..acceptance import Acceptor, Judgement, MessageRefused, Origin
from ..envelope import SignedMessage, message_id_from_wire
from ..identity import Identity
from ..threads import asyncio_only, register_loop_thread
from .events import MessageReceived, P2PEvent, PeerConnected, PeerDisconnected
from .gate import GatedNoiseTransport, PeerGate
from .options import HostOptions, ScoreSettings
from .pubsub import (
    CountingRpcQueue,
    PubsubCounters,
    UnitedGossipSub,
    UnitedPubsub,
    bind_counters,
    check_adjustments,
    install_queue_patch,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

PING_PROTOCOL = "/ipfs/ping/1.0.0"  # every libp2p host answers it (py-libp2p by default)
PING_SIZE = 32
PING_TIMEOUT_S = 10.0


class RuntimeStopped(RuntimeError):
    """The P2P runtime is not running (not started, stopping or stopped)."""


@dataclass
class HostContext:
    """What trio-side plugin code gets at host construction (``united_p2p_host_started``).

    Use ``nursery`` for trio tasks that must live as long as the host; they are
    cancelled at shutdown before the host closes.
    """

    host: IHost
    pubsub: UnitedPubsub
    gossipsub: UnitedGossipSub
    nursery: trio.Nursery
    options: HostOptions


class StreamHandle:
    """An asyncio view of a libp2p stream; each operation runs on the trio thread."""

    def __init__(self, runtime: P2PRuntime, stream: INetStream) -> None:
        self._runtime = runtime
        self._stream = stream
        self.protocol = str(stream.get_protocol())
        self.peer_id = stream.muxed_conn.peer_id.to_base58()

    async def read(self, max_bytes: int | None = None) -> bytes:
        return await self._runtime.call(self._stream.read, max_bytes)

    async def write(self, data: bytes) -> None:
        await self._runtime.call(self._stream.write, data)

    async def close(self) -> None:
        await self._runtime.call(self._stream.close)

    async def reset(self) -> None:
        await self._runtime.call(self._stream.reset)


AsyncStreamHandler = Callable[[StreamHandle], Coroutine[Any, Any, None]]


class _PeerEvents(INotifee):
    """Network notifee that forwards connection events to the runtime."""

    def __init__(self, runtime: P2PRuntime) -> None:
        self._runtime = runtime

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._runtime._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._runtime._on_disconnected(conn)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


def _accept_all(peer_id: str, direction: str) -> bool:
    return True


class P2PRuntime:
    """A libp2p host (TCP, Noise, Yamux, gossipsub) in a dedicated trio thread."""

    def __init__(
        self,
        identity: Identity,
        options: HostOptions,
        *,
        gate: PeerGate = _accept_all,
        acceptor: Acceptor | None = None,
        on_host_started: Callable[[HostContext], None] | None = None,
    ) -> None:
        self.identity = identity
        self.options = options
        self.peer_id = identity.peer_id
        self.counters = PubsubCounters()
        self._gate = gate
        # The node's one acceptance path; without plugins it checks envelopes only.
        self.acceptor = acceptor or Acceptor()
        self._on_host_started = on_host_started
        check_adjustments()
        self._queue_patch = install_queue_patch()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._accepting = False
        self._done: asyncio.Future[None] | None = None
        self._events: asyncio.Queue[P2PEvent] = asyncio.Queue()
        self._credits: trio.Semaphore | None = None
        self._inbox_send: trio.MemorySendChannel[MessageReceived] | None = None
        self._publish_slots = asyncio.Semaphore(options.max_inflight_publishes)
        self._ctx: HostContext | None = None
        self._app_scores: dict[str, float] = {}
        self._topics: set[str] = set()
        self.listen_addrs: list[str] = []
        self.started_at: float | None = None

    # ---- lifecycle (asyncio side) -------------------------------------------------

    @property
    def running(self) -> bool:
        return self._accepting

    @property
    def host_context(self) -> HostContext:
        if self._ctx is None:
            raise RuntimeStopped("the P2P runtime is not running")
        return self._ctx

    async def start(self) -> None:
        """Start the trio thread and return once the host listens."""
        if self._thread is not None:
            raise RuntimeError("a P2PRuntime starts once")
        check_ports_free(self.options.listen_addrs)
        register_loop_thread()
        loop = asyncio.get_running_loop()
        self._loop = loop
        started: asyncio.Future[None] = loop.create_future()
        self._done = loop.create_future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name=f"united-p2p-{self.peer_id[-6:]}"
        )
        self._thread.start()
        try:
            await started
        except BaseException:
            self._signal_stop()  # e.g. start() itself was cancelled
            await self._join()
            raise
        self.started_at = time.time()

    async def stop(self) -> None:
        """Stop the host and join the trio thread. Safe to call more than once."""
        if self._thread is None or self._done is None:
            return
        self._accepting = False
        self._signal_stop()
        await self._join()

    def _signal_stop(self) -> None:
        token, stop_event = self._token, self._stop_event
        if token is not None and stop_event is not None:
            try:
                token.run_sync_soon(stop_event.set)
            except trio.RunFinishedError:
                pass

    async def wait_stopped(self) -> None:
        """Return when the trio thread has ended (after stop(), or because it failed)."""
        if self._done is not None:
            await asyncio.shield(self._done)

    async def _join(self) -> None:
        assert self._done is not None and self._thread is not None
        await asyncio.shield(self._done)
        self._thread.join()  # the thread is past its last statement: this is immediate

    # ---- the trio thread ----------------------------------------------------------

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the asyncio loop (from the trio thread)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    def _thread_main(self, started: asyncio.Future[None]) -> None:
        try:
            trio.run(self._trio_main, started)
        except BaseException as exc:
            self._post(_settle, started, None, exc)
        finally:
            self._accepting = False
            self._post(_settle, started, None, RuntimeStopped("the P2P runtime stopped"))
            assert self._done is not None
            self._post(_settle, self._done, None, None)

    async def _trio_main(self, started: asyncio.Future[None]) -> None:
        bind_counters(self.counters)
        self._stop_event = trio.Event()
        # Reachable at once, so stop() works even while the host is still starting.
        self._token = trio.lowlevel.current_trio_token()
        self._credits = trio.Semaphore(self.options.inbound_queue_size)
        inbox_send, inbox_recv = trio.open_memory_channel[MessageReceived](
            self.options.inbound_queue_size
        )
        self._inbox_send = inbox_send
        host, pubsub, gossipsub = self._build()
        listen = [multiaddr.Multiaddr(a) for a in self.options.listen_addrs]
        try:
            async with host.run(listen):
                try:
                    async with background_trio_service(pubsub), background_trio_service(gossipsub):
                        await pubsub.wait_until_ready()
                        async with trio.open_nursery() as nursery:
                            self._nursery = nursery
                            nursery.start_soon(self._forward_inbox, inbox_recv)
                            host.get_network().register_notifee(_PeerEvents(self))
                            self._ctx = HostContext(host, pubsub, gossipsub, nursery, self.options)
                            if self._on_host_started is not None:
                                self._on_host_started(self._ctx)
                            self.listen_addrs = [str(a) for a in host.get_addrs()]
                            self._accepting = True
                            self._post(_settle, started, None, None)
                            await self._stop_event.wait()
                            self._accepting = False
                            nursery.cancel_scope.cancel()
                finally:
                    self._accepting = False
                    with trio.CancelScope(shield=True):
                        await host.close()
        finally:
            self._ctx = None
            pubsub.seen_messages.stop()  # py-libp2p starts a thread per Pubsub and never stops it

    def _build(self) -> tuple[IHost, UnitedPubsub, UnitedGossipSub]:
        opts = self.options
        key_pair = create_new_key_pair(self.identity.seed)
        noise = GatedNoiseTransport(
            key_pair, noise_privkey=create_x25519_key_pair().private_key, gate=self._gate
        )
        host = new_host(
            key_pair=key_pair,
            # Noise only: the default also accepts /plaintext/2.0.0 (DESIGN §4).
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            connection_config=ConnectionConfig(
                # One connection per peer: the default dialer's 250 ms happy-eyeballs wait goes.
                max_connections_per_peer=1,
                dial_timeout=opts.dial_timeout,
                # No pruning above 200 connections: there is no global cap by design.
                min_connections=0,
                low_watermark=0,
                high_watermark=opts.max_connections,
                max_connections=opts.max_connections,
            ),
            listen_addrs=[multiaddr.Multiaddr(a) for a in opts.listen_addrs],
        )
        disable_auto_connector(host)
        g = opts.gossip
        gossipsub = UnitedGossipSub(
            protocols=[TProtocol(p) for p in g.protocols],
            degree=g.degree,
            degree_low=g.degree_low,
            degree_high=g.degree_high,
            degree_lazy=g.degree_lazy,
            time_to_live=g.time_to_live,
            gossip_window=g.gossip_window,
            gossip_history=g.gossip_history,
            heartbeat_interval=g.heartbeat_interval,
            score_params=self._score_params(g.scoring) if g.scoring else None,
            adaptive_gossip_enabled=g.adaptive_gossip,
            spam_protection_enabled=g.spam_protection,
            eclipse_protection_enabled=g.eclipse_protection,
        )
        pubsub = UnitedPubsub(
            host,
            gossipsub,
            judge=self._judge,
            deliver=self._deliver,
            counters=self.counters,
            # A refusal is remembered as long as an accepted id is (replays of both stop).
            refused_ttl=g.seen_ttl,
            # Ids are envelope ids, so every implementation that adopts our schema agrees.
            msg_id_constructor=lambda msg: message_id_from_wire(msg.data),
            strict_signing=True,
            seen_ttl=g.seen_ttl,
        )
        return host, pubsub, gossipsub

    def _score_params(self, scoring: ScoreSettings) -> ScoreParams:
        """py-libp2p's ScoreParams from our plain-data settings (trio side)."""

        def app_score(peer: ID) -> float:
            return self._app_scores.get(peer.to_base58(), 0.0)

        return ScoreParams(
            p2_first_message_deliveries=TopicScoreParams(
                weight=scoring.first_delivery_weight,
                cap=scoring.first_delivery_cap,
                decay=scoring.first_delivery_decay,
            ),
            p4_invalid_messages=TopicScoreParams(
                weight=scoring.invalid_weight, cap=1e6, decay=scoring.invalid_decay
            ),
            p6_appl_slack_weight=scoring.app_weight,
            app_specific_score_fn=app_score,
            gossip_threshold=scoring.gossip_threshold,
            publish_threshold=scoring.publish_threshold,
            graylist_threshold=scoring.graylist_threshold,
        )

    def set_app_scores(self, scores: Mapping[str, float]) -> None:
        """Application-specific scores (gossipsub P6) by PeerId, e.g. the server's bonus.

        Replaces the whole map at once (one reference swap: safe from any thread).
        """
        self._app_scores = dict(scores)

    # ---- messages (trio side) -------------------------------------------------------

    def _judge(self, forwarder: ID, msg: rpc_pb2.Message) -> Judgement:
        """The acceptance path for gossip (trio thread), once per message and topic."""
        return self.acceptor.judge(
            msg.data, Origin.GOSSIP, topic=msg.topicIDs[0], from_peer=forwarder.to_base58()
        )

    def _deliver(self, msg: rpc_pb2.Message, signed: SignedMessage) -> None:
        """Hand an accepted message to the inbox (no await: called inside push_msg)."""
        event = MessageReceived(signed, ID(msg.from_id).to_base58(), time.time())
        assert self._inbox_send is not None
        try:
            self._inbox_send.send_nowait(event)
        except trio.WouldBlock:
            self.counters.inbound_drops += 1
            log.warning("inbox full: dropped a message on %s", signed.topic)
        except trio.ClosedResourceError:
            pass

    async def _forward_inbox(self, inbox: trio.MemoryReceiveChannel[MessageReceived]) -> None:
        assert self._credits is not None
        async for event in inbox:
            await self._credits.acquire()
            self.counters.delivered += 1
            self._post(self._events.put_nowait, event)

    # ---- peers (trio side) --------------------------------------------------------

    def _on_connected(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        try:
            addrs = tuple(str(a) for a in conn.get_transport_addresses())
        except Exception:
            addrs = ()
        direction = _direction_of(conn)
        relayed = "relay" in str(getattr(conn, "get_connection_type", lambda: "")()).lower()
        self._post(self._events.put_nowait, PeerConnected(peer, addrs, direction, relayed))

    def _on_disconnected(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        self._post(self._events.put_nowait, PeerDisconnected(peer))

    # ---- asyncio -> trio calls ------------------------------------------------------

    @asyncio_only
    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the trio thread and return its result.

        The trio-side exception, whatever its type, is raised here. Cancelling
        the caller cancels the trio task.
        """
        token = self._token
        if not self._accepting or token is None:
            raise RuntimeStopped("the P2P runtime is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        handle = _CallHandle()

        def spawn() -> None:
            if not self._accepting or self._nursery is None:
                self._post(_settle, future, None, RuntimeStopped("the P2P runtime is stopping"))
                return
            self._nursery.start_soon(self._run_call, future, handle, fn, args)

        try:
            token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise RuntimeStopped("the P2P runtime has stopped") from None
        try:
            return await future
        except asyncio.CancelledError:
            try:
                token.run_sync_soon(handle.cancel)
            except trio.RunFinishedError:
                pass
            raise

    async def _run_call(
        self,
        future: asyncio.Future[Any],
        handle: _CallHandle,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
    ) -> None:
        with trio.CancelScope() as scope:
            handle.scope = scope
            if handle.cancelled:  # the caller gave up before this task ran
                scope.cancel()
            try:
                result = await fn(*args)
            except trio.Cancelled:
                self._post(_settle, future, None, RuntimeStopped("the call was cancelled"))
                raise
            except BaseException as exc:
                self._post(_settle, future, None, exc)
            else:
                self._post(_settle, future, result, None)
                return
        if scope.cancelled_caught:
            self._post(_settle, future, None, RuntimeStopped("the call was cancelled"))

    # ---- public operations (asyncio side) -------------------------------------------

    @asyncio_only
    async def events(self) -> P2PEvent:
        """Return the next event. One consumer (the node's event pump) should call this."""
        event = await self._events.get()
        if isinstance(event, MessageReceived):
            self._return_credit()
        return event

    def _return_credit(self) -> None:
        token, credits = self._token, self._credits
        if token is None or credits is None:
            return
        try:
            token.run_sync_soon(credits.release)
        except trio.RunFinishedError:
            pass

    @asyncio_only
    async def connect(self, addr: str) -> str:
        """Dial a full multiaddr (with ``/p2p/<id>``); return the remote PeerId."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise ValueError(f"not a dialable multiaddr with /p2p/: {addr!r} ({exc})") from None

        async def dial() -> str:
            with trio.fail_after(self.options.dial_timeout):
                await self.host_context.host.connect(info)
            return str(info.peer_id.to_base58())

        return await self.call(dial)

    @asyncio_only
    async def disconnect(self, peer_id: str) -> None:
        async def hang_up() -> None:
            await self.host_context.host.disconnect(ID.from_base58(peer_id))

        await self.call(hang_up)

    @asyncio_only
    async def peers(self) -> list[dict[str, Any]]:
        """Connected peers with their addresses and direction."""

        async def collect() -> list[dict[str, Any]]:
            network = self.host_context.host.get_network()
            out = []
            for peer, conns in list(network.connections.items()):
                for conn in list(conns):
                    out.append(
                        {
                            "peer_id": peer.to_base58(),
                            "addrs": [str(a) for a in conn.get_transport_addresses()],
                            "direction": _direction_of(conn),
                        }
                    )
            return out

        return await self.call(collect)

    @asyncio_only
    async def open_stream(self, peer_id: str, protocols: list[str]) -> StreamHandle:
        async def open_() -> StreamHandle:
            stream = await self.host_context.host.new_stream(
                ID.from_base58(peer_id), [TProtocol(p) for p in protocols]
            )
            return StreamHandle(self, stream)

        return await self.call(open_)

    @asyncio_only
    async def set_stream_handler(self, protocol: str, handler: AsyncStreamHandler) -> None:
        """Serve ``protocol`` with an asyncio coroutine (one call per inbound stream)."""
        loop = asyncio.get_running_loop()

        async def on_stream(stream: INetStream) -> None:
            token = trio.lowlevel.current_trio_token()
            finished = trio.Event()
            handle = StreamHandle(self, stream)
            cf: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
                handler(handle), loop
            )
            cf.add_done_callback(lambda _: _run_sync_soon_quietly(token, finished.set))
            try:
                await finished.wait()
            finally:
                failed = not cf.done() or cf.cancelled() or cf.exception() is not None
                if not cf.done():
                    cf.cancel()
                elif not cf.cancelled() and cf.exception() is not None:
                    log.warning("stream handler for %s failed: %r", protocol, cf.exception())
                if failed:
                    with trio.CancelScope(shield=True):
                        await stream.reset()

        async def register() -> None:
            self.host_context.host.set_stream_handler(TProtocol(protocol), on_stream)

        await self.call(register)

    @asyncio_only
    async def subscribe(self, topic: str) -> None:
        async def sub() -> None:
            await self.host_context.pubsub.subscribe(topic)

        await self.call(sub)
        self._topics.add(topic)

    @asyncio_only
    async def unsubscribe(self, topic: str) -> None:
        async def unsub() -> None:
            await self.host_context.pubsub.unsubscribe(topic)

        await self.call(unsub)
        self._topics.discard(topic)

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._topics)

    @asyncio_only
    async def publish(self, topic: str, envelope_bytes: bytes) -> SignedMessage:
        """Publish a sealed envelope on ``topic``; return it as accepted.

        The envelope goes through the node's acceptance path first (origin
        ``PUBLISH``: the same checks and plugin validators every peer will run),
        and :class:`~united_core.acceptance.MessageRefused` says why when it is
        refused, instead of a publish that nobody will ever deliver.

        Backpressure: at most ``max_inflight_publishes`` publishes run at once, and
        each waits (up to ``publish_timeout``) until no peer's outbound queue is
        above ``outbound_high_water``; any RPC py-libp2p still refuses is counted
        in ``outbound_drops``.
        """
        judgement = self.acceptor.judge(
            envelope_bytes, Origin.PUBLISH, topic=topic, from_peer=self.peer_id
        )
        if not judgement.accepted or judgement.message is None:
            raise MessageRefused(judgement)
        async with self._publish_slots:
            await self.call(self._publish_trio, topic, envelope_bytes, judgement.message)
        return judgement.message

    async def _publish_trio(
        self, topic: str, data: bytes, signed: SignedMessage | None = None
    ) -> None:
        ctx = self.host_context
        high_water = self.options.outbound_high_water
        full = [
            q
            for q in list(ctx.pubsub.peer_queues.values())
            if isinstance(q, CountingRpcQueue) and len(q) >= high_water
        ]
        if full:
            self.counters.publish_waits += 1
            with trio.move_on_after(self.options.publish_timeout) as scope:
                for queue in full:
                    await queue.wait_for_room(high_water)
            if scope.cancelled_caught:
                self.counters.publish_wait_timeouts += 1
        if signed is not None:
            ctx.pubsub.own_messages[data] = signed
        try:
            await ctx.pubsub.publish(topic, data)
        finally:
            ctx.pubsub.own_messages.pop(data, None)
        self.counters.published += 1

    @asyncio_only
    async def publish_unchecked(self, topic: str, data: bytes) -> None:
        """Publish ``data`` without the acceptance path (a developer test action).

        Lets a test make a member's host send what an attacker would (an invalid
        envelope, a flood, a stale one), to see every receiver refuse it. The
        data is forwarded (with the same backpressure as ``publish``) but not
        delivered locally. Never used otherwise.
        """
        async with self._publish_slots:
            await self.call(self._publish_trio, topic, data, None)

    @asyncio_only
    async def ping(self, peer_id: str, count: int = 1) -> list[float]:
        """Round-trip times in ms of ``count`` libp2p pings (``/ipfs/ping/1.0.0``) over
        one stream, timed on the trio side around the write and the echoed read."""

        async def pings() -> list[float]:
            host = self.host_context.host
            rtts = []
            with trio.fail_after(PING_TIMEOUT_S):
                stream = await host.new_stream(ID.from_base58(peer_id), [TProtocol(PING_PROTOCOL)])
                try:
                    for _ in range(count):
                        payload = secrets.token_bytes(PING_SIZE)
                        start = time.perf_counter()
                        await stream.write(payload)
                        echoed = b""
                        while len(echoed) < PING_SIZE:
                            chunk = await stream.read(PING_SIZE - len(echoed))
                            if not chunk:
                                raise ConnectionError("the peer closed the ping stream")
                            echoed += chunk
                        rtts.append((time.perf_counter() - start) * 1000)
                        if echoed != payload:
                            raise ValueError("the peer echoed a different payload")
                finally:
                    await stream.close()
            return rtts

        try:
            ID.from_base58(peer_id)
        except Exception:
            raise ValueError(f"not a PeerId: {peer_id!r}") from None
        return await self.call(pings)

    @asyncio_only
    async def scores(self) -> dict[str, float]:
        """Each connected peer's gossipsub score over our subscribed topics."""

        async def read() -> dict[str, float]:
            ctx = self.host_context
            scorer = getattr(ctx.gossipsub, "scorer", None)
            topics = list(ctx.pubsub.topic_ids)
            peers = list(ctx.host.get_network().connections)
            if scorer is None:
                return {}
            return {p.to_base58(): round(float(scorer.score(p, topics)), 3) for p in peers}

        return await self.call(read)

    @asyncio_only
    async def snapshot(self) -> dict[str, Any]:
        """A consistent view of the host, read on the trio thread."""

        async def read() -> dict[str, Any]:
            ctx = self.host_context
            mesh = {
                t: sorted(p.to_base58() for p in peers) for t, peers in ctx.gossipsub.mesh.items()
            }
            queues = {p.to_base58(): len(q) for p, q in list(ctx.pubsub.peer_queues.items())}
            return {
                "peer_id": self.peer_id,
                "listen_addrs": list(self.listen_addrs),
                "topics": sorted(ctx.pubsub.topic_ids),
                "mesh": mesh,
                "outbound_queue_lengths": queues,
                "counters": asdict(self.counters),
                "drop_counting": self._queue_patch,
            }

        return await self.call(read)


def disable_auto_connector(host: IHost) -> None:
    """Keep py-libp2p's AutoConnector from ever starting.

    It dials peerstore entries until the connection count reaches the midpoint
    of the watermarks (50,000 with ours): the plugins decide whom to dial
    (DESIGN §2). Its ``start()`` is replaced on this instance only, so
    ``maybe_connect`` and the periodic task stay no-ops.
    """
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is None:
        log.warning("py-libp2p has no auto_connector here; nothing to disable")
        return

    async def never_start() -> None:
        return None

    connector.start = never_start


def check_ports_free(listen_addrs: tuple[str, ...]) -> None:
    """Fail with EADDRINUSE if a fixed listen port is taken.

    py-libp2p 0.8.1 binds with SO_REUSEPORT, so a second node on the same port
    "starts" and the kernel splits incoming connections between the two. A
    plain bind (no reuse flags) detects the conflict before that can happen.
    """
    for addr in listen_addrs:
        ma = multiaddr.Multiaddr(addr)
        protocols = {p.name for p in ma.protocols()}
        if "tcp" not in protocols or int(ma.value_for_protocol("tcp")) == 0:
            continue
        family = socket.AF_INET6 if "ip6" in protocols else socket.AF_INET
        ip = ma.value_for_protocol("ip6" if "ip6" in protocols else "ip4")
        port = int(ma.value_for_protocol("tcp"))
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: TIME_WAIT leftovers of a previous run are fine; an
            # active listener (with or without reuse flags) still conflicts.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ip, port))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {addr}: {exc.strerror}") from None


def _direction_of(conn: INetConn) -> str:
    """``"inbound"`` or ``"outbound"`` (py-libp2p's SwarmConn.direction enum, lower-cased)."""
    return str(getattr(conn, "direction", "unknown")).rsplit(".", 1)[-1].lower()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class _CallHandle:
    """Lets an asyncio caller cancel its trio task, even before the task has run."""

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


def _run_sync_soon_quietly(token: trio.lowlevel.TrioToken, fn: Callable[[], object]) -> None:
    try:
        token.run_sync_soon(fn)
    except trio.RunFinishedError:
        pass
