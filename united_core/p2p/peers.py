"""Peers and streams: dial, hang up, list connections, open and serve streams, ping.

Why a module of its own: this is everything a plugin does with *connections*
(as opposed to messages), through asyncio-side calls that run on the trio
thread via the bridge, plus the network notifee that turns py-libp2p's
connection events into :class:`PeerConnected` / :class:`PeerDisconnected`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from ..threads import asyncio_only
from .bridge import TrioBridge, run_sync_soon_quietly
from .events import P2PEvent, PeerConnected, PeerDisconnected
from .gate import Admissions
from .host import HostContext
from .pubsub import SUPPORTED_LIBP2P
from .services import CircuitDialer, is_circuit, is_relayed

log = logging.getLogger(__name__)

PING_PROTOCOL = "/ipfs/ping/1.0.0"  # every libp2p host answers it (py-libp2p by default)
PING_SIZE = 32
PING_TIMEOUT_S = 10.0
RELAY_AFTER_S = 1.0  # a relayed dial starts this long after the direct one (happy eyeballs)


class StreamHandle:
    """An asyncio view of a libp2p stream; each operation runs on the trio thread."""

    def __init__(self, bridge: TrioBridge, stream: INetStream) -> None:
        self._bridge = bridge
        self._stream = stream
        self.protocol = str(stream.get_protocol())
        self.peer_id = stream.muxed_conn.peer_id.to_base58()

    @asyncio_only
    async def read(self, max_bytes: int | None = None) -> bytes:
        return await self._bridge.call(self._stream.read, max_bytes)

    @asyncio_only
    async def write(self, data: bytes) -> None:
        await self._bridge.call(self._stream.write, data)

    @asyncio_only
    async def close(self) -> None:
        await self._bridge.call(self._stream.close)

    @asyncio_only
    async def reset(self) -> None:
        await self._bridge.call(self._stream.reset)


AsyncStreamHandler = Callable[[StreamHandle], Coroutine[Any, Any, None]]


class PeerEvents(INotifee):
    """Network notifee: connection events become P2P events (trio side).

    Two peers that dial each other at once end up with two connections (py-libp2p
    caps only its own dials at ``max_connections_per_peer``): both sides then keep
    the one dialed by the smaller PeerId and close the other, so the pair ends
    with exactly one. ``PeerDisconnected`` is posted only when the last
    connection to a peer closes. A transient peer's connections (one a service
    admitted for a moment: ``gate.Admissions``) post nothing.
    """

    DUPLICATE_SETTLE_S = 0.2

    def __init__(
        self,
        post_event: Callable[[P2PEvent], None],
        own_peer_id: str = "",
        admissions: Admissions | None = None,
    ) -> None:
        self._post_event = post_event
        self._own = own_peer_id
        self._admissions = admissions or Admissions()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        others = [c for c in network.connections.get(conn.muxed_conn.peer_id, ()) if c is not conn]
        if self._admissions.opened(peer, first=not others):
            return
        try:
            addrs = tuple(str(a) for a in conn.get_transport_addresses())
        except Exception:
            addrs = ()
        self._post_event(PeerConnected(peer, addrs, direction_of(conn), is_relayed(conn)))
        same_kind = [
            c
            for c in network.connections.get(conn.muxed_conn.peer_id, ())
            if is_relayed(c) == is_relayed(conn)
        ]
        if self._own and len(same_kind) > 1:
            trio.lowlevel.spawn_system_task(
                self._drop_duplicates, network, conn.muxed_conn.peer_id, is_relayed(conn)
            )

    async def _drop_duplicates(self, network: INetwork, peer: ID, relayed: bool) -> None:
        """Of two connections of one kind to ``peer``, close the one the other side
        closes too. A relayed and a direct one coexist (one replaces the other)."""
        try:
            await trio.sleep(self.DUPLICATE_SETTLE_S)  # the other side sees both by now
            conns = [
                c
                for c in list(network.connections.get(peer, ()))
                if not c.is_closed and is_relayed(c) == relayed
            ]
            if len(conns) < 2:
                return
            kept = "outbound" if self._own < peer.to_base58() else "inbound"
            keep = next((c for c in conns if direction_of(c) == kept), conns[0])
            for extra in conns:
                if extra is not keep:
                    log.info("closing a duplicate connection to %s", peer.to_base58())
                    await extra.close()
        except Exception as exc:  # a system task must never raise
            log.debug("could not close a duplicate connection to %s: %r", peer, exc)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        remaining = [
            c
            for c in list(network.connections.get(conn.muxed_conn.peer_id, ()))
            if c is not conn and not c.is_closed
        ]
        peer = conn.muxed_conn.peer_id.to_base58()
        if self._admissions.closed(peer, last=not remaining):
            return
        if not remaining:
            self._post_event(PeerDisconnected(peer))

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class Peers:
    """Connections and streams, asyncio side (each operation runs on the trio thread)."""

    def __init__(
        self,
        *,
        bridge: TrioBridge,
        context: Callable[[], HostContext],
        dial_timeout: float,
        hidden: Callable[[str], bool] = lambda peer_id: False,
    ) -> None:
        self._bridge = bridge
        self._context = context
        self._dial_timeout = dial_timeout
        self._hidden = hidden  # transient peers (gate.Admissions): not listed
        self._circuit_dialer: CircuitDialer | None = None
        # How a connection came about, as a service said (trio thread; dies with it).
        self._labels: weakref.WeakKeyDictionary[INetConn, str] = weakref.WeakKeyDictionary()

    def label_connection(self, conn: INetConn, kind: str) -> None:
        self._labels[conn] = kind

    def set_circuit_dialer(self, dialer: CircuitDialer | None) -> None:
        """How ``/p2p-circuit`` addresses are dialed (a relay-client service sets it)."""
        self._circuit_dialer = dialer

    async def connect(self, addr: str) -> str:
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise ValueError(f"not a dialable multiaddr with /p2p/: {addr!r} ({exc})") from None

        async def dial() -> str:
            with trio.fail_after(self._dial_timeout):
                await self._context().host.connect(info)
            return str(info.peer_id.to_base58())

        return await self._bridge.call(dial)

    async def dial(self, peer_id: str, addrs: list[str]) -> str:
        """Dial ``peer_id`` at exactly ``addrs`` (bare multiaddrs), now.

        Before dialing: py-libp2p's dial backoff for the peer is cleared (the
        caller decided to retry) and the peerstore's addresses for it are
        replaced by ``addrs`` (the swarm dials at most one TCP address per peer,
        the first it knows: a stale one from before a restart would win).
        """
        try:
            peer = ID.from_base58(peer_id)
            mas = [multiaddr.Multiaddr(a) for a in addrs]
        except Exception as exc:
            raise ValueError(f"cannot dial {peer_id!r} at {addrs!r}: {exc}") from None

        direct = [m for m in mas if not is_circuit(str(m))]
        relayed = [str(m) for m in mas if is_circuit(str(m))]
        if relayed and self._circuit_dialer is None and not direct:
            raise ValueError(f"cannot dial {peer_id}: only relayed addresses, and no relay client")

        async def dial_direct() -> None:
            host = self._context().host
            network = host.get_network()
            if not network.connections.get(peer):
                clear_dial_backoff(network, peer)
                with contextlib.suppress(Exception):
                    host.get_peerstore().clear_addrs(peer)
            await host.connect(PeerInfo(peer, direct))

        async def dial_relayed() -> None:
            assert self._circuit_dialer is not None
            errors: list[Exception] = []
            for addr in relayed:
                if not addr.rstrip("/").endswith(f"/p2p/{peer_id}"):
                    addr = f"{addr.rstrip('/')}/p2p/{peer_id}"
                try:
                    await self._circuit_dialer(addr)
                    return
                except Exception as exc:
                    errors.append(exc)
            raise errors[-1] if errors else ConnectionError("no relayed address worked")

        attempts: list[Callable[[], Coroutine[Any, Any, None]]] = []
        if direct:
            attempts.append(dial_direct)
        if relayed and self._circuit_dialer is not None:
            attempts.append(dial_relayed)

        async def dial() -> str:
            # Happy eyeballs: direct first; the relay joins after RELAY_AFTER_S,
            # or as soon as the direct attempt failed. The first to connect wins;
            # the other is cancelled.
            errors: list[BaseException] = []
            done = False
            failed = [trio.Event() for _ in attempts]
            try:
                with trio.fail_after(self._dial_timeout):
                    async with trio.open_nursery() as nursery:

                        async def attempt(i: int, fn: Any) -> None:
                            nonlocal done
                            if i:
                                with trio.move_on_after(RELAY_AFTER_S):
                                    await failed[i - 1].wait()
                            try:
                                await fn()
                            except Exception as exc:
                                errors.append(exc)
                                failed[i].set()
                                return
                            done = True
                            nursery.cancel_scope.cancel()

                        for i, fn in enumerate(attempts):
                            nursery.start_soon(attempt, i, fn)
            except trio.TooSlowError:
                raise TimeoutError(
                    f"no connection within {self._dial_timeout:g} s (dial timeout)"
                ) from None
            if not done:
                raise errors[-1] if errors else ConnectionError(f"could not dial {peer_id}")
            return peer_id

        return await self._bridge.call(dial)

    async def disconnect(self, peer_id: str) -> None:
        async def hang_up() -> None:
            await self._context().host.disconnect(ID.from_base58(peer_id))

        await self._bridge.call(hang_up)

    async def peers(self) -> list[dict[str, Any]]:
        async def collect() -> list[dict[str, Any]]:
            network = self._context().host.get_network()
            out = []
            for peer, conns in list(network.connections.items()):
                if self._hidden(peer.to_base58()):
                    continue
                for conn in list(conns):
                    out.append(
                        {
                            "peer_id": peer.to_base58(),
                            "addrs": [str(a) for a in conn.get_transport_addresses()],
                            "direction": direction_of(conn),
                            "relayed": is_relayed(conn),
                            "kind": self._labels.get(conn)
                            or ("relayed" if is_relayed(conn) else "direct"),
                        }
                    )
            return out

        return await self._bridge.call(collect)

    async def open_stream(self, peer_id: str, protocols: list[str]) -> StreamHandle:
        async def open_() -> StreamHandle:
            stream = await self._context().host.new_stream(
                ID.from_base58(peer_id), [TProtocol(p) for p in protocols]
            )
            return StreamHandle(self._bridge, stream)

        return await self._bridge.call(open_)

    async def set_stream_handler(self, protocol: str, handler: AsyncStreamHandler) -> None:
        loop = asyncio.get_running_loop()
        bridge = self._bridge

        async def on_stream(stream: INetStream) -> None:
            token = trio.lowlevel.current_trio_token()
            finished = trio.Event()
            handle = StreamHandle(bridge, stream)
            cf: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
                handler(handle), loop
            )
            cf.add_done_callback(lambda _: run_sync_soon_quietly(token, finished.set))
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
            self._context().host.set_stream_handler(TProtocol(protocol), on_stream)

        await self._bridge.call(register)

    async def ping(self, peer_id: str, count: int = 1) -> list[float]:
        async def pings() -> list[float]:
            host = self._context().host
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
        return await self._bridge.call(pings)


class DialBackoffMismatch(RuntimeError):
    """The installed py-libp2p keeps its dial backoff where this core does not look."""


def check_dial_backoff() -> None:
    """The adjustment ``clear_dial_backoff`` relies on, checked at start-up.

    py-libp2p 0.8.x: ``Swarm.dial_peer`` refuses a peer for 60 s after all its
    addresses failed (``Swarm._negative_peer_cache``, a ``_NegativePeerCache``);
    ``Swarm.unblock_peer(peer_id)`` lifts that for one peer.
    """
    import libp2p

    version = libp2p.__version__
    if not version.startswith(SUPPORTED_LIBP2P) or not callable(
        getattr(Swarm, "unblock_peer", None)
    ):
        raise DialBackoffMismatch(
            f"py-libp2p {version}: the dial-backoff adjustment was checked against "
            f"{', '.join(v + 'x' for v in SUPPORTED_LIBP2P)} (Swarm.unblock_peer)"
        )


def clear_dial_backoff(network: Any, peer: ID) -> None:
    """Adjustment ``dial-backoff`` (issue 11): forget py-libp2p's 60 s refusal of ``peer``.

    Called only for a dial the dialer decided to make: the policy (the
    ``reconnect`` plugin's backoff) is ours, not the library's fixed minute.
    """
    unblock = getattr(network, "unblock_peer", None)
    if unblock is not None:
        unblock(peer)


def direction_of(conn: INetConn) -> str:
    """``"inbound"`` or ``"outbound"`` (py-libp2p's SwarmConn.direction enum, lower-cased)."""
    return str(getattr(conn, "direction", "unknown")).rsplit(".", 1)[-1].lower()
