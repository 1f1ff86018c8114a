"""The relay's trio side: a members-only Circuit Relay v2 hop, run as the ``relay``
P2P service inside the server's libp2p host (the only module of this plugin that
imports trio or libp2p).

It serves ``/libp2p/circuit/relay/0.2.0/hop`` itself rather than through
py-libp2p's ``CircuitV2Protocol`` (0.8.1, ``relay/circuit_v2/protocol.py``),
whose hop (docs/relay.md, "py-libp2p") has no ACL; leaks a circuit's slot when a
limit cuts it (a local Yamux reset does not wake the sibling pump's read,
``yamux.py:618-641``, ``:969-974``; the slot is freed in ``protocol.py:781-786``,
never reached); checks the duration only when a byte flows (``:846-860``);
answers NO_RESERVATION for a full circuit count (``:646-655``); keys circuits by
peer, so one circuit's end closes another's to the same member (``:672``,
``:722``, ``:928-932``); treats ``data=0`` as "no byte allowed" (``:762``,
``:889-910``); always sends a ``Limit`` (``:594-597``, ``:687-694``,
``:740-748``), which go and js read as "limited, no gossipsub"; and takes the
reserving peer from the message (``:510-513``), which anyone can spoof. Only the
wire format (its protobufs and varint framing) is borrowed.

What this hop does instead:

- one request per stream; a request over a relayed connection is refused;
- RESERVE: the peer is the connection's authenticated one; a non-member gets
  PERMISSION_DENIED, a full table RESERVATION_REFUSED; a member's reservation is
  dropped as soon as its last connection closes;
- CONNECT: source and destination must be members (PERMISSION_DENIED), the
  destination must hold a reservation (NO_RESERVATION), per-peer and total
  circuit counts have room (RESOURCE_LIMIT_EXCEEDED), the destination answers
  STOP in time (CONNECTION_FAILED); then the two streams are spliced;
- the splice: two pumps in one nursery. The duration limit is a trio deadline
  (it fires on an idle circuit), the data limit ends both pumps, an error or
  reset on either leg ends both; whatever ended it, both streams are reset and
  the circuit's counts are released (``finally``). A token bucket per circuit
  direction and one for the whole relay cap the bandwidth (traffic waits);
- a ``Limit`` is sent only when ``circuit_duration`` or ``circuit_data`` is set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.envelope import Envelope, make_unsigned
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import (
    HopMessage,
    Limit,
    Reservation,
    StopMessage,
    Voucher,
)
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as PbPeerId
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from united_core.api import expand_wildcards, is_wildcard
from united_core.p2p.services import is_relayed, libp2p_mismatch

from .config import Config

if TYPE_CHECKING:
    from united_core.p2p.gate import PeerGate
    from united_core.p2p.services import ServiceHost

log = logging.getLogger(__name__)

HOP_PROTOCOL = TProtocol("/libp2p/circuit/relay/0.2.0/hop")
STOP_PROTOCOL = TProtocol("/libp2p/circuit/relay/0.2.0/stop")
# The py-libp2p line this module was checked against (as the core's gossip adjustments).
CHECKED_LIBP2P = ("0.8.",)
READ_TIMEOUT = 15.0  # a request must arrive this long after its stream opened
CONNECT_TIMEOUT = 10.0  # the destination's answer to STOP CONNECT
WRITE_TIMEOUT = 5.0  # a status (or a reset) that cannot be written by then is dropped
READ_SIZE = 64 * 1024
HALF_CLOSED_GRACE = 30.0  # a circuit one side has closed is reset this long after
PAIR_CIRCUITS = 4  # live circuits one member may hold to one other member
# Reservation vouchers (spec: a signed envelope over Voucher{relay, peer, expiration}).
VOUCHER_DOMAIN = "libp2p-relay-rsvp"
VOUCHER_PAYLOAD_TYPE = bytes([0x03, 0x02])

# Circuit Relay v2 status codes (circuit.proto); names appear in stats.
OK = 100
RESERVATION_REFUSED = 200
RESOURCE_LIMIT_EXCEEDED = 201
PERMISSION_DENIED = 202
CONNECTION_FAILED = 203
NO_RESERVATION = 204
MALFORMED_MESSAGE = 400
UNEXPECTED_MESSAGE = 401
STATUS_NAMES = {
    OK: "OK",
    RESERVATION_REFUSED: "RESERVATION_REFUSED",
    RESOURCE_LIMIT_EXCEEDED: "RESOURCE_LIMIT_EXCEEDED",
    PERMISSION_DENIED: "PERMISSION_DENIED",
    CONNECTION_FAILED: "CONNECTION_FAILED",
    NO_RESERVATION: "NO_RESERVATION",
    MALFORMED_MESSAGE: "MALFORMED_MESSAGE",
    UNEXPECTED_MESSAGE: "UNEXPECTED_MESSAGE",
}


class Libp2pMismatch(RuntimeError):
    """The installed py-libp2p is not one this hop was checked against."""


def check_libp2p() -> None:
    """Refuse to serve on a py-libp2p whose internals this module assumes differently:
    the version line, the relay protobufs' fields, a raw connection that carries its
    type and addresses, and the host calls that register an upgraded connection."""
    from libp2p.host.basic_host import BasicHost
    from libp2p.network.connection.raw_connection import RawConnection
    from libp2p.network.swarm import Swarm

    why = libp2p_mismatch(
        "the relay",
        CHECKED_LIBP2P,
        attrs={
            BasicHost: ("set_stream_handler", "remove_stream_handler", "new_stream"),
            Swarm: ("register_notifee", "remove_notifee", "connections"),
        },
        init_params={RawConnection: ("connection_type", "addresses")},
        proto_fields={
            HopMessage: ("type", "peer", "reservation", "limit", "status"),
            StopMessage: ("type", "peer", "limit", "status"),
            Reservation: ("expire", "addrs", "voucher"),
            Limit: ("duration", "data"),
        },
    )
    if why is not None:
        raise Libp2pMismatch(f"{why}: the relay is off")


class TokenBucket:
    """A bandwidth cap: ``take(n)`` waits until ``n`` bytes fit ``rate`` bytes/s.

    Tokens may go negative (the taker sleeps off the debt), so concurrent takers
    share the rate and a chunk larger than the bucket still passes.
    """

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.capacity = max(self.rate, float(READ_SIZE))  # one read always fits a full bucket
        self.tokens = self.capacity
        self.stamp: float | None = None

    async def take(self, n: int) -> None:
        now = trio.current_time()
        if self.stamp is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await trio.sleep(-self.tokens / self.rate)


@dataclass
class _Circuit:
    """One splice: why it ended (``closed`` unless a pump says otherwise)."""

    reason: str = "closed"


async def _reset(stream: INetStream | None) -> None:
    if stream is None:
        return
    with trio.move_on_after(WRITE_TIMEOUT):
        try:
            await stream.reset()
        except Exception:
            pass


def has_direct_connection(network: INetwork, peer: ID, besides: INetConn | None = None) -> bool:
    """Whether ``peer`` has an open direct (not relayed) connection other than ``besides``."""
    return any(
        c is not besides and not c.is_closed and not is_relayed(c)
        for c in list(network.connections.get(peer, ()))
    )


class _Disconnects(INotifee):
    """Drops a member's reservation once its last direct connection closes (go does;
    otherwise a departed member holds a slot for the rest of its TTL)."""

    def __init__(self, relay: RelayService) -> None:
        self._relay = relay

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if not has_direct_connection(network, peer, besides=conn):
            self._relay.drop_reservation(peer)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class RelayService:
    """The ``relay`` P2P service. Its figures (``snapshot()``) are kept under a lock:
    the runtime reads them on the trio thread, the plugin's stats on the asyncio side."""

    name = "relay"

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        # Everything below is written on the trio thread under _lock.
        self._reservations: dict[ID, int] = {}  # member -> expiry (unix seconds)
        self._circuits: Counter[ID] = Counter()  # live circuits per member, as source or dest
        # Live circuits per (source, destination): one member cannot take all of
        # another's max_circuits_per_peer slots and lock it out of the relay.
        self._pairs: Counter[tuple[ID, ID]] = Counter()
        self._active = 0
        self._reservations_made = 0
        self._renewals = 0
        self._reservations_dropped = 0
        self._circuits_total = 0
        self._bytes = 0
        self._refused: dict[str, Counter[str]] = {"reserve": Counter(), "connect": Counter()}
        self._ended: Counter[str] = Counter()
        self._total_bucket = TokenBucket(config.bandwidth) if config.bandwidth else None
        self._host: IHost | None = None
        self._gate: PeerGate | None = None
        self._running = False
        self._error = ""

    # ---- lifecycle (trio) -------------------------------------------------------------

    async def run(self, host: ServiceHost) -> None:
        try:
            check_libp2p()
        except Libp2pMismatch as exc:
            self._error = str(exc)
            raise
        self._host, self._gate = host.host, host.allows
        network = host.host.get_network()
        watcher = _Disconnects(self)
        network.register_notifee(watcher)
        host.host.set_stream_handler(HOP_PROTOCOL, self._handle_hop)
        self._running = True
        log.info(
            "relaying for members: %d reservations, %d circuits per member, %s",
            self.config.max_reservations,
            self.config.max_circuits_per_peer,
            "limited circuits" if self.config.limited else "unlimited circuits",
        )
        try:
            await trio.sleep_forever()
        finally:
            self._running = False
            host.host.remove_stream_handler(HOP_PROTOCOL)
            network.remove_notifee(watcher)

    # ---- figures (either thread) --------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        cfg = self.config
        now = time.time()
        with self._lock:
            live = {p: e for p, e in self._reservations.items() if e > now}
            return {
                "running": self._running,
                "error": self._error or None,
                "reservations": len(live),
                "max_reservations": cfg.max_reservations,
                "reserved_peers": sorted(p.to_base58() for p in live),
                "reservations_made": self._reservations_made,
                "renewals": self._renewals,
                "reservations_dropped": self._reservations_dropped,
                "circuits": self._active,
                "max_circuits": cfg.max_circuits,
                "max_circuits_per_peer": cfg.max_circuits_per_peer,
                "circuits_by_peer": {p.to_base58(): n for p, n in self._circuits.items() if n},
                "circuits_total": self._circuits_total,
                "refused": {kind: dict(c) for kind, c in self._refused.items()},
                "ended": dict(self._ended),
                "bytes_relayed": self._bytes,
                "limits": {
                    "circuit_duration": cfg.circuit_duration,
                    "circuit_data": cfg.circuit_data,
                    "circuit_bandwidth": cfg.circuit_bandwidth,
                    "bandwidth": cfg.bandwidth,
                    "limited": cfg.limited,
                },
            }

    # ---- reservations -------------------------------------------------------------------

    def drop_reservation(self, peer: ID) -> None:
        with self._lock:
            if self._reservations.pop(peer, None) is not None:
                self._reservations_dropped += 1
                log.debug("reservation of %s dropped: disconnected", peer)

    def _purge(self, now: float) -> None:
        """Forget expired reservations (caller holds the lock)."""
        for peer in [p for p, e in self._reservations.items() if e <= now]:
            del self._reservations[peer]

    def _allowed(self, peer: ID, direction: str) -> bool:
        gate = self._gate
        if gate is None:
            return False
        try:
            return bool(gate(peer.to_base58(), direction))
        except Exception:  # a broken policy fails closed
            log.exception("member gate raised for %s; refusing", peer)
            return False

    def _limit(self) -> Limit | None:
        cfg = self.config
        if not cfg.limited:
            return None  # members' mesh traffic must not run over a "limited" connection
        limit = Limit()
        if cfg.circuit_duration:
            limit.duration = cfg.circuit_duration
        if cfg.circuit_data:
            limit.data = cfg.circuit_data
        return limit

    async def _status(
        self,
        stream: INetStream,
        code: int,
        *,
        reservation: Reservation | None = None,
        limit: Limit | None = None,
    ) -> None:
        msg = HopMessage(type=HopMessage.STATUS)
        msg.status = code  # type: ignore[assignment]  # the generated enum's NewType
        if reservation is not None:
            msg.reservation.CopyFrom(reservation)
        if limit is not None:
            msg.limit.CopyFrom(limit)
        with trio.move_on_after(WRITE_TIMEOUT):
            await write_delimited_msg(stream, msg)

    async def _refuse(self, stream: INetStream, kind: str, code: int, peer: ID) -> None:
        with self._lock:
            self._refused.setdefault(kind, Counter())[STATUS_NAMES.get(code, str(code))] += 1
        log.info("relay: %s from %s refused: %s", kind, peer, STATUS_NAMES.get(code, code))
        await self._status(stream, code)

    async def _handle_hop(self, stream: INetStream) -> None:
        """One request per stream (RESERVE or CONNECT)."""
        peer = stream.muxed_conn.peer_id
        try:
            try:
                with trio.fail_after(READ_TIMEOUT):
                    msg = await read_delimited_msg(stream, HopMessage)
            except Exception as exc:
                log.debug("relay: unreadable request from %s: %r", peer, exc)
                await self._refuse(stream, "other", MALFORMED_MESSAGE, peer)
                return
            kind = {HopMessage.RESERVE: "reserve", HopMessage.CONNECT: "connect"}.get(msg.type)
            if kind is None:
                await self._refuse(stream, "other", UNEXPECTED_MESSAGE, peer)
            elif is_relayed(stream.muxed_conn):  # spec: never over a relayed connection
                await self._refuse(stream, kind, PERMISSION_DENIED, peer)
            elif kind == "reserve":
                await self._reserve(stream, peer)
            else:
                await self._connect(stream, peer, msg)
        except Exception as exc:
            log.debug("relay: request from %s failed: %r", peer, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(WRITE_TIMEOUT):
                try:
                    await stream.close()
                except Exception:
                    pass

    async def _reserve(self, stream: INetStream, peer: ID) -> None:
        # The peer is the connection's (Noise-authenticated) one, never msg.peer.
        if not self._allowed(peer, "inbound"):
            await self._refuse(stream, "reserve", PERMISSION_DENIED, peer)
            return
        now = time.time()
        expires = int(now + self.config.reservation_ttl)
        with self._lock:
            self._purge(now)
            renewing = peer in self._reservations
            full = not renewing and len(self._reservations) >= self.config.max_reservations
            if not full:
                self._reservations[peer] = expires
                if renewing:
                    self._renewals += 1
                else:
                    self._reservations_made += 1
        if full:
            await self._refuse(stream, "reserve", RESERVATION_REFUSED, peer)
            return
        reservation = Reservation(
            expire=expires, addrs=self._own_addrs(), voucher=self._voucher(peer, expires)
        )
        await self._status(stream, OK, reservation=reservation, limit=self._limit())
        log.debug("relay: %s %s until %d", "renewed" if renewing else "reserved", peer, expires)
        # A disconnect that raced this request found no reservation to drop: drop it now
        # (else a departed member holds a slot until the reservation's TTL).
        if self._host is not None and not has_direct_connection(self._host.get_network(), peer):
            self.drop_reservation(peer)

    def _own_addrs(self) -> list[bytes]:
        """This relay's addresses for the reservation (never a wildcard)."""
        host = self._host
        if host is None:
            return []
        me = host.get_id().to_base58()
        try:
            listen = [str(a).split("/p2p/")[0] for a in host.get_addrs()]
            addrs = [a for a in expand_wildcards(listen) if not is_wildcard(a)]
            return [
                multiaddr.Multiaddr(f"{a}/p2p/{me}").to_bytes()
                for a in addrs
                if "/p2p-circuit" not in a
            ]
        except Exception as exc:
            log.debug("relay: no addresses for the reservation: %r", exc)
            return []

    def _voucher(self, peer: ID, expires: int) -> bytes:
        """The signed reservation voucher (go-libp2p's client requires one)."""
        host = self._host
        if host is None:
            return b""
        try:
            payload = Voucher(
                relay=host.get_id().to_bytes(), peer=peer.to_bytes(), expiration=expires
            ).SerializeToString()
            key = host.get_private_key()
            signature = key.sign(make_unsigned(VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE, payload))
            envelope = Envelope(
                public_key=key.get_public_key(),
                payload_type=VOUCHER_PAYLOAD_TYPE,
                raw_payload=payload,
                signature=signature,
            )
            return bytes(envelope.marshal_envelope())
        except Exception as exc:
            log.debug("relay: cannot sign a voucher: %r", exc)
            return b""

    # ---- circuits ----------------------------------------------------------------------

    async def _connect(self, stream: INetStream, src: ID, msg: HopMessage) -> None:
        try:
            dst = ID(msg.peer.id) if msg.HasField("peer") and msg.peer.id else None
        except Exception:
            dst = None
        if dst is None:
            await self._refuse(stream, "connect", MALFORMED_MESSAGE, src)
            return
        if not (self._allowed(src, "inbound") and self._allowed(dst, "outbound")):
            await self._refuse(stream, "connect", PERMISSION_DENIED, src)
            return
        cfg = self.config
        with self._lock:
            self._purge(time.time())
            reserved = dst in self._reservations
            over = (
                self._active >= cfg.max_circuits
                or self._circuits[src] >= cfg.max_circuits_per_peer
                or self._circuits[dst] >= cfg.max_circuits_per_peer
                or self._pairs[(src, dst)] >= PAIR_CIRCUITS
            )
            if reserved and not over:  # take the slot now: concurrent CONNECTs see it
                self._active += 1
                self._circuits[src] += 1
                self._circuits[dst] += 1
                self._pairs[(src, dst)] += 1
        if not reserved:
            await self._refuse(stream, "connect", NO_RESERVATION, src)
            return
        if over:
            await self._refuse(stream, "connect", RESOURCE_LIMIT_EXCEEDED, src)
            return
        dst_stream: INetStream | None = None
        spliced = False
        try:
            try:
                dst_stream = await self._stop_connect(src, dst)
            except Exception as exc:
                log.info("relay: %s -> %s: the destination failed: %s", src, dst, exc)
                await self._refuse(stream, "connect", CONNECTION_FAILED, src)
                return  # the source's stream is closed (not reset): it reads the status
            spliced = True
            await self._status(stream, OK, limit=self._limit())
            with self._lock:
                self._circuits_total += 1
            reason = await self._splice(stream, dst_stream)
            with self._lock:
                self._ended[reason] += 1
            log.debug("relay: circuit %s -> %s ended: %s", src, dst, reason)
        finally:
            # Whatever ended it (a limit, a reset, cancellation): both legs are reset
            # and the slot is freed. py-libp2p's own hop leaks it here.
            if spliced:
                with trio.CancelScope(shield=True):
                    await _reset(stream)
                    await _reset(dst_stream)
            with self._lock:
                self._active -= 1
                for peer in (src, dst):
                    self._circuits[peer] -= 1
                    if self._circuits[peer] <= 0:
                        del self._circuits[peer]
                self._pairs[(src, dst)] -= 1
                if self._pairs[(src, dst)] <= 0:
                    del self._pairs[(src, dst)]

    async def _stop_connect(self, src: ID, dst: ID) -> INetStream:
        """Open STOP to ``dst`` over its existing connection and get its OK."""
        assert self._host is not None
        if not self._host.get_network().connections.get(dst):
            raise ConnectionError("the destination is not connected to the relay")
        with trio.fail_after(CONNECT_TIMEOUT):
            dst_stream = await self._host.new_stream(dst, [STOP_PROTOCOL])
            try:
                stop = StopMessage(type=StopMessage.CONNECT, peer=PbPeerId(id=src.to_bytes()))
                limit = self._limit()
                if limit is not None:
                    stop.limit.CopyFrom(limit)
                await write_delimited_msg(dst_stream, stop)
                answer = await read_delimited_msg(dst_stream, StopMessage)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await _reset(dst_stream)
                raise
        if answer.type != StopMessage.STATUS or answer.status != OK:
            with trio.CancelScope(shield=True):
                await _reset(dst_stream)
            raise ConnectionError(
                f"it answered {STATUS_NAMES.get(answer.status, str(answer.status))}"
            )
        return dst_stream

    async def _splice(self, a: INetStream, b: INetStream) -> str:
        """Pump both ways until both sides closed, a limit or an error; return why."""
        cfg = self.config
        circuit = _Circuit()
        with trio.CancelScope() as deadline:
            if cfg.circuit_duration:
                # A deadline fires on an idle circuit too (py-libp2p checks per read).
                deadline.deadline = trio.current_time() + cfg.circuit_duration
            async with trio.open_nursery() as nursery:
                for src, dst in ((a, b), (b, a)):
                    bucket = TokenBucket(cfg.circuit_bandwidth) if cfg.circuit_bandwidth else None
                    nursery.start_soon(self._pump, src, dst, circuit, nursery.cancel_scope, bucket)
        if deadline.cancelled_caught:
            return "duration"
        return circuit.reason

    async def _pump(
        self,
        src: INetStream,
        dst: INetStream,
        circuit: _Circuit,
        both: trio.CancelScope,
        bucket: TokenBucket | None,
    ) -> None:
        cap = self.config.circuit_data
        sent = 0
        try:
            while True:
                try:
                    data = await src.read(READ_SIZE)
                except StreamEOF:
                    data = b""
                if not data:
                    # Propagate the half-close; the other direction may still finish,
                    # within a grace: a side that never sends nor closes (a refused
                    # handshake, a hostile member) must not hold the slot for ever.
                    with trio.move_on_after(WRITE_TIMEOUT):
                        await dst.close()
                    both.deadline = min(both.deadline, trio.current_time() + HALF_CLOSED_GRACE)
                    return
                if cap and sent + len(data) > cap:
                    circuit.reason = "data"
                    both.cancel()
                    return
                sent += len(data)
                if bucket is not None:
                    await bucket.take(len(data))
                if self._total_bucket is not None:
                    await self._total_bucket.take(len(data))
                await dst.write(data)
                with self._lock:
                    self._bytes += len(data)
        except Exception as exc:
            # A reset or error on either leg ends both pumps: a local reset does not
            # wake a Yamux reader, so the sibling is cancelled, never left waiting.
            if circuit.reason == "closed":
                circuit.reason = "reset"
            log.debug("relay: pump ended: %r", exc)
            both.cancel()
