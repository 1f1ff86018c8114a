"""The member's trio side: ask the server for a probe, receive the dial-back, conclude.

Runs as the ``autonat-client`` P2P service inside the member's libp2p host (the
only module of the client plugin that imports trio or libp2p). The asyncio
side (:mod:`.prober`) decides when to probe and calls :meth:`AutonatClient.probe`
through ``node.p2p.call_service``.

A probe (docs/autonat.md): a random 64-bit nonce and the addresses to check go
to the server over the member's existing connection. When the server names its
dialer, this node admits exactly that PeerId through its member gate, inbound
only, until the probe ends (``ServiceHost.admit_inbound``; the connection is
transient: no peer events, not listed), and says ``ready``. The dial-back
handler accepts the nonce only from that dialer, on an inbound direct
connection; an address counts as reached only when the server says ``OK``
**and** its nonce arrived so (:func:`..verdict.conclude`).

The NAT kind (:func:`..verdict.nat_kind`): when the node is not public and the
server's ``result`` offers observations (``observe``: two ports and a token),
the node connects to the server's IP on each port from its own TCP listen
port (SO_REUSEADDR + SO_REUSEPORT, as py-libp2p's listener has), sends the
token and reads back the address the server saw (:func:`..verdict.mapping`).
A failure leaves what the probe alone tells (logged at info).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from libp2p.abc import INetStream
from libp2p.connection_types import ConnectionType
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from united_core.p2p.events import ReachabilityChanged
from united_core.p2p.services import is_relayed

from .. import wire
from ..verdict import PUBLIC, UNKNOWN, Endpoint, conclude, ip_of, mapping, nat_kind
from .config import Config

if TYPE_CHECKING:
    from united_core.p2p.services import ServiceHost

log = logging.getLogger(__name__)

DIAL_BACK_TIMEOUT = 5.0  # the nonce must follow the stream's opening this soon
IDENTIFY_WAIT = 2.0  # how long a first probe waits to learn the server's protocols
MAX_RETRY_AFTER = 3600.0  # a server asking for a longer wait is not believed
OBSERVE_TIMEOUT = 2.0  # one observation: connect, the token, the answer and the close


class NotOffered(Exception):
    """The server's protocols (identify) do not include AutoNAT: nothing to ask."""


@dataclass
class Pending:
    """A probe in flight: the dialer the server named, what its dial-backs showed."""

    dialer: str = ""
    seen: dict[int, dict[str, Any]] = field(default_factory=dict)  # address index -> how
    server: tuple[str, int] | None = None  # the server's address on the request's connection


