"""The P2P runtime: an asyncio-facing handle on a libp2p host running in its own trio thread.

Why this module: it is the one object the node and plugins hold
(:class:`P2PRuntime`, typed for plugins as ``united_core.api.P2PAPI``), and the
place where the runtime's parts are put together and started and stopped in
order. Each part does one job in its own module:

- :mod:`.bridge`: the trio thread, asyncio -> trio calls, the credit-bounded inbox;
- :mod:`.host`: building the host, pubsub and gossipsub router from ``HostOptions``;
- :mod:`.messages`: subscribe, publish (acceptance path, backpressure), judge and
  deliver gossip;
- :mod:`.peers`: connect, disconnect, peers, streams, ping, connection events;
- :mod:`.snapshot`: peer scores (application scores in, scores out) and snapshots.

Shutdown: ``stop()`` sets the trio stop event; the nursery is cancelled, the
pubsub services stop, ``host.close()`` runs before leaving ``host.run()``, the
seen-message cache's thread is stopped and the thread is joined. Calls still
pending, or made afterwards, fail with :class:`RuntimeStopped`.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import multiaddr
import trio
from libp2p.tools.anyio_service import background_trio_service

from ..acceptance import Acceptor
from ..envelope import SignedMessage
from ..identity import Identity
from ..netaddrs import expand_wildcards
from ..threads import asyncio_only
from . import speedups
from .bridge import RuntimeStopped, TrioBridge
from .dialer import Dialer, DialRefused
from .events import AddrsChanged, P2PEvent, PeerConnected, PeerDisconnected, ReachabilityChanged
from .gate import Admissions, PeerGate
from .host import HostContext, build_host, check_ports_free, disable_auto_connector
from .messages import MessagePath
from .options import HostOptions
from .peers import (
    PING_PROTOCOL,
    PING_SIZE,
    PING_TIMEOUT_S,
    AsyncStreamHandler,
    PeerEvents,
    Peers,
    StreamHandle,
    check_dial_backoff,
)
from .ports import remember_ports, sticky_listen
from .pubsub import PubsubCounters, bind_counters, check_adjustments, install_queue_patch
from .services import P2PService, ServiceHost
from .snapshot import AppScores, read_scores, read_snapshot

__all__ = [
    "PING_PROTOCOL",
    "PING_SIZE",
    "PING_TIMEOUT_S",
    "AsyncStreamHandler",
    "DialRefused",
    "Dialer",
    "HostContext",
    "P2PRuntime",
    "RuntimeStopped",
    "StreamHandle",
    "check_ports_free",
    "disable_auto_connector",
]

T = TypeVar("T")
log = logging.getLogger(__name__)


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
        # Peers a service lets in for a moment (an AutoNAT dial-back): gate.Admissions.
        self._admissions = Admissions()
        self._on_host_started = on_host_started
        check_adjustments()
        check_dial_backoff()
        self._queue_patch = install_queue_patch()
        # Speed-ups change cost, not behaviour: on a py-libp2p they were not
        # checked against, the node runs without them (and says so in stats).
        self.speedups_refused = speedups.install()
        if self.speedups_refused is not None and options.speedups:
            log.warning("running without speed-ups: %s", self.speedups_refused)
            options.speedups = ()
        self._bridge = TrioBridge(self.counters, options.inbound_queue_size)
        self._ctx: HostContext | None = None
        self._app_scores = AppScores()
        # The node's one acceptance path; without plugins it checks envelopes only.
        self._messages = MessagePath(
            bridge=self._bridge,
            context=lambda: self.host_context,
            options=options,
            counters=self.counters,
            acceptor=acceptor or Acceptor(),
            peer_id=self.peer_id,
        )
        self._peers = Peers(
            bridge=self._bridge,
            context=lambda: self.host_context,
            dial_timeout=options.dial_timeout,
            hidden=self._admissions.is_transient,
        )
        # The node's one dialer (every plugin's dials go through it: issue 11).
        self.dialer = Dialer(self._peers.dial, self.peer_id)
        self.listen_addrs: list[str] = []
        self.started_at: float | None = None
        # Plugins' trio-side services (services.py), by name, and what they add.
        self._services: dict[str, P2PService] = {}
        for service in options.services:
            if not isinstance(service, P2PService) or service.name in self._services:
                raise ValueError(f"not a P2P service, or a second one named so: {service!r}")
            self._services[service.name] = service
        self._service_addrs: dict[str, tuple[str, ...]] = {}
        # What the last reachability probe said (ReachabilityChanged, from a service).
        self.reachability = "unknown"
        self.nat = "unknown"

    @property
    def acceptor(self) -> Acceptor:
        """The node's one acceptance path (publishes and gossip alike)."""
        return self._messages.acceptor

    @acceptor.setter
    def acceptor(self, acceptor: Acceptor) -> None:
        self._messages.acceptor = acceptor

    # ---- lifecycle (asyncio side) -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._bridge.accepting

    @property
    def host_context(self) -> HostContext:
        if self._ctx is None:
            raise RuntimeStopped("the P2P runtime is not running")
        return self._ctx

    async def start(self) -> None:
        """Start the trio thread and return once the host listens."""
        if self._bridge.started:
            raise RuntimeError("a P2PRuntime starts once")
        requested = self.options.listen_addrs
        self.options.listen_addrs = sticky_listen(requested, self.options.port_file)
        check_ports_free(self.options.listen_addrs)
        await self._bridge.start(self._trio_main, f"united-p2p-{self.peer_id[-6:]}")
        if not self.listen_addrs:  # py-libp2p logs a failed listen and goes on
            await self.stop()
            raise OSError(
                errno.EADDRNOTAVAIL,
                f"cannot listen on {' '.join(self.options.listen_addrs)}: no listener opened",
            )
        self.started_at = time.time()
        remember_ports(self.options.port_file, requested, self.listen_addrs)

    async def stop(self) -> None:
        """Stop the host and join the trio thread. Safe to call more than once."""
        await self._bridge.stop()

    async def wait_stopped(self) -> None:
        """Return when the trio thread has ended (after stop(), or because it failed)."""
        await self._bridge.wait_stopped()

    # ---- the trio thread ------------------------------------------------------------------

    async def _trio_main(self, started: asyncio.Future[None]) -> None:
        bind_counters(self.counters)
        speedups.bind_speedups(self.options.speedups)
        inbox = self._bridge.open()  # stop() works from here on, even while starting
        host, pubsub, gossipsub = build_host(
            self.identity,
            self.options,
            gate=self._admissions.gate(self._gate),
            judge=self._messages.judge,
            deliver=self._messages.deliver,
            counters=self.counters,
            app_score=self._app_scores.get,
            transient=self._admissions.is_transient,
        )
        listen = [multiaddr.Multiaddr(a) for a in self.options.listen_addrs]
        try:
            async with host.run(listen):
                try:
                    async with background_trio_service(pubsub), background_trio_service(gossipsub):
                        await pubsub.wait_until_ready()
                        async with trio.open_nursery() as nursery:
                            host.get_network().register_notifee(
                                PeerEvents(self._bridge.post_event, self.peer_id, self._admissions)
                            )
                            self._ctx = HostContext(host, pubsub, gossipsub, nursery, self.options)
                            if self._on_host_started is not None:
                                self._on_host_started(self._ctx)
                            self.listen_addrs = [str(a) for a in host.get_addrs()]
                            for service in self._services.values():
                                nursery.start_soon(self._run_service, service, host, nursery)
                            await self._bridge.serve(nursery, inbox, started)
                finally:
                    self._bridge.accepting = False
                    with trio.CancelScope(shield=True):
                        await host.close()
        finally:
            self._ctx = None
            pubsub.seen_messages.stop()  # py-libp2p starts a thread per Pubsub and never stops it

    async def _run_service(self, service: P2PService, host: Any, nursery: trio.Nursery) -> None:
        """One plugin service, for the host's lifetime; its failure ends only itself."""
        tools = ServiceHost(
            host=host,
            nursery=nursery,
            allows=self._gate,
            emit=self._bridge.post_event,
            _on_addrs=self._set_service_addrs,
            _on_dialer=self._peers.set_circuit_dialer,
            service=service.name,
            _admissions=self._admissions,
            _on_label=self._peers.label_connection,
        )
        try:
            await service.run(tools)
        except trio.Cancelled:
            raise
        except Exception:
            log.exception("the P2P service %r failed", service.name)

    def _set_service_addrs(self, service: str, addrs: tuple[str, ...]) -> None:
        if self._service_addrs.get(service, ()) == addrs:
            return
        self._service_addrs[service] = addrs
        self._bridge.post_event(AddrsChanged(tuple(self.announce_addrs)))

    @property
    def announce_addrs(self) -> list[str]:
        """What peers can dial: listen addresses with wildcards expanded to this host's
        interfaces (no ``/p2p`` suffix), then the services' (relayed) addresses."""
        own = expand_wildcards(a.split("/p2p/")[0] for a in self.listen_addrs)
        extra = [a for addrs in self._service_addrs.values() for a in addrs]
        return list(dict.fromkeys([*own, *extra]))

    @asyncio_only
    async def call_service(self, name: str, method: str, *args: Any) -> Any:
        """``await service.<method>(*args)`` (or a plain call) on the trio thread."""
        service = self._services.get(name)
        if service is None:
            raise LookupError(f"no P2P service {name!r}")
        fn = getattr(service, method)

        async def run() -> Any:
            result = fn(*args)
            return await result if inspect.isawaitable(result) else result

        return await self._bridge.call(run)

    # ---- asyncio -> trio ------------------------------------------------------------------

    @asyncio_only
    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the trio thread and return its result.

        The trio-side exception, whatever its type, is raised here. Cancelling
        the caller cancels the trio task.
        """
        return await self._bridge.call(fn, *args)

    @asyncio_only
    async def events(self) -> P2PEvent:
        """Return the next event. One consumer (the node's event pump) should call this."""
        event = await self._bridge.next_event()
        if isinstance(event, ReachabilityChanged):
            self.reachability, self.nat = event.reachability, event.nat
        if isinstance(event, PeerConnected):
            self.dialer.connected(event.peer_id, event.addrs, event.direction)
        elif isinstance(event, PeerDisconnected):
            self.dialer.disconnected(event.peer_id)
        return event

    # ---- peers and streams ----------------------------------------------------------------

    @asyncio_only
    async def connect(self, addr: str) -> str:
        """Dial a full multiaddr (with ``/p2p/<id>``) through the dialer; the PeerId."""
        bare, sep, _ = addr.partition("/p2p/")
        peer = addr.rsplit("/p2p/", 1)[-1]
        if not sep or not peer or "/" in peer:
            raise ValueError(f"not a dialable multiaddr with /p2p/: {addr!r}")
        return await self.dialer.dial(peer, [bare])

    @asyncio_only
    async def dial(self, peer_id: str, addrs: list[str] | tuple[str, ...] = ()) -> str:
        """Dial ``peer_id`` at ``addrs`` (else where it was last reached) through the
        node's dialer (wildcards refused, concurrent dials shared, the library's
        dial backoff cleared, the error recorded); return the PeerId."""
        return await self.dialer.dial(peer_id, addrs)

    @asyncio_only
    async def disconnect(self, peer_id: str) -> None:
        await self._peers.disconnect(peer_id)

    @asyncio_only
    async def peers(self) -> list[dict[str, Any]]:
        """Connected peers with their addresses and direction."""
        return await self._peers.peers()

    @asyncio_only
    async def open_stream(self, peer_id: str, protocols: list[str]) -> StreamHandle:
        return await self._peers.open_stream(peer_id, protocols)

    @asyncio_only
    async def set_stream_handler(self, protocol: str, handler: AsyncStreamHandler) -> None:
        """Serve ``protocol`` with an asyncio coroutine (one call per inbound stream)."""
        await self._peers.set_stream_handler(protocol, handler)

    @asyncio_only
    async def ping(self, peer_id: str, count: int = 1) -> list[float]:
        """Round-trip times in ms of ``count`` libp2p pings (``/ipfs/ping/1.0.0``) over
        one stream, timed on the trio side around the write and the echoed read."""
        return await self._peers.ping(peer_id, count)

    # ---- messages -------------------------------------------------------------------------

    @asyncio_only
    async def subscribe(self, topic: str) -> None:
        await self._messages.subscribe(topic)

    @asyncio_only
    async def unsubscribe(self, topic: str) -> None:
        await self._messages.unsubscribe(topic)

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._messages.topics)

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
        return await self._messages.publish(topic, envelope_bytes)

    @asyncio_only
    async def publish_unchecked(self, topic: str, data: bytes) -> None:
        """Publish ``data`` without the acceptance path (a developer test action).

        Lets a test make a member's host send what an attacker would (an invalid
        envelope, a flood, a stale one), to see every receiver refuse it. The
        data is forwarded (with the same backpressure as ``publish``) but not
        delivered locally. Never used otherwise.
        """
        await self._messages.publish_unchecked(topic, data)

    # ---- scores and snapshots -------------------------------------------------------------

    def set_app_scores(self, scores: Mapping[str, float]) -> None:
        """Application-specific scores (gossipsub P6) by PeerId, e.g. the server's bonus.

        Replaces the whole map at once (one reference swap: safe from any thread).
        """
        self._app_scores.set(scores)

    @asyncio_only
    async def scores(self) -> dict[str, float]:
        """Each connected peer's gossipsub score over our subscribed topics."""

        async def read() -> dict[str, float]:
            return read_scores(self.host_context)

        return await self._bridge.call(read)

    @asyncio_only
    async def snapshot(self) -> dict[str, Any]:
        """A consistent view of the host, read on the trio thread."""

        async def read() -> dict[str, Any]:
            snap = read_snapshot(
                self.host_context,
                peer_id=self.peer_id,
                listen_addrs=self.listen_addrs,
                counters=self.counters,
                drop_counting=self._queue_patch,
            )
            snap["announce_addrs"] = self.announce_addrs
            snap["speedups"] = list(self.options.speedups)
            if self.speedups_refused is not None:
                snap["speedups_refused"] = self.speedups_refused
            snap["reachability"] = {"reachability": self.reachability, "nat": self.nat}
            services: dict[str, Any] = {}
            for name, service in self._services.items():
                try:
                    services[name] = dict(service.snapshot())
                except Exception as exc:  # one service's figures never hide the rest
                    services[name] = {"error": f"{type(exc).__name__}: {exc}"}
            snap["services"] = services
            return snap

        return await self._bridge.call(read)
