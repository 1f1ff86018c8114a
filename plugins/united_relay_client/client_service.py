"""The relay client's trio side: the ``relay-client`` P2P service on a member (the
only module of this plugin that imports trio or libp2p).

- **STOP** (``/libp2p/circuit/relay/0.2.0/stop``): accepts relayed connections
  from the community's relay (the server) and upgrades them like any inbound
  connection, so the Noise member gate checks the source end to end. The circuit
  address names the relay (py-libp2p 0.8.1 names the destination itself,
  ``relay/circuit_v2/protocol.py:470``).
- **Dialing** ``/p2p-circuit`` addresses: the node's dialer hands them here
  (``ServiceHost.set_circuit_dialer``; py-libp2p's swarm drops relay addresses,
  ``network/swarm.py:818-824``). HOP CONNECT on the relay, then the usual
  outbound upgrade, which registers the connection with the swarm.
- **Reservation**: while wanted (``[relay_client] mode``) and connected to a
  relay, reserve, renew at half the lifetime, again at once after reconnecting
  to the relay, and after a failure with a doubling delay (``retry_min`` to
  ``retry_max``); never py-libp2p's refresh worker, which busy-loops when a
  refresh fails (``relay/circuit_v2/transport.py:883-945``). While reserved the
  node announces ``<relay addr>/p2p/<relay>/p2p-circuit`` (``set_addrs``), the
  relay address being that of this member's own direct connection to the relay.
- **Hole punching** (``[relay_client] hole_punch``, ``holepunch.py``): a relayed
  connection this member received is upgraded to a direct one once, by DCUtR.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.connection_types import ConnectionType
from libp2p.custom_types import TProtocol
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, Reservation, StopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as PbPeerId
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from united_core.api import is_wildcard
from united_core.p2p.services import is_relayed, libp2p_mismatch

from .config import Config
from .holepunch import HolePuncher, missing_calls

if TYPE_CHECKING:
    from united_core.p2p.services import ServiceHost

log = logging.getLogger(__name__)

HOP_PROTOCOL = TProtocol("/libp2p/circuit/relay/0.2.0/hop")
STOP_PROTOCOL = TProtocol("/libp2p/circuit/relay/0.2.0/stop")
CHECKED_LIBP2P = ("0.8.",)  # the py-libp2p line this module was checked against
REQUEST_TIMEOUT = 15.0  # a RESERVE or CONNECT answered by then, a STOP request read
WRITE_TIMEOUT = 5.0
MIN_RENEW = 1.0  # never renew sooner than this after a reservation (no busy loop)

OK = 100
PERMISSION_DENIED = 202
MALFORMED_MESSAGE = 400
STATUS_NAMES = {
    100: "OK",
    200: "RESERVATION_REFUSED",
    201: "RESOURCE_LIMIT_EXCEEDED",
    202: "PERMISSION_DENIED",
    203: "CONNECTION_FAILED",
    204: "NO_RESERVATION",
    400: "MALFORMED_MESSAGE",
    401: "UNEXPECTED_MESSAGE",
}


class Libp2pMismatch(RuntimeError):
    """The installed py-libp2p is not one this client was checked against."""


class RelayRefused(ConnectionError):
    """The relay answered a CONNECT with a status other than OK."""

    def __init__(self, status: int) -> None:
        self.status = STATUS_NAMES.get(status, str(status))
        super().__init__(f"the relay refused the circuit: {self.status}")


def check_libp2p() -> None:
    """Refuse to run on a py-libp2p other than the line checked (see the relay's hop)."""
    from libp2p.host.basic_host import BasicHost

    why = libp2p_mismatch(
        "the relay client",
        CHECKED_LIBP2P,
        attrs={
            BasicHost: (
                "upgrade_inbound_connection",
                "upgrade_outbound_connection",
                "set_stream_handler",
                "remove_stream_handler",
            )
        },
        init_params={RawConnection: ("connection_type", "addresses")},
        proto_fields={
            HopMessage: ("type", "peer", "reservation", "limit", "status"),
            StopMessage: ("type", "peer", "limit", "status"),
        },
    )
    if why is not None:
        raise Libp2pMismatch(f"{why}: relayed connections are off")


def is_outbound(conn: INetConn) -> bool:
    return str(getattr(conn, "direction", "")).rsplit(".", 1)[-1].lower() == "outbound"


def parse_circuit(addr: str) -> tuple[ID, str, ID]:
    """``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<dest>`` -> (relay, relay addr, dest);
    the relay address may be empty (``/p2p/<relay>/p2p-circuit/...``)."""
    head, sep, tail = addr.partition("/p2p-circuit")
    if not sep or "/p2p/" not in head or not tail.startswith("/p2p/"):
        raise ValueError(f"not a circuit address ending in /p2p/<peer>: {addr!r}")
    relay_addr, _, relay = head.rpartition("/p2p/")
    dest = tail.removeprefix("/p2p/").strip("/")
    return ID.from_base58(relay), relay_addr, ID.from_base58(dest)


async def _close(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(WRITE_TIMEOUT):
        try:
            await stream.close()
        except Exception:
            pass


async def _reset(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(WRITE_TIMEOUT):
        try:
            await stream.reset()
        except Exception:
            pass


@dataclass(frozen=True)
class Held:
    """The reservation this member holds."""

    relay: ID
    addr: str  # what the node announces: <relay addr>/p2p/<relay>/p2p-circuit
    expires_at: float  # unix seconds
    renew_at: float
    limited: bool  # the relay sent a Limit (its circuits are cut by duration or data)


class _RelayWatch(INotifee):
    """Connection events of the relays: reserve at once after (re)connecting."""

    def __init__(self, client: RelayClientService) -> None:
        self._client = client

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        if not is_relayed(conn):
            self._client.relay_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        if not is_relayed(conn):
            self._client.relay_disconnected(conn.muxed_conn.peer_id)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class RelayClientService:
    """The ``relay-client`` P2P service. ``configure`` (through
    ``node.p2p.call_service``) says which peers are relays and whether to reserve;
    ``snapshot()`` is thread-safe (figures under a lock)."""

    name = "relay-client"

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._relays: frozenset[str] = frozenset()  # relay peer ids (the server's)
        self._wanted = False
        self._held: Held | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._reservations = 0
        self._last_status: str | None = None
        self._last_error: str | None = None
        self._relayed_in = 0
        self._relayed_out = 0
        self._refused_in = 0
        self._running = False
        self._error: str | None = None
        self._wake: trio.Event | None = None
        self._tools: ServiceHost | None = None
        self._puncher: HolePuncher | None = None
        self._punch_error: str | None = None

    # ---- asyncio side, through call_service (runs on the trio thread) -----------------

    def configure(self, relays: list[str], wanted: bool) -> None:
        """The relays (the member set's trusted peers) and whether to hold a reservation."""
        with self._lock:
            self._relays = frozenset(relays)
            self._wanted = bool(wanted)
        self._kick()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            held = self._held
            return {
                "running": self._running,
                "error": self._error,
                "wanted": self._wanted,
                "relays": sorted(self._relays),
                "reserved": held is not None,
                "relay": held.relay.to_base58() if held else None,
                "addr": held.addr if held else None,
                "expires_at": held.expires_at if held else None,
                "renew_at": held.renew_at if held else None,
                "limited": held.limited if held else None,
                "reservations": self._reservations,
                "failures": self._failures,
                "retry_at": self._retry_at or None,
                "last_status": self._last_status,
                "last_error": self._last_error,
                "relayed_in": self._relayed_in,
                "relayed_out": self._relayed_out,
                "refused_in": self._refused_in,
                "hole_punch": self.config.hole_punch and self._punch_error is None,
                "punch_error": self._punch_error,
                **(self._puncher.snapshot() if self._puncher is not None else {}),
            }

    # ---- lifecycle ---------------------------------------------------------------------

    async def run(self, host: ServiceHost) -> None:
        try:
            check_libp2p()
        except Libp2pMismatch as exc:
            self._error = str(exc)
            raise
        self._tools = host
        network = host.host.get_network()
        watcher = _RelayWatch(self)
        network.register_notifee(watcher)
        host.host.set_stream_handler(STOP_PROTOCOL, self._handle_stop)
        host.set_circuit_dialer(self.dial)
        if self.config.hole_punch:
            missing = missing_calls()
            if missing:
                self._punch_error = f"hole punching off: py-libp2p lacks {', '.join(missing)}"
                log.warning("%s", self._punch_error)
            else:
                self._puncher = HolePuncher(
                    host.host, host.nursery, self._lock, host.label_connection
                )
                self._puncher.start()
        self._running = True
        try:
            await self._keep_reserved()
        finally:
            self._running = False
            if self._puncher is not None:
                self._puncher.stop()
            host.set_circuit_dialer(None)
            host.host.remove_stream_handler(STOP_PROTOCOL)
            network.remove_notifee(watcher)

    @property
    def _host(self) -> IHost:
        assert self._tools is not None, "the relay client is not running"
        return self._tools.host

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ---- connection events (notifee) -----------------------------------------------------

    def relay_connected(self, peer: ID) -> None:
        if peer.to_base58() in self._relays:
            # (Re)connected: reserve now, whatever the backoff said; a reservation
            # held on this relay is renewed now (the relay may have dropped it).
            with self._lock:
                self._failures, self._retry_at = 0, 0.0
                if self._held is not None and self._held.relay == peer:
                    self._held = dataclasses.replace(self._held, renew_at=0.0)
            self._kick()

    def relay_disconnected(self, peer: ID) -> None:
        held = self._held
        if held is not None and held.relay == peer and self._direct_conn(peer) is None:
            self._lose("disconnected from the relay")  # the relay dropped it with the connection
            self._kick()

    # ---- the reservation ----------------------------------------------------------------

    async def _keep_reserved(self) -> None:
        while True:
            self._wake = trio.Event()
            try:
                delay = await self._step()
            except Exception as exc:  # a bug here must not end the STOP handler's service
                log.exception("the reservation loop failed")
                delay = self._failed(f"the reservation loop failed: {exc!r}")
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._wake.wait()

    async def _step(self) -> float:
        """Do what is due; return how long to sleep unless woken."""
        now = time.time()
        held = self._held
        if held is not None:
            why = None
            if held.expires_at <= now:
                why = "it expired"
            elif not self._wanted:
                why = "not wanted any more"
            elif held.relay.to_base58() not in self._relays:
                why = "the peer is no longer a relay"
            elif self._direct_conn(held.relay) is None:
                why = "disconnected from the relay"
            if why is not None:
                self._lose(why)
                held = None
        if not self._wanted or not self._relays:
            return math.inf
        relay = held.relay if held is not None else self._pick_relay()
        if relay is None:
            return math.inf  # woken when a relay connects
        if held is not None and now < held.renew_at:
            return held.renew_at - now
        if now < self._retry_at:
            return self._retry_at - now
        return await self._reserve(relay)

    def _pick_relay(self) -> ID | None:
        for relay in sorted(self._relays):
            try:
                peer = ID.from_base58(relay)
            except Exception:
                continue
            if self._direct_conn(peer) is not None:
                return peer
        return None

    def _direct_conn(self, peer: ID) -> INetConn | None:
        """A direct connection to ``peer``, one this node dialed first."""
        if self._tools is None:
            return None
        conns = [
            c
            for c in list(self._host.get_network().connections.get(peer, ()))
            if not c.is_closed and not is_relayed(c)
        ]
        conns.sort(key=lambda c: not is_outbound(c))
        return conns[0] if conns else None

    async def _reserve(self, relay: ID) -> float:
        now = time.time()
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                stream = await self._host.new_stream(relay, [HOP_PROTOCOL])
                try:
                    await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
                    answer = await read_delimited_msg(stream, HopMessage)
                finally:
                    await _close(stream)
        except Exception as exc:
            return self._failed(f"reservation on {relay} failed: {type(exc).__name__}: {exc}")
        status = int(answer.status)
        if answer.type != HopMessage.STATUS or status != OK or not answer.HasField("reservation"):
            name = STATUS_NAMES.get(status, str(status))
            self._lose(f"the relay refused: {name}")
            return self._failed(f"the relay {relay} refused the reservation: {name}", name)
        expires = float(answer.reservation.expire)
        addr = self._relay_addr(relay, answer.reservation)
        if expires <= now or addr is None:
            why = "an expired reservation" if expires <= now else "no address of the relay"
            return self._failed(f"the relay {relay} gave {why}", "OK")
        held = Held(
            relay=relay,
            addr=f"{addr}/p2p/{relay.to_base58()}/p2p-circuit",
            expires_at=expires,
            renew_at=now + max(MIN_RENEW, (expires - now) / 2),
            limited=answer.HasField("limit"),
        )
        with self._lock:
            first = self._held is None or self._held.addr != held.addr
            self._held = held
            self._reservations += 1
            self._failures, self._retry_at = 0, 0.0
            self._last_status, self._last_error = "OK", None
        if first:
            log.info("reserved a slot on the relay %s: reachable at %s", relay, held.addr)
        assert self._tools is not None
        self._tools.set_addrs([held.addr])  # announced; the runtime ignores a repeat
        return held.renew_at - now

    def _failed(self, error: str, status: str | None = None) -> float:
        with self._lock:
            self._failures += 1
            delay = float(
                min(self.config.retry_max, self.config.retry_min * 2 ** min(self._failures - 1, 30))
            )
            self._retry_at = time.time() + delay
            self._last_status, self._last_error = status, error
        log.info("%s; next attempt in %.0f s", error, delay)
        return delay

    def _lose(self, why: str) -> None:
        with self._lock:
            held, self._held = self._held, None
        if held is not None:
            log.info("reservation on %s lost: %s", held.relay, why)
            assert self._tools is not None
            self._tools.set_addrs(())

    def _relay_addr(self, relay: ID, reservation: Reservation) -> str | None:
        """Where others reach the relay: the address this node's own direct connection
        to it was dialed at; else an address the relay gave (never a wildcard)."""
        conn = self._direct_conn(relay)
        candidates: list[str] = []
        if conn is not None and is_outbound(conn):
            candidates += [str(a) for a in conn.get_transport_addresses()]
        for raw in reservation.addrs:
            try:
                candidates.append(str(multiaddr.Multiaddr(raw)))
            except Exception:
                continue
        for addr in candidates:
            bare = addr.split("/p2p/")[0]
            if bare and "/p2p-circuit" not in addr and not is_wildcard(bare) and "/tcp/" in bare:
                return bare
        return None

    # ---- inbound circuits (STOP) -------------------------------------------------------

    async def _stop_status(self, stream: INetStream, code: int) -> None:
        msg = StopMessage(type=StopMessage.STATUS)
        msg.status = code  # type: ignore[assignment]  # the generated enum's NewType
        with trio.move_on_after(WRITE_TIMEOUT):
            await write_delimited_msg(stream, msg)

    async def _handle_stop(self, stream: INetStream) -> None:
        relay = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                msg = await read_delimited_msg(stream, StopMessage)
            if msg.type != StopMessage.CONNECT or not msg.HasField("peer"):
                await self._refuse_in(stream, MALFORMED_MESSAGE, f"a bad STOP from {relay}")
                return
            src = ID(msg.peer.id)
            if relay.to_base58() not in self._relays or is_relayed(stream.muxed_conn):
                await self._refuse_in(stream, PERMISSION_DENIED, f"{relay} is not our relay")
                return
            if not self._allowed(src):
                await self._refuse_in(stream, PERMISSION_DENIED, f"{src} is not a member")
                return
            await self._stop_status(stream, OK)
            addr = multiaddr.Multiaddr(f"/p2p/{relay.to_base58()}/p2p-circuit/p2p/{src}")
            raw = RawConnection(
                stream=stream,
                initiator=False,
                connection_type=ConnectionType.RELAYED,
                addresses=[addr],
            )
            # The usual inbound upgrade: the Noise member gate checks src here.
            muxed = await self._host.upgrade_inbound_connection(raw, addr)
            with self._lock:
                self._relayed_in += 1
            log.debug("relayed connection from %s through %s", src, relay)
            if self._puncher is not None:
                conn = next(
                    (
                        c
                        for c in list(self._host.get_network().connections.get(src, ()))
                        if c.muxed_conn is muxed
                    ),
                    None,
                )
                if conn is not None:
                    self._puncher.relayed_inbound(conn)  # one hole-punch attempt
        except Exception as exc:
            log.info("a relayed connection through %s failed: %r", relay, exc)
            await _reset(stream)

    async def _refuse_in(self, stream: INetStream, code: int, why: str) -> None:
        with self._lock:
            self._refused_in += 1
        log.info("refused a relayed connection: %s", why)
        await self._stop_status(stream, code)
        await _close(stream)

    def _allowed(self, peer: ID) -> bool:
        if self._tools is None:
            return False
        try:
            return bool(self._tools.allows(peer.to_base58(), "inbound"))
        except Exception:
            return False

    # ---- outbound circuits (the node's dialer) -------------------------------------------

    async def dial(self, addr: str) -> INetConn:
        """Open a relayed connection to ``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<dest>``."""
        relay, relay_addr, dest = parse_circuit(addr)
        if relay.to_base58() not in self._relays:  # only through the community's relay
            raise ConnectionError(f"{relay.to_base58()} is not a relay of this community")
        host = self._host
        if self._direct_conn(relay) is None:
            if not relay_addr:
                raise ConnectionError(f"not connected to the relay {relay} and no address for it")
            await host.connect(PeerInfo(relay, [multiaddr.Multiaddr(relay_addr)]))
        with trio.fail_after(REQUEST_TIMEOUT):
            stream = await host.new_stream(relay, [HOP_PROTOCOL])
            try:
                connect = HopMessage(type=HopMessage.CONNECT, peer=PbPeerId(id=dest.to_bytes()))
                await write_delimited_msg(stream, connect)
                answer = await read_delimited_msg(stream, HopMessage)
            except BaseException:
                await _reset(stream)
                raise
        if answer.type != HopMessage.STATUS or int(answer.status) != OK:
            await _reset(stream)
            raise RelayRefused(int(answer.status))
        circuit = multiaddr.Multiaddr(f"/p2p/{relay.to_base58()}/p2p-circuit/p2p/{dest}")
        raw = RawConnection(
            stream=stream,
            initiator=True,
            connection_type=ConnectionType.RELAYED,
            addresses=[circuit],
        )
        conn = await host.upgrade_outbound_connection(raw, dest)
        with self._lock:
            self._relayed_out += 1
        log.debug("relayed connection to %s through %s", dest, relay)
        return conn
