"""Hole punching (DCUtR, ``/libp2p/dcutr``): a relayed connection between two members
becomes a direct one where their NATs allow it. Trio side, like ``client_service``
(the only two modules of this plugin that import trio or libp2p).

The wire exchange is the spec's (https://github.com/libp2p/specs/blob/master/relay/DCUtR.md),
so go- and js-libp2p peers interoperate; the policy around it is ours, not
py-libp2p's ``DCUtRProtocol`` (which drives every relayed peer from both sides every
2 s, 3 attempts of 3 rounds, and first dials every address the peerstore holds,
private LAN ones included, waiting 10 s for them):

- **Who**: only the side that *received* the relayed connection (the STOP handler
  calls :meth:`HolePuncher.relayed_inbound`), once per relayed connection, after
  :data:`SETTLE_S` (when both members dialed each other through the relay, the
  duplicate is closed by then and only the survivor's receiving side punches).
- **Addresses**: observed public addresses only, both ways. Ours: the public IPs
  that peers (the server, over a direct connection) saw us at, with our listen
  port (a port-preserving NAT maps the hole-punch socket, bound to that port, to
  it). Never private LAN addresses, ``0.0.0.0`` or loopback; an address the peer
  sends that is not public is not dialed.
- **One round**: CONNECT, CONNECT, SYNC; the receiver of SYNC dials at once, we
  after half the measured round trip, both from our listen port (TCP simultaneous
  open), and the round ends when a direct connection exists or after
  :data:`ROUND_S`. A failure leaves the pair relayed; the connection is not tried
  again (a new relayed connection is: one attempt each).
- **After success** the relayed connection is closed after :data:`RELAY_CLOSE_S`
  (the streams on it move to the direct one; pubsub reopens its stream).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.dcutr_pb2 import HolePunch
from libp2p.relay.circuit_v2.utils import write_delimited_msg
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from united_core.p2p.services import is_relayed

from .policy import classify

log = logging.getLogger(__name__)

DCUTR_PROTOCOL = TProtocol("/libp2p/dcutr")
MAX_MESSAGE = 4096  # the spec's limit on one message
MAX_ADDRS = 8  # addresses sent or dialed at most
SETTLE_S = 0.5  # before punching: a duplicate relayed connection is closed by then
EXCHANGE_S = 10.0  # the CONNECT/CONNECT/SYNC exchange over the relay
ROUND_S = 5.0  # the dials, until a direct connection exists
MAX_SYNC_WAIT_S = 2.0
RELAY_CLOSE_S = 2.0  # after success, the relayed connection is closed this much later
POLL_S = 0.05


def missing_calls() -> list[str]:
    """What this module uses of py-libp2p beyond ``check_libp2p``'s list, if absent
    (then hole punching stays off; relaying works on)."""
    from libp2p.network.swarm import Swarm
    from libp2p.transport.tcp.tcp import TCP

    missing = [
        f"{cls.__name__}.{name}"
        for cls, name in (
            (Swarm, "dial_addr_as_responder"),
            (Swarm, "dial_addr"),
            (TCP, "dial_with_source"),
        )
        if not callable(getattr(cls, name, None))
    ]
    missing += [
        f"HolePunch.{name}"
        for name in ("type", "ObsAddrs")
        if name not in HolePunch.DESCRIPTOR.fields_by_name
    ]
    return missing


def _tcp(addr: multiaddr.Multiaddr) -> tuple[str, str, int] | None:
    """``(ip4|ip6, ip, port)`` of a bare TCP address, else None."""
    text = str(addr)
    parts = text.split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        return None
    if "/p2p-circuit" in text:
        return None
    try:
        return parts[1], parts[2], int(parts[4])
    except ValueError:
        return None


def public_tcp(addr: multiaddr.Multiaddr) -> multiaddr.Multiaddr | None:
    """``addr`` as a bare ``/ipX/IP/tcp/PORT`` when it is a public TCP address, else None."""
    parsed = _tcp(addr)
    if parsed is None:
        return None
    proto, ip, port = parsed
    bare = f"/{proto}/{ip}/tcp/{port}"
    if classify(bare) != "public" or not 0 < port < 65536:
        return None
    return multiaddr.Multiaddr(bare)


def observed_public_addrs(host: IHost) -> list[multiaddr.Multiaddr]:
    """Where a peer can reach our hole-punch socket: each public IP peers observed us
    at (identify over direct connections), with each TCP port we listen on."""
    manager = getattr(host, "_observed_addr_manager", None)
    if manager is None:
        return []
    try:
        observed = list(manager.addrs(min_observers=1))
        listening = list(host.get_transport_addrs())
    except Exception as exc:
        log.debug("no observed addresses: %r", exc)
        return []
    ips: list[tuple[str, str]] = []
    for addr in observed:
        parsed = _tcp(addr)
        if parsed is not None and public_tcp(addr) is not None and parsed[:2] not in ips:
            ips.append(parsed[:2])
    ports: list[tuple[str, int]] = []
    for addr in listening:
        parsed = _tcp(addr)
        if parsed is not None and (parsed[0], parsed[2]) not in ports:
            ports.append((parsed[0], parsed[2]))
    out = [
        multiaddr.Multiaddr(f"/{proto}/{ip}/tcp/{port}")
        for proto, ip in ips
        for lproto, port in ports
        if lproto == proto
    ]
    return out[:MAX_ADDRS]


def listen_source(host: IHost, addr: multiaddr.Multiaddr) -> tuple[str, int] | None:
    """The ``(ip, port)`` to dial ``addr`` from: our listen socket of its family."""
    want = _tcp(addr)
    for listen in host.get_transport_addrs():
        parsed = _tcp(listen)
        if parsed is not None and want is not None and parsed[0] == want[0]:
            return parsed[1], parsed[2]
    return None


async def _read(stream: INetStream) -> HolePunch:
    msg = HolePunch()
    msg.ParseFromString(await read_varint_prefixed_bytes_limited(stream, MAX_MESSAGE))
    return msg


def _decode(raw: list[bytes]) -> list[multiaddr.Multiaddr]:
    """The public TCP addresses among those a peer sent (the rest is never dialed)."""
    out: list[multiaddr.Multiaddr] = []
    for item in raw[: MAX_ADDRS * 4]:
        try:
            addr = public_tcp(multiaddr.Multiaddr(item))
        except Exception:
            continue
        if addr is not None and str(addr) not in {str(a) for a in out}:
            out.append(addr)
    return out[:MAX_ADDRS]


def _message(kind: int, addrs: list[multiaddr.Multiaddr] | None = None) -> HolePunch:
    msg = HolePunch()
    msg.type = kind  # type: ignore[assignment]  # the generated enum's NewType
    if addrs:
        msg.ObsAddrs.extend(a.to_bytes() for a in addrs)
    return msg


class HolePuncher:
    """DCUtR for the ``relay-client`` service: started by its ``run``; figures under
    ``lock`` (``snapshot`` is read from other threads)."""

    def __init__(
        self,
        host: IHost,
        nursery: trio.Nursery,
        lock: threading.Lock,
        label: Callable[[INetConn, str], None] = lambda conn, kind: None,
    ) -> None:
        self.host = host
        self.label = label  # ServiceHost.label_connection: ctl peers shows "hole-punched"
        self.nursery = nursery
        self.lock = lock
        self.attempts = 0
        self.successes = 0
        self.failures = 0
        self.answered = 0  # rounds run as the responder (the other side initiated)
        self.answered_ok = 0
        self.last_error: str | None = None
        self.last_ms: float | None = None
        self.last_at: float | None = None  # when the last attempt we made ended (epoch s)
        self._punched: dict[ID, INetConn] = {}  # peer -> the direct connection punched
        # Relayed connections a DCUtR exchange was answered on (one each), and the
        # answering dial rounds in progress (two at most).
        self._answered_conns: weakref.WeakSet[Any] = weakref.WeakSet()
        self._dialing = trio.CapacityLimiter(2)

    def start(self) -> None:
        self.host.set_stream_handler(DCUTR_PROTOCOL, self._handle)

    def stop(self) -> None:
        try:
            self.host.remove_stream_handler(DCUTR_PROTOCOL)
        except Exception:
            pass

    def snapshot(self) -> dict[str, Any]:
        """Call with ``lock`` held."""
        return {
            "punch_attempts": self.attempts,
            "punch_successes": self.successes,
            "punch_failures": self.failures,
            "punch_answered": self.answered,
            "punch_answered_ok": self.answered_ok,
            "punch_last_error": self.last_error,
            "punch_last_ms": self.last_ms,
            "punch_last_at": self.last_at,
            "punched_peers": sorted(
                p.to_base58() for p, c in self._punched.items() if not c.is_closed
            ),
        }

    # ---- connections ---------------------------------------------------------------

    def _direct(self, peer: ID) -> INetConn | None:
        for conn in list(self.host.get_network().connections.get(peer, ())):
            if not conn.is_closed and not is_relayed(conn):
                return conn
        return None

    def relayed_inbound(self, conn: INetConn) -> None:
        """A relayed connection came in (the STOP handler): one attempt, soon."""
        self.nursery.start_soon(self._initiate, conn)

    async def _dial_round(
        self, peer: ID, addrs: list[multiaddr.Multiaddr], as_responder: bool
    ) -> INetConn | None:
        """Dial every address from our listen port until a direct connection exists,
        :data:`ROUND_S` at most."""
        network: Any = self.host.get_network()
        dialed = trio.Event()  # (a connection may also come in through the listener)

        async def dial(addr: multiaddr.Multiaddr) -> None:
            source = listen_source(self.host, addr)
            try:
                if as_responder:  # the spec's server role on a simultaneous open
                    await network.dial_addr_as_responder(addr, peer, source)
                else:
                    await network.dial_addr(addr, peer, source)
                dialed.set()
            except Exception as exc:
                log.debug("hole-punch dial to %s at %s: %r", peer, addr, exc)

        with trio.move_on_after(ROUND_S):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    nursery.start_soon(dial, addr)
                while self._direct(peer) is None and not dialed.is_set():
                    with trio.move_on_after(POLL_S):
                        await dialed.wait()
                nursery.cancel_scope.cancel()
        return self._direct(peer)

    def _won(self, peer: ID, conn: INetConn, relayed: INetConn | None) -> None:
        with self.lock:
            self._punched = {p: c for p, c in self._punched.items() if not c.is_closed}
            self._punched[peer] = conn
        self.label(conn, "hole-punched")
        if relayed is not None:
            self.nursery.start_soon(self._close_later, relayed)

    async def _close_later(self, relayed: INetConn) -> None:
        await trio.sleep(RELAY_CLOSE_S)
        if not relayed.is_closed:
            log.debug("closing the relayed connection after the upgrade")
            try:
                await relayed.close()
            except Exception as exc:
                log.debug("closing the relayed connection: %r", exc)

    # ---- initiator: the side that received the relayed connection -------------------

    async def _initiate(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        await trio.sleep(SETTLE_S)
        if conn.is_closed or self._direct(peer) is not None:
            return  # a duplicate dropped, or direct already: nothing to punch
        with self.lock:
            self.attempts += 1
        started = time.monotonic()
        try:
            error = await self._initiate_round(peer, conn)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        ms = round((time.monotonic() - started) * 1000)
        direct = self._direct(peer)
        with self.lock:
            self.last_ms, self.last_at = ms, round(time.time(), 3)
            if direct is not None and error is None:
                self.successes += 1
            else:
                self.failures += 1
                self.last_error = error or "no direct connection"
        if direct is not None and error is None:
            log.info("hole punching to %s worked in %d ms: direct now", peer, ms)
            self._won(peer, direct, conn)
        else:
            log.info("hole punching to %s failed (%s): staying relayed", peer, error)

    async def _initiate_round(self, peer: ID, conn: INetConn) -> str | None:
        ours = observed_public_addrs(self.host)
        if not ours:
            return "no public address observed for this node"
        with trio.fail_after(EXCHANGE_S):
            stream = await self.host.new_stream(peer, [DCUTR_PROTOCOL])
            try:
                sent = time.monotonic()
                await write_delimited_msg(stream, _message(HolePunch.CONNECT, ours))
                answer = await _read(stream)
                rtt = time.monotonic() - sent
                if answer.type != HolePunch.CONNECT:
                    return "the peer did not answer CONNECT"
                theirs = _decode(list(answer.ObsAddrs))
                if not theirs:
                    return "the peer has no public address"
                await write_delimited_msg(stream, _message(HolePunch.SYNC))
            finally:
                await _close(stream)
        await trio.sleep(min(rtt / 2, MAX_SYNC_WAIT_S))
        if await self._dial_round(peer, theirs, as_responder=True) is None:
            return f"no direct connection within {ROUND_S:g} s"
        return None

    # ---- responder: the side that dialed through the relay --------------------------

    async def _handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        relayed = next(
            (
                c
                for c in list(self.host.get_network().connections.get(peer, ()))
                if c.muxed_conn is stream.muxed_conn
            ),
            None,
        )
        if not is_relayed(stream.muxed_conn) and not is_relayed(relayed):
            await _reset(stream)  # only over a relayed connection
            return
        # One exchange per relayed connection, and few dial rounds at once: a member
        # must not make us dial addresses of its choosing again and again.
        busy = self._dialing.borrowed_tokens >= self._dialing.total_tokens
        if stream.muxed_conn in self._answered_conns or busy:
            await _reset(stream)
            return
        self._answered_conns.add(stream.muxed_conn)
        try:
            with trio.fail_after(EXCHANGE_S):
                connect = await _read(stream)
                if connect.type != HolePunch.CONNECT:
                    raise ValueError("expected CONNECT")
                theirs = _decode(list(connect.ObsAddrs))
                ours = observed_public_addrs(self.host)
                await write_delimited_msg(stream, _message(HolePunch.CONNECT, ours))
                sync = await _read(stream)
                if sync.type != HolePunch.SYNC:
                    raise ValueError("expected SYNC")
        except Exception as exc:
            log.debug("DCUtR from %s: %r", peer, exc)
            await _reset(stream)
            return
        await _close(stream)
        if not theirs or not ours:
            return  # the initiator gives up too (it has no addresses to dial)
        with self.lock:
            self.answered += 1
        async with self._dialing:
            direct = await self._dial_round(peer, theirs, as_responder=False)
        if direct is not None:
            with self.lock:
                self.answered_ok += 1
            log.info("hole punching from %s worked: direct now", peer)
            self._won(peer, direct, None)  # the initiator closes the relayed connection


async def _close(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await stream.close()
        except Exception:
            pass


async def _reset(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await stream.reset()
        except Exception:
            pass
