"""The server's trio side: answer ``/united/autonat/1.0.0`` with a real dial-back.

Runs as the ``autonat`` P2P service inside the server's libp2p host (the only
module of the server plugin that imports trio or libp2p).

py-libp2p 0.8.1's AutoNAT (``libp2p/host/autonat/autonat.py``) dials back with
``host.connect()``, which returns at once when any connection to the peer
exists: the connection the request came in on. A member behind NAT is then
reported public without a packet on the wire. Dialing a second connection from
the server's own host does not work either: with one connection per peer the
swarm trims the older one (``_trim_connections``), the member's main
connection, on both ends. So, as go-libp2p's AutoNAT v2 does
(``config/config.go`` ``makeAutoNATV2Host``), the dial-back comes from a
separate **dialer host**: its own random Ed25519 identity, Noise and Yamux
only, no listener, no retries. It dials the claimed address on a fresh
connection (``swarm.dial_addr``: no reuse, no 60 s negative cache), opens
``/united/autonat/dial-back/1.0.0``, writes the nonce and the address's index,
waits for a 1-byte acknowledgement and hangs up.

A request (docs/autonat.md): the requester is the connection's authenticated
peer, never a field; it must be a member (``ServiceHost.allows``) on a direct
connection; per member one probe at a time and ``peer_probes_per_minute``, for
everyone ``max_concurrent``; only addresses on the IP the request came from
are dialed (amplification guard), at most ``max_addrs``. Before dialing, the
server names its dialer (``dialing``) and waits for ``ready``: the member's
gate then lets exactly that peer in. Malformed input gets an ``error`` frame
and the stream is closed; nothing a member sends can end the service.

NAT observations: the service also listens on ``observe_ports`` (two plain TCP
"reflectors", on the host of the node's first TCP listen address). Each
``result`` carries those ports and a token (:mod:`.observe`); a connection
whose one line is a live token gets ``"<ip> <port>\n"``, the address it came
from, and the server closes it. Anything else (no line within 0.5 s, a wrong
token, a line above 64 bytes) is closed without a word. At most
``OBSERVE_PER_SOURCE`` connections per source (an IPv4 address, an IPv6 /64) and
``OBSERVE_HANDLERS`` in all are served at once; one above either is accepted and
closed at once (``busy``), never left in the listen backlog, where it would hold
up everyone's and be answered only after its member gave up. A port that cannot
be bound is one warning, and the service runs on without observations.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from united_core.p2p.host import disable_auto_connector

from .. import wire
from .config import Config
from .observe import Tokens

if TYPE_CHECKING:
    from united_core.p2p.services import ServiceHost

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0  # the request, and the member's "ready", must come this soon
CLOSE_TIMEOUT = 2.0
RECENT = 16  # probes kept for the panel and tests
OBSERVE_TIMEOUT = 0.5  # an observation connection: its line, the answer, within this
# (the token comes in the connection's first segment)
OBSERVE_HANDLERS = 64  # observation connections served at once, at most, in all
OBSERVE_PER_SOURCE = 4  # ... and per source (an IPv4 address, an IPv6 /64)
OBSERVE_BACKLOG = 64


def make_dialer(dial_timeout: float) -> IHost:
    """The dial-back host: a fresh random identity, Noise + Yamux, no retries."""
    key_pair = create_new_key_pair()
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=ConnectionConfig(max_connections_per_peer=1, dial_timeout=dial_timeout),
        listen_addrs=[],
    )
    disable_auto_connector(host)
    network: Any = host.get_network()
    network.retry_config = RetryConfig(max_retries=0)  # one attempt: the verdict is the dial's
    return host


class Refused(Exception):
    def __init__(self, code: str, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.code, self.reason, self.retry_after = code, reason, retry_after


class AutonatServer:
    """The ``autonat`` P2P service. Figures (:meth:`snapshot`) are read from any thread."""

    name = "autonat"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dialer_id = ""
        self._tools: ServiceHost | None = None
        self._dialer: IHost | None = None
        self._in_flight: set[str] = set()
        self._recent_by_peer: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()  # the figures below, read by the asyncio side
        self.answered = 0
        self.bad_requests = 0
        self.refused: collections.Counter[str] = collections.Counter()
        self.dials: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.observe_ports: tuple[int, ...] = ()  # bound reflector ports (none: off)
        self.observations: collections.Counter[str] = collections.Counter()
        self._tokens = Tokens()
        self._observing: collections.Counter[str] = collections.Counter()  # by source

    # ---- lifecycle ---------------------------------------------------------------------

    async def run(self, tools: ServiceHost) -> None:
        self._tools = tools
        dialer = make_dialer(self.config.dial_timeout)
        listeners: list[trio.SocketListener] = []
        async with dialer.run([]), trio.open_nursery() as nursery:
            self._dialer = dialer
            self.dialer_id = dialer.get_id().to_base58()
            try:
                listeners = await self._open_reflectors(_listen_ip(tools.host))
                for listener in listeners:
                    nursery.start_soon(self._reflect, listener, nursery)
                tools.host.set_stream_handler(TProtocol(wire.PROTOCOL), self._handle)
                log.info(
                    "AutoNAT: answering probes, dialing back as %s%s",
                    self.dialer_id,
                    f", NAT observations on TCP ports {self.observe_ports[0]} and "
                    f"{self.observe_ports[1]}"
                    if self.observe_ports
                    else "",
                )
                await trio.sleep_forever()
            finally:
                # Ended (the node stopping, or the dialer failing): stop answering, or
                # every member would hear DIAL_ERROR and conclude it is private.
                self.observe_ports = ()
                try:
                    tools.host.remove_stream_handler(TProtocol(wire.PROTOCOL))
                except Exception:
                    pass
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()

    def snapshot(self) -> Mapping[str, Any]:
        with self._lock:
            return {
                "dialer": self.dialer_id,
                "answered": self.answered,
                "refused": dict(self.refused),
                "bad_requests": self.bad_requests,
                "dials": dict(self.dials),
                "in_flight": len(self._in_flight),
                "recent": list(self.recent),
                "observe": {
                    "ports": list(self.observe_ports),
                    "answered": self.observations["answered"],
                    "refused": self.observations["refused"],
                    "busy": self.observations["busy"],
                    "tokens": len(self._tokens),
                },
                "limits": {
                    "max_addrs": self.config.max_addrs,
                    "dial_timeout": self.config.dial_timeout,
                    "peer_probes_per_minute": self.config.peer_probes_per_minute,
                    "max_concurrent": self.config.max_concurrent,
                },
            }

    # ---- one request -------------------------------------------------------------------

    async def _handle(self, stream: INetStream) -> None:
        try:
            await self._serve(stream)
        except Refused as refusal:
            with self._lock:
                self.refused[refusal.code] += 1
            await self._reply(
                stream, wire.refused(refusal.code, refusal.reason, refusal.retry_after)
            )
        except wire.BadMessage as exc:
            with self._lock:
                self.bad_requests += 1
            await self._reply(stream, wire.error(f"bad request: {exc}"))
        except StreamEOF:  # the member stopped writing inside a frame
            with self._lock:
                self.bad_requests += 1
            await self._reply(stream, wire.error("bad request: the stream ended inside a frame"))
        except trio.TooSlowError:
            with self._lock:
                self.bad_requests += 1
            await self._reply(stream, wire.error("too slow"))
        except Exception as exc:  # a broken stream, a vanished peer: never the service
            log.debug("AutoNAT request failed: %r", exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await stream.close()
                except Exception:
                    pass

    async def _reply(self, stream: INetStream, message: dict[str, Any]) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await wire.write_frame(stream, message)
            except Exception as exc:
                log.debug("AutoNAT: could not answer: %r", exc)

    async def _serve(self, stream: INetStream) -> None:
        assert self._tools is not None and self._dialer is not None
        peer = stream.muxed_conn.peer_id
        requester = peer.to_base58()
        if _relayed(stream):
            raise Refused(wire.RELAYED, "ask over a direct connection: a relay hides your address")
        if not self._tools.allows(requester, "inbound"):
            raise Refused(wire.NOT_A_MEMBER, "only members are probed")
        remote = stream.get_remote_address()
        if not remote:
            raise Refused(wire.RELAYED, "the connection has no observed address")
        observed_ip, observed_port = str(remote[0]), int(remote[1])
        observed = wire.observed_multiaddr(observed_ip, observed_port)
        with trio.fail_after(READ_TIMEOUT):
            request = wire.parse_request(await wire.read_frame(stream))
        self._admit(requester)
        self._in_flight.add(requester)
        try:
            results = await self._probe(stream, peer, request, observed_ip, observed)
        finally:
            self._in_flight.discard(requester)
        with self._lock:
            self.answered += 1
            self.recent.append(
                {
                    "peer": requester,
                    "observed": observed,
                    "at": round(time.time(), 1),
                    "results": [[r.addr, r.status, r.code] for r in results],
                }
            )
        observe = None
        if len(self.observe_ports) == 2:  # members only: a result goes to a member alone
            ports = (self.observe_ports[0], self.observe_ports[1])
            observe = wire.Observe(ports, self._tokens.issue())
        await wire.write_frame(stream, wire.result(observed, results, observe))

    def _admit(self, requester: str) -> None:
        """One probe at a time per member, ``peer_probes_per_minute``, ``max_concurrent``."""
        if requester in self._in_flight:
            raise Refused(wire.RATE_LIMITED, "a probe of yours is running", 1.0)
        if len(self._in_flight) >= self.config.max_concurrent:
            raise Refused(wire.BUSY, "too many probes at once; ask again later", 5.0)
        now = time.monotonic()
        for peer in [p for p, times in self._recent_by_peer.items() if times[-1] < now - 60]:
            del self._recent_by_peer[peer]  # bounded: only peers seen in the last minute
        times = self._recent_by_peer.setdefault(requester, collections.deque())
        while times and times[0] < now - 60:
            times.popleft()
        if len(times) >= self.config.peer_probes_per_minute:
            wait = round(times[0] + 60 - now, 1)
            raise Refused(wire.RATE_LIMITED, f"at most {len(times)} probes a minute", wait)
        times.append(now)

    async def _probe(
        self,
        stream: INetStream,
        peer: ID,
        request: wire.Request,
        observed_ip: str,
        observed: str,
    ) -> list[wire.AddrResult]:
        results: list[wire.AddrResult | None] = []
        plan: list[tuple[int, wire.Dialable]] = []
        seen: set[tuple[str, int]] = set()
        for index, addr in enumerate(request.addrs):
            target = wire.classify(addr, observed_ip, peer.to_base58())
            if not isinstance(target, wire.Dialable):
                code, reason = target
                results.append(wire.AddrResult(addr, wire.REFUSED, code, reason))
            elif (target.ip, target.port) in seen:
                results.append(wire.AddrResult(addr, wire.REFUSED, wire.DUPLICATE, "listed twice"))
            elif len(plan) >= self.config.max_addrs:
                reason = f"at most {self.config.max_addrs} addresses are dialed"
                results.append(wire.AddrResult(addr, wire.REFUSED, wire.TOO_MANY, reason))
            else:
                seen.add((target.ip, target.port))
                plan.append((index, target))
                results.append(None)
        if plan:
            # Name the dialer first: the member's gate admits exactly it, then says ready.
            await wire.write_frame(stream, wire.dialing(self.dialer_id, observed))
            with trio.fail_after(READ_TIMEOUT):
                ready = await wire.read_frame(stream)
            if ready.get("type") != "ready":
                raise wire.BadMessage(f"'ready' expected, not {ready.get('type')!r}")
            for index, target in plan:
                results[index] = await self._dial_back(peer, target, request.nonce, index)
        return [r for r in results if r is not None]

    async def _dial_back(
        self, peer: ID, target: wire.Dialable, nonce: bytes, index: int
    ) -> wire.AddrResult:
        """Dial ``target`` from the dialer host on a fresh connection; deliver the nonce."""
        assert self._dialer is not None
        network = self._dialer.get_network()
        started = time.monotonic()
        status, reason, ms = wire.DIAL_ERROR, "", 0
        try:
            with trio.fail_after(self.config.dial_timeout):
                await network.dial_addr(multiaddr.Multiaddr(target.multiaddr), peer)
                back = await self._dialer.new_stream(peer, [TProtocol(wire.DIAL_BACK_PROTOCOL)])
                await back.write(nonce + bytes([index]))
                if await back.read(1) != b"\x01":  # 0x00: the member did not take it
                    raise ConnectionError("not acknowledged")
                status = wire.OK
                ms = round((time.monotonic() - started) * 1000)
                await back.close()
        except trio.TooSlowError:
            reason = f"no answer within {self.config.dial_timeout:g} s"
        except Exception as exc:
            reason = _describe(exc)
        finally:
            ms = ms or round((time.monotonic() - started) * 1000)
            # Hang up (py-libp2p takes about 200 ms to close a Yamux connection).
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await network.close_peer(peer)
                except Exception:
                    pass
            try:
                self._dialer.get_peerstore().clear_addrs(peer)
            except Exception:
                pass
        with self._lock:
            self.dials[status] += 1
        log.debug("AutoNAT dial-back to %s at %s: %s %s", peer, target.multiaddr, status, reason)
        return wire.AddrResult(target.addr, status, "", reason, ms)

    # ---- NAT observations --------------------------------------------------------------

    async def _open_reflectors(self, ip: str) -> list[trio.SocketListener]:
        """Listen on ``observe_ports`` at ``ip``; none at all (one warning) if a port
        cannot be bound."""
        listeners: list[trio.SocketListener] = []
        for port in self.config.observe_ports:
            try:
                listeners.append(await _tcp_listener(ip, port))
            except OSError as exc:
                log.warning(
                    "AutoNAT: cannot listen on TCP port %d (%s, [autonat] observe_ports): "
                    "members will not learn their NAT kind",
                    port,
                    exc.strerror or exc,
                )
                for listener in listeners:
                    await listener.aclose()
                return []
        self.observe_ports = tuple(int(ln.socket.getsockname()[1]) for ln in listeners)
        return listeners

    async def _reflect(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept observation connections as they come; serve at most
        ``OBSERVE_PER_SOURCE`` per source and ``OBSERVE_HANDLERS`` in all at once, and
        close any other at once (``busy``)."""
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except Exception as exc:  # out of file descriptors and the like: wait, go on
                log.debug("AutoNAT: accepting an observation failed: %r", exc)
                await trio.sleep(0.1)
                continue
            try:
                source = _source(stream.socket.getpeername()[0])
            except Exception:  # reset before we looked
                source = ""
            if (
                not source
                or self._observing[source] >= OBSERVE_PER_SOURCE
                or self._observing.total() >= OBSERVE_HANDLERS
            ):
                with self._lock:
                    self.observations["busy"] += 1
                stream.socket.close()  # at once: no await, nothing read, nothing written
                continue
            self._observing[source] += 1
            nursery.start_soon(self._observation, stream, source)

    async def _observation(self, stream: trio.SocketStream, source: str) -> None:
        """One line, a live token: answer where the connection came from, then close."""
        answered = False
        try:
            with trio.move_on_after(OBSERVE_TIMEOUT):
                data = b""
                while (line := wire.complete_line(data)) is None:
                    chunk = await stream.receive_some(wire.MAX_OBSERVE_LINE)
                    if not chunk:
                        raise wire.BadMessage("closed before a line")
                    data += chunk
                if self._tokens.redeem(wire.parse_observe_request(line)):
                    ip, port = stream.socket.getpeername()[:2]
                    await stream.send_all(wire.observed_line(str(ip), int(port)))
                    answered = True
        except Exception as exc:  # bad input, a reset: never the service
            log.debug("AutoNAT observation refused: %r", exc)
        finally:
            with self._lock:
                self.observations["answered" if answered else "refused"] += 1
            self._observing[source] -= 1
            if self._observing[source] <= 0:
                del self._observing[source]
            with trio.CancelScope(shield=True):
                await stream.aclose()  # the server closes first: its side keeps TIME_WAIT


async def _tcp_listener(ip: str, port: int) -> trio.SocketListener:
    """A plain TCP listener (SO_REUSEADDR, never SO_REUSEPORT: a second server on the
    same port must fail, not share it)."""
    family = trio.socket.AF_INET6 if ":" in ip else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await sock.bind((ip, port))
        sock.listen(OBSERVE_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _source(ip: str) -> str:
    """Whom an observation connection counts against: its IPv4 address (also when
    IPv4-mapped), or its IPv6 /64 (one host commonly holds a whole /64)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _listen_ip(host: IHost) -> str:
    """The IP of the node's first TCP listen address (a wildcard is fine)."""
    for addr in host.get_transport_addrs():
        endpoint = wire.tcp_endpoint(str(addr))
        if endpoint is not None:
            return endpoint[0]
    return "0.0.0.0"


def _relayed(stream: INetStream) -> bool:
    try:
        return bool(stream.muxed_conn.get_connection_type() is ConnectionType.RELAYED)
    except Exception:
        return False


def _describe(exc: BaseException) -> str:
    """The most telling message in an exception chain (py-libp2p wraps its errors)."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 4:
        text = str(current).strip()
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)[:200]