class AutonatClient:
    """The ``autonat-client`` P2P service. :meth:`snapshot` is read from any thread."""

    name = "autonat-client"

    def __init__(self, config: Config) -> None:
        self.config = config
        self._tools: ServiceHost | None = None
        self._pending: dict[bytes, Pending] = {}
        # Replaced whole (never mutated), so another thread reads them without a lock.
        self.reachability = UNKNOWN
        self.nat = "unknown"
        self.last: dict[str, Any] | None = None  # the last probe's outcome
        self.counts: dict[str, int] = {"probes": 0, "no_verdict": 0, "dial_backs_ignored": 0}

    async def run(self, tools: ServiceHost) -> None:
        self._tools = tools
        tools.host.set_stream_handler(TProtocol(wire.DIAL_BACK_PROTOCOL), self._dial_back)
        await trio.sleep_forever()

    def snapshot(self) -> Mapping[str, Any]:
        return {
            "reachability": self.reachability,
            "nat": self.nat,
            "last": self.last,
            **self.counts,
        }

    def _count(self, key: str) -> None:
        self.counts = {**self.counts, key: self.counts.get(key, 0) + 1}

    # ---- the dial-back -----------------------------------------------------------------

    async def _dial_back(self, stream: INetStream) -> None:
        try:
            with trio.fail_after(DIAL_BACK_TIMEOUT):
                data = await wire.read_exactly(stream, wire.DIAL_BACK_BYTES)
                nonce, index = data[: wire.NONCE_BYTES], data[wire.NONCE_BYTES]
                peer = stream.muxed_conn.peer_id.to_base58()
                pending = self._pending.get(nonce)
                conn = _swarm_conn(self._tools, stream)
                direction = str(getattr(conn, "direction", "")).rsplit(".", 1)[-1].lower()
                relayed = _relayed(stream)
                accepted = (
                    pending is not None
                    and bool(pending.dialer)
                    and peer == pending.dialer
                    and direction == "inbound"
                    and not relayed
                )
                if accepted:
                    assert pending is not None
                    remote = stream.get_remote_address()
                    pending.seen[index] = {
                        "peer": peer,
                        "direction": direction,
                        "relayed": relayed,
                        "from": f"{remote[0]}:{remote[1]}" if remote else "",
                        "connection": id(conn),
                    }
                else:
                    self._count("dial_backs_ignored")
                    log.info(
                        "AutoNAT: ignored a dial-back from %s (%s, relayed=%s, expected: %s)",
                        peer,
                        direction,
                        relayed,
                        pending.dialer if pending else "no such probe",
                    )
                await stream.write(b"\x01" if accepted else b"\x00")
        except Exception as exc:
            log.debug("AutoNAT dial-back stream failed: %r", exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:
                    pass

    # ---- a probe -----------------------------------------------------------------------

    async def probe(self, server: str, addrs: list[str], adopt: bool = True) -> dict[str, Any]:
        """Ask ``server`` (connected directly) to dial ``addrs`` back; the outcome.

        With ``adopt`` (the node's own announced addresses), a verdict becomes the
        node's reachability (``ReachabilityChanged`` when it changes); a failed or
        refused probe changes nothing.
        """
        assert self._tools is not None
        started = time.monotonic()
        sent = tuple(addrs)[: wire.MAX_REQUEST_ADDRS]
        outcome: dict[str, Any] = {
            "server": server,
            "at": round(time.time(), 1),
            "addrs": list(sent),
            "adopted": False,
        }
        nonce = secrets.token_bytes(wire.NONCE_BYTES)
        pending = Pending()
        self._pending[nonce] = pending
        try:
            with trio.fail_after(self.config.timeout):
                reply = await self._exchange(server, nonce, sent, pending, outcome)
            if reply["type"] == "result":
                results = wire.parse_results(reply, sent)
                outcome["observed"] = str(reply.get("observed", ""))[:100]
                reachability, nat = conclude(results, pending.seen, ip_of(outcome["observed"]))
                if adopt and reachability != PUBLIC:  # the node's own NAT kind
                    observed = await self._observe(reply, pending.server, outcome)
                    nat = nat_kind(reachability, nat, observed)
                outcome["results"] = [
                    {
                        **r.to_message(),
                        "verified": i in pending.seen,
                        "via": _via(pending.seen.get(i)),
                    }
                    for i, r in enumerate(results)
                ]
                outcome["verdict"], outcome["nat"] = reachability, nat
                if any(
                    r.status == wire.OK and i not in pending.seen for i, r in enumerate(results)
                ):
                    log.warning("AutoNAT: %s says OK, but no dial-back arrived: ignored", server)
            elif reply["type"] == "refused":
                outcome["refused"] = str(reply.get("code", ""))[:40]
                outcome["error"] = str(reply.get("reason", ""))[:200]
                retry = reply.get("retry_after", 0)
                ok = isinstance(retry, int | float) and 0 <= retry <= MAX_RETRY_AFTER
                outcome["retry_after"] = float(retry) if ok else 0.0
            else:
                outcome["error"] = "the server says: " + str(reply.get("reason", reply))[:200]
        except trio.TooSlowError:
            outcome["error"] = f"no verdict within {self.config.timeout:g} s"
        except NotOffered:
            outcome["error"] = f"the server does not offer AutoNAT ({wire.PROTOCOL})"
            outcome["not_offered"] = True
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self._pending.pop(nonce, None)
        outcome["ms"] = round((time.monotonic() - started) * 1000)
        self._count("probes")
        if "verdict" not in outcome:
            self._count("no_verdict")
        if adopt and "verdict" in outcome:
            outcome["adopted"] = True
            changed = (outcome["verdict"], outcome["nat"]) != (self.reachability, self.nat)
            self.reachability, self.nat = outcome["verdict"], outcome["nat"]
            if changed:
                self._tools.emit(ReachabilityChanged(self.reachability, self.nat))
        if adopt or self.last is None:
            self.last = outcome
        return outcome

    async def _exchange(
        self,
        server: str,
        nonce: bytes,
        sent: tuple[str, ...],
        pending: Pending,
        outcome: dict[str, Any],
    ) -> dict[str, Any]:
        """The request stream: request, then ``dialing`` (admit, ``ready``) or the end."""
        assert self._tools is not None
        host = self._tools.host
        server_id = ID.from_base58(server)
        direct = [c for c in host.get_network().connections.get(server_id, ()) if not is_relayed(c)]
        if not direct:
            raise ConnectionError(f"not connected to {server} directly")
        # Ask only a server that offers AutoNAT (py-libp2p logs a refused protocol as an
        # error): its protocols are known once identify has run, just after connecting.
        peerstore = host.get_peerstore()
        with trio.move_on_after(IDENTIFY_WAIT):
            while not peerstore.supports_protocols(server_id, [wire.PROTOCOL]):
                if _protocols(peerstore, server_id):
                    raise NotOffered
                await trio.sleep(0.05)
        stream = await host.new_stream(server_id, [TProtocol(wire.PROTOCOL)])
        try:
            remote = stream.get_remote_address()
            if remote:
                pending.server = (str(remote[0]), int(remote[1]))
            await wire.write_frame(stream, wire.Request(nonce, sent).to_message())
            reply = await wire.read_frame(stream)
            if reply["type"] != "dialing":
                return reply
            dialer = _dialer_id(reply.get("dialer"), server, host)
            pending.dialer = outcome["dialer"] = dialer
            with self._tools.admit_inbound(dialer):
                try:
                    await wire.write_frame(stream, {"type": "ready"})
                    reply = await wire.read_frame(stream)
                finally:
                    # The probe is over: the dialer's connections go with it (the
                    # gate let it in for this probe only, not for as long as it likes).
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        try:
                            await host.get_network().close_peer(ID.from_base58(dialer))
                        except Exception:
                            pass
            return reply
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:
                    pass

    # ---- the NAT kind ------------------------------------------------------------------

    async def _observe(
        self, reply: dict[str, Any], server: tuple[str, int] | None, outcome: dict[str, Any]
    ) -> str | None:
        """Observe this node's listen port from the server's two reflector ports (the
        ``result``'s ``observe``): the NAT kind, or None (recorded in ``outcome``)."""
        assert self._tools is not None
        try:
            observe = wire.parse_observe(reply)
        except wire.BadMessage as exc:
            outcome["observation"] = {"error": f"ignored the server's offer: {exc}"}
            log.info("AutoNAT: NAT kind not observed: the server's offer is malformed (%s)", exc)
            return None
        if observe is None:
            return None  # an older server, or one that does not observe
        found: dict[str, Any] = {"ports": list(observe.ports)}
        outcome["observation"] = found
        source = _listen_source(self._tools.host, server[0]) if server else None
        why, kind = "", None
        if server is None:
            why = "the server's address is not known"
        elif source is None:
            why = f"no TCP listen address of the family of {server[0]}"
        else:
            pairs: list[tuple[Endpoint, Endpoint]] = []
            target = ""
            try:
                for port in observe.ports:
                    target = _hostport((server[0], port))
                    pairs.append(await _reflect(source, (server[0], port), observe.token))
            except trio.TooSlowError:
                why = f"{target}: no answer within {OBSERVE_TIMEOUT:g} s"
            except Exception as exc:
                why = f"{target}: {type(exc).__name__}: {exc}"[:200]
            found["from"] = _hostport(source)
            if pairs:
                found["local"] = _hostport(pairs[0][0])
                found["seen"] = [_hostport(seen) for _, seen in pairs]
            if not why:
                kind = mapping(pairs)
                if kind == UNKNOWN:
                    why, kind = "the observations do not compare (another local port)", None
        if why:
            found["error"] = why
            log.info("AutoNAT: NAT kind not observed: %s", why)
        else:
            found["kind"] = kind
        return kind


async def _reflect(
    source: tuple[str, int], target: tuple[str, int], token: str
) -> tuple[Endpoint, Endpoint]:
    """One observation: connect from ``source`` (the node's listen port) to ``target``,
    send the token, read the answer until the server closes. ``(local, seen)``."""
    family = trio.socket.AF_INET6 if ":" in target[0] else trio.socket.AF_INET
    with trio.socket.socket(family, trio.socket.SOCK_STREAM) as sock:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind(source)
        with trio.fail_after(OBSERVE_TIMEOUT):
            await sock.connect(target)
            ip, port = sock.getsockname()[:2]
            stream = trio.SocketStream(sock)
            await stream.send_all(wire.observe_request(token))
            data = b""
            # Up to the server's close, so that the server closes first (and keeps the
            # TIME_WAIT): the next probe may leave from this port to that one again.
            while chunk := await stream.receive_some(wire.MAX_OBSERVE_LINE + 1):
                data += chunk
                if len(data) > wire.MAX_OBSERVE_LINE:
                    raise wire.BadMessage("an answer of more than one line")
        if not data:
            raise wire.BadMessage("closed without an answer (the token refused?)")
        return (str(ip), int(port)), wire.parse_observed_line(data)


def _listen_source(host: Any, server_ip: str) -> tuple[str, int] | None:
    """This node's TCP listen ``(ip, port)`` of the family of ``server_ip``."""
    for addr in host.get_transport_addrs():
        endpoint = wire.tcp_endpoint(str(addr))
        if endpoint is not None and (":" in endpoint[0]) == (":" in server_ip):
            return endpoint
    return None


def _hostport(endpoint: tuple[str, int]) -> str:
    ip, port = endpoint
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _dialer_id(value: object, server: str, host: Any) -> str:
    """The dialer the server named: a PeerId that is neither the server, nor this node,
    nor a peer already connected (admitting it must not touch a real connection)."""
    if not isinstance(value, str) or len(value) > 100:
        raise wire.BadMessage("'dialer': a PeerId expected")
    try:
        peer = ID.from_base58(value)
    except Exception:
        raise wire.BadMessage("'dialer': not a PeerId") from None
    if value in (server, host.get_id().to_base58()) or host.get_network().connections.get(peer):
        raise wire.BadMessage("'dialer': must be a peer of its own, not connected")
    return value


def _protocols(peerstore: Any, peer: ID) -> list[str]:
    try:
        return list(peerstore.get_protocols(peer))
    except Exception:  # not identified yet
        return []


def _via(seen: dict[str, Any] | None) -> dict[str, Any] | None:
    if seen is None:
        return None
    return {k: v for k, v in seen.items() if k != "connection"}


def _swarm_conn(tools: ServiceHost | None, stream: INetStream) -> Any:
    """The swarm connection ``stream`` runs on (for its direction)."""
    if tools is None:
        return None
    peer = stream.muxed_conn.peer_id
    for conn in tools.host.get_network().connections.get(peer, ()):
        if conn.muxed_conn is stream.muxed_conn:
            return conn
    return None


def _relayed(stream: INetStream) -> bool:
    try:
        return bool(stream.muxed_conn.get_connection_type() is not ConnectionType.DIRECT)
    except Exception:
        return True  # unknown: never counted as a direct dial-back
