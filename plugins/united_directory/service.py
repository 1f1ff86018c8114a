"""The directory: members, invites, channels and presence over a WebSocket endpoint.

One aiohttp application serves ``/ws``. Each connection is a :class:`Session`
that must authenticate (or register) against a fresh, single-use, expiring
nonce before anything else. Presence and channel membership are kept in
memory, so directory queries never touch the database.

Bad input never takes the server down: every frame is decoded inside bounds,
each refusal is an error frame with a code, and the offending session is
closed where continuing makes no sense (malformed or oversized frames, too many
failed logins, anything but authentication before login).

Connections that have not logged in are bounded before aiohttp sees them
(:class:`PendingGate`): the HTTP request must arrive within ``header_timeout``,
and at most ``max_pending_sessions`` of them (``max_pending_per_address`` per
address) are held; past that the heaviest network (by /24, or /48, /56 and /64)
gives up its oldest, or the newcomer is refused if that one is still young or
logging in. Logged-in sessions are not counted.
Failed logins are throttled so that nobody else's failures stop a member's login.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import resource
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import WSMsgType, web

from united_core import frames
from united_core.api import P2PAPI, NodeAPI, call_async
from united_core.members import Channel, Member, MemberSet
from united_core.wire import frames_pb2 as pb

from .config import Config
from .registry import ChannelRecord, Registry, RegistryError

log = logging.getLogger(__name__)
E = pb.ErrorCode


def prefixes(host: str) -> tuple[str, ...]:
    """The networks a peer address counts in, broadest first: an IPv4 /24 and the
    address, or an IPv6 /48, /56 and /64 (one host or home network is usually
    given a /64, a customer a /56 or /48). Anything else is its own network."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return (host,)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return (str(ipaddress.IPv4Network((ip, 24), strict=False)), str(ip))
    return tuple(str(ipaddress.IPv6Network((ip, bits), strict=False)) for bits in (48, 56, 64))


def address_key(host: str) -> str:
    """What per-address limits count by: an IPv4 address, or an IPv6 /64."""
    return prefixes(host)[-1]


def _networks(host: str) -> tuple[Hashable, ...]:
    """:func:`prefixes` as cheap keys (no formatting), for every accepted connection."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return (host,)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    n = int(ip)
    if isinstance(ip, ipaddress.IPv4Address):
        return ((24, n >> 8), (32, n))
    return ((48, n >> 80), (56, n >> 72), (64, n >> 64))


class _Group:
    """Pending connections of one network, its subnetworks counted apart."""

    __slots__ = ("buckets", "children", "count", "key", "members", "parent", "top")

    def __init__(self, key: Hashable, parent: _Group | None) -> None:
        self.key = key
        self.parent = parent
        self.count = 0  # pending connections inside
        self.children: dict[Hashable, _Group] = {}
        # Children by count, each bucket in the order its children reached that
        # count; ``top`` is the highest count. Counts move by one, so all is O(1).
        self.buckets: dict[int, collections.OrderedDict[_Group, None]] = {}
        self.top = 0
        # An address (the last level): its connections, oldest first.
        self.members: collections.OrderedDict[asyncio.Transport, None] = collections.OrderedDict()

    def _move(self, child: _Group, old: int, new: int) -> None:
        if old:
            bucket = self.buckets[old]
            del bucket[child]
            if not bucket:
                del self.buckets[old]
                if self.top == old:
                    self.top = new  # ``child`` itself is at ``new``
        if new:
            self.buckets.setdefault(new, collections.OrderedDict())[child] = None
            self.top = max(self.top, new)
        else:
            del self.children[child.key]

    def heaviest(self) -> _Group:
        """The child holding most (of those holding most, the longest so)."""
        return next(iter(self.buckets[self.top]))


class PendingGate:
    """Connections that have not logged in, bounded globally and per address.

    Every connection is counted in its networks (:func:`prefixes`). When a new one
    finds its address holding ``per_address`` or the budget full, a victim is
    sought from the heaviest network, then its heaviest subnetwork, down to an
    address, whose oldest connection goes. The newcomer counts in its own
    networks, so whoever holds most gives way: an attacker spread over the /64s
    of one /56 (or the addresses of one /24) only pushes out its own connections.

    A connection whose login (a frame answering the current challenge) is being
    checked is never pushed out. One accepted less than ``min_age`` seconds ago
    (an honest login answers within a round trip) is pushed out only by its own
    address or by a network lighter than its own. When there is no such victim
    the newcomer is refused (closed at once, before aiohttp sees it), so a flood
    from more networks than the budget holds cannot cycle honest logins out
    before they answer; it can only make newcomers wait.

    With ``header_timeout``, a connection whose HTTP request has not reached a
    handler (:meth:`request_arrived`) that many seconds after it was accepted is
    aborted: whatever aiohttp version, a request that never finishes is dropped.
    """

    def __init__(
        self,
        limit: int,
        per_address: int,
        header_timeout: float | None = None,
        min_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.per_address = per_address
        self.header_timeout = header_timeout
        self.min_age = min_age
        self.clock = clock
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self._root = _Group("", None)
        self._leaf_of: dict[asyncio.Transport, _Group] = {}
        self._since: dict[asyncio.Transport, float] = {}
        self._answering: set[asyncio.Transport] = set()
        self._deadlines: dict[asyncio.Transport, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._leaf_of)

    def count(self, host: str) -> int:
        """Pending connections from ``host``'s address (IPv6: its /64)."""
        group = self._find(_networks(host))
        return group.count if group is not None else 0

    def _find(self, path: tuple[Hashable, ...]) -> _Group | None:
        group: _Group | None = self._root
        for key in path:
            if group is None:
                break
            group = group.children.get(key)
        return group

    def admit(self, transport: asyncio.Transport, host: str) -> bool:
        """Count a new connection from ``host``, pushing out a victim if it must.
        False: it was refused (and aborted); it holds no place."""
        path = _networks(host)
        own = self._find(path)
        if own is not None and own.count >= self.per_address:
            victim = self._oldest(own)
        elif len(self._leaf_of) >= self.limit:
            victim = self._victim(self._root, path, 0)
        else:
            victim = transport
        if victim is None:
            self.refused += 1
            transport.abort()
            return False
        if victim is not transport:
            self.release(victim)
            self.evicted += 1
            victim.abort()
        self._add(transport, path)
        if self.header_timeout is not None:
            self._deadlines[transport] = asyncio.get_running_loop().call_later(
                self.header_timeout, self._too_slow, transport
            )
        return True

    def request_arrived(self, transport: asyncio.Transport) -> None:
        """A whole HTTP request arrived on the connection: its deadline is met."""
        deadline = self._deadlines.pop(transport, None)
        if deadline is not None:
            deadline.cancel()

    def answering(self, transport: asyncio.Transport, answering: bool = True) -> None:
        """The connection's login is being checked (True) or failed (False): while
        it is, the connection is not pushed out."""
        if not answering:
            self._answering.discard(transport)
        elif transport in self._leaf_of:
            self._answering.add(transport)

    def release(self, transport: asyncio.Transport) -> None:
        """The connection logged in or is gone: it no longer holds a place."""
        self.request_arrived(transport)
        self._answering.discard(transport)
        self._since.pop(transport, None)
        group: _Group | None = self._leaf_of.pop(transport, None)
        if group is None:
            return
        del group.members[transport]
        while group is not None:
            group.count -= 1
            if group.parent is not None:
                group.parent._move(group, group.count + 1, group.count)
            group = group.parent

    def _add(self, transport: asyncio.Transport, path: tuple[Hashable, ...]) -> None:
        group = self._root
        group.count += 1
        for key in path:
            child = group.children.get(key)
            if child is None:
                child = group.children[key] = _Group(key, group)
            child.count += 1
            group._move(child, child.count - 1, child.count)
            group = child
        group.members[transport] = None
        self._leaf_of[transport] = group
        self._since[transport] = self.clock()

    def _victim(
        self, group: _Group, path: tuple[Hashable, ...], level: int
    ) -> asyncio.Transport | None:
        """Who gives way to a newcomer from ``path`` (None: nobody, refuse it),
        looking from ``group``, the newcomer's network at ``level``."""
        if level == len(path):  # its own address
            return self._oldest(group)
        mine = group.children.get(path[level])
        weight = (mine.count if mine is not None else 0) + 1  # with the newcomer
        if group.top < weight:  # the newcomer's network holds most: look inside it
            return self._victim(mine, path, level + 1) if mine is not None else None
        heavier = group.top > weight
        # The networks holding most, the longest so first (so, as a rule, oldest).
        for other in group.buckets[group.top]:
            victim = self._oldest(self._leaf(other))
            if victim is None:
                continue  # all logging in: a few at most, for a moment
            if heavier or self.clock() - self._since[victim] >= self.min_age:
                return victim
            break  # as heavy as the newcomer's, and young: spared
        if heavier or mine is None:
            return None
        return self._victim(mine, path, level + 1)  # as heavy: perhaps inside its own

    @staticmethod
    def _leaf(group: _Group) -> _Group:
        while group.children:
            group = group.heaviest()
        return group

    def _oldest(self, leaf: _Group) -> asyncio.Transport | None:
        """The oldest connection of an address whose login is not being checked."""
        return next((t for t in leaf.members if t not in self._answering), None)

    def _too_slow(self, transport: asyncio.Transport) -> None:
        if self._deadlines.pop(transport, None) is not None:
            self.release(transport)
            self.timed_out += 1
            transport.abort()


class _GatedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted by the gate until it logs in.
    A connection the gate refuses never reaches aiohttp."""

    __slots__ = ("_factory", "_gate", "_inner", "_transport")

    def __init__(self, gate: PendingGate, factory: Callable[[], asyncio.Protocol]) -> None:
        self._gate = gate
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if not self._gate.admit(stream, str(peer[0]) if peer else "?"):
            return
        self._transport = stream
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._gate.release(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _GatedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`PendingGate`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, gate: PendingGate, backlog: int
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._gate = gate
        self._listener: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        gate = self._gate

        def protocol() -> asyncio.Protocol:
            return _GatedProtocol(gate, server)

        self._listener = await asyncio.get_running_loop().create_server(
            protocol, self._host or None, self._port, backlog=self._backlog, reuse_address=True
        )
        self._server = self._listener  # closed by BaseSite.stop()


class FailureWindows:
    """Failure times per key over the last minute, for at most ``max_keys`` keys."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._times: dict[Hashable, collections.deque[float]] = {}

    def count(self, key: Hashable) -> int:
        window = self._times.get(key)
        if not window:
            return 0
        cutoff = time.monotonic() - 60
        while window and window[0] < cutoff:
            window.popleft()
        if not window:
            del self._times[key]
            return 0
        return len(window)

    def hit(self, key: Hashable) -> int:
        """Count one failure; return how many in the last minute."""
        self._times.setdefault(key, collections.deque()).append(time.monotonic())
        if len(self._times) > self.max_keys:  # bound memory under an address sweep
            self._times.pop(next(iter(self._times)))
        return self.count(key)


@dataclass(eq=False)
class Session:
    ws: web.WebSocketResponse
    remote: str
    request: web.Request
    send_timeout: float
    address: str = ""  # address_key(remote): what per-address limits count by
    nonce: bytes | None = None
    nonce_expires: float = 0.0
    failures: int = 0
    member: Member | None = None
    addrs: list[str] = field(default_factory=list)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: pb.ServerFrame) -> None:
        """Send, or drop the session if its reader is too slow (it must not stall
        pushes to everyone else)."""
        if self.ws.closed:
            return
        try:
            async with asyncio.timeout(self.send_timeout), self.send_lock:
                await self.ws.send_bytes(frame.SerializeToString())
        except TimeoutError:
            log.warning("dropping the session from %s: it does not read its frames", self.remote)
            transport = self.request.transport
            if transport is not None:
                transport.abort()
        except (ConnectionError, RuntimeError):
            pass


class SessionClosed(Exception):
    """Raised inside a handler to end the session after the reply was sent."""


class DirectoryService:
    def __init__(self, config: Config, node: NodeAPI, p2p: P2PAPI, data_dir: Path) -> None:
        self.config = config
        self.node = node
        self.p2p = p2p
        self.db_path = data_dir / config.database
        self.registry: Registry | None = None
        self.server_id = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._sessions: set[Session] = set()
        self._online: dict[str, list[Session]] = collections.defaultdict(list)
        self._channels: dict[str, ChannelRecord] = {}
        self._channel_members: dict[str, set[str]] = collections.defaultdict(set)
        self._members: dict[str, Member] = {}
        self._member_keys: dict[bytes, str] = {}
        self._logged_in_from: collections.Counter[str] = collections.Counter()
        self._anonymous_failures = FailureWindows()
        self._member_failures = FailureWindows()
        self._gate = PendingGate(
            config.max_pending_sessions, config.max_pending_per_address, config.header_timeout
        )
        self._closers: set[asyncio.Task[Any]] = set()
        self._plugin_handlers: dict[str, frames.FrameHandler] = {}
        self.frames_handled = 0
        self.errors_sent = 0

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self.registry = await Registry.open(self.db_path)
        self.server_id = await self.registry.server_id()
        for channel in await self.registry.channels():
            self._channels[channel.channel_id] = channel
        for member in await self.registry.members():
            self._set_member(member)
            for channel in await self.registry.joined_channels(member.member_id):
                self._channel_members[channel.channel_id].add(member.member_id)
        self._plugin_handlers = {
            h.kind: h for batch in self.node.hook.united_register_frame_handlers() for h in batch
        }
        app = web.Application(middlewares=[self._request_arrived])
        app.router.add_get("/ws", self._handle_ws)
        # The gate drops a connection whose first request is not complete within
        # header_timeout; keepalive_timeout closes one that idles as long after a
        # response (and, in recent aiohttp, also bounds the first request). A
        # WebSocket upgrade needs a dozen headers.
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self.config.header_timeout,
            lingering_time=self.config.header_timeout,
            max_headers=32,
        )
        await self._runner.setup()
        site = _GatedSite(
            self._runner,
            self.config.listen_host,
            self.config.listen_port,
            self._gate,
            backlog=min(4096, max(128, self.config.max_pending_sessions)),
        )
        await site.start()
        self.port = site.port
        self._check_file_limit()
        log.info("directory listening on %s (server id %s)", self.url, self.server_id)

    def _check_file_limit(self) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and self.config.max_pending_sessions > soft // 2:
            log.warning(
                "[directory] max_pending_sessions (%d) is more than half the open-file "
                "limit (%d): connections that never log in could leave too few files for "
                "members; raise the limit (ulimit -n, LimitNOFILE=) or lower the setting",
                self.config.max_pending_sessions,
                soft,
            )

    @web.middleware
    async def _request_arrived(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.transport is not None:
            self._gate.request_arrived(request.transport)
        return await handler(request)

    async def announce_state(self) -> None:
        """Tell the other plugins the member list and the channels (at start)."""
        await self._members_changed()
        await self._channels_changed()

    async def stop(self) -> None:
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                await session.ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
        if self.registry is not None:
            await self.registry.close()

    @property
    def url(self) -> str:
        if self.config.public_url:
            return self.config.public_url
        host = self.config.listen_host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"ws://{host}:{self.port}/ws"

    # ---- views ---------------------------------------------------------------------

    def member_set(self) -> MemberSet:
        return MemberSet.of(self._members.values(), trusted=[self.p2p.peer_id])

    def channels(self) -> list[Channel]:
        return [
            Channel(c.channel_id, c.name, frames.topic_for(self.server_id, c.channel_id))
            for c in self._channels.values()
        ]

    def server_addrs(self) -> list[str]:
        addrs = self.config.announce_addrs or tuple(self.p2p.listen_addrs)
        suffix = f"/p2p/{self.p2p.peer_id}"
        return [a if a.endswith(suffix) else a + suffix for a in addrs]

    def online(self, channel_id: str) -> list[pb.PeerPresence]:
        out = []
        for member_id in sorted(self._channel_members.get(channel_id, ())):
            sessions = self._online.get(member_id)
            member = self._members.get(member_id)
            if not sessions or member is None:
                continue
            addrs = next((s.addrs for s in reversed(sessions) if s.addrs), [])
            out.append(pb.PeerPresence(member_id=member_id, peer_id=member.peer_id, addrs=addrs))
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "url": self.url,
            "members": len(self._members),
            "online": len(self._online),
            "sessions": len(self._sessions),
            "pending": len(self._gate),
            "pending_evicted": self._gate.evicted,
            "pending_refused": self._gate.refused,
            "pending_timed_out": self._gate.timed_out,
            "channels": len(self._channels),
            "frames_handled": self.frames_handled,
            "errors_sent": self.errors_sent,
        }

    # ---- admin operations (control API) --------------------------------------------

    async def create_invite(self) -> dict[str, Any]:
        assert self.registry is not None
        code, expires = await self.registry.create_invite(self.config.invite_ttl)
        return {"code": code, "expires_at": expires, "url": self.url}

    async def create_channel(self, name: str) -> Channel:
        assert self.registry is not None
        name = " ".join(name.split())
        if not 1 <= len(name) <= frames.MAX_CHANNEL_NAME:
            raise RegistryError(
                "name", f"a channel name is 1 to {frames.MAX_CHANNEL_NAME} characters"
            )
        record = await self.registry.create_channel(name)
        self._channels[record.channel_id] = record
        await self._channels_changed()
        return Channel(record.channel_id, name, frames.topic_for(self.server_id, record.channel_id))

    async def remove_member(self, ref: str) -> Member:
        assert self.registry is not None
        member = await self.registry.find_member(ref)
        if member is None:
            raise RegistryError("unknown", f"no member {ref!r}")
        await self.registry.remove_member(member.member_id)
        self._drop_member(member.member_id)
        for members in self._channel_members.values():
            members.discard(member.member_id)
        for session in self._online.pop(member.member_id, []):
            await session.send(frames.error_frame(0, E.ERROR_CODE_NOT_A_MEMBER, "you were removed"))
            await session.ws.close(code=4003, message=b"removed")
        await self._member_list_changed()
        return member

    # ---- the WebSocket endpoint ----------------------------------------------------

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        # aiohttp closes (1009) past twice our bound; between the two we answer TOO_LARGE.
        ws = web.WebSocketResponse(max_msg_size=2 * self.config.max_frame_bytes, heartbeat=30)
        await ws.prepare(request)
        remote = request.remote or "?"
        session = Session(ws, remote, request, self.config.send_timeout, address_key(remote))
        self._sessions.add(session)
        login_timer = asyncio.get_running_loop().call_later(
            self.config.login_timeout, self._login_expired, session
        )
        try:
            await self._challenge(session)
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    try:
                        await self._on_frame(session, msg.data)
                    except SessionClosed:
                        break
                elif msg.type == WSMsgType.TEXT:
                    await self._error(
                        session, 0, E.ERROR_CODE_MALFORMED, "frames are binary protobuf"
                    )
                    break
                else:
                    break
        except Exception:
            log.exception("directory session from %s failed", session.remote)
        finally:
            login_timer.cancel()
            self._sessions.discard(session)
            await self._went_offline(session)
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    def _login_expired(self, session: Session) -> None:
        if session.member is None and not session.ws.closed:
            log.info("closing a session from %s that never logged in", session.remote)
            self._close_later(session, 4008, b"login timeout")

    def _close_later(self, session: Session, code: int, message: bytes) -> None:
        if session.ws.closed:
            return
        task = asyncio.get_running_loop().create_task(session.ws.close(code=code, message=message))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _challenge(self, session: Session) -> None:
        session.nonce = secrets.token_bytes(frames.NONCE_BYTES)
        session.nonce_expires = time.time() + self.config.nonce_ttl
        await session.send(
            pb.ServerFrame(
                challenge=pb.Challenge(
                    nonce=session.nonce,
                    server_id=self.server_id,
                    expires_at=int(session.nonce_expires * 1000),
                )
            )
        )

    async def _error(self, session: Session, request_id: int, code: int, message: str) -> None:
        self.errors_sent += 1
        await session.send(frames.error_frame(request_id, code, message))

    async def _on_frame(self, session: Session, data: bytes) -> None:
        self.frames_handled += 1
        try:
            frame = frames.decode_client_frame(data, self.config.max_frame_bytes)
        except frames.FrameError as exc:
            await self._error(session, 0, exc.code, str(exc))
            raise SessionClosed from None
        kind = frame.WhichOneof("body")
        rid = frame.request_id
        try:
            if session.member is None:
                if kind == "hello":
                    await self._on_hello(session, frame)
                elif kind in ("auth", "register"):
                    try:
                        await self._on_login(session, frame, kind)
                    finally:
                        if session.member is None and session.request.transport is not None:
                            self._gate.answering(session.request.transport, False)
                else:
                    await self._error(session, rid, E.ERROR_CODE_UNEXPECTED, "log in first")
                    raise SessionClosed
                return
            handler = self._handlers.get(kind or "")
            if handler is not None:
                await handler(self, session, frame)
                return
            plugin_handler = self._plugin_handlers.get(kind or "")
            if plugin_handler is None:
                await self._error(
                    session, rid, E.ERROR_CODE_UNEXPECTED, f"{kind} is not served here"
                )
                return
            reply = await plugin_handler.handler(self.node, self._context(session), frame)
            reply.request_id = rid
            await session.send(reply)
        except frames.FrameError as exc:
            await self._error(session, rid, exc.code, str(exc))
        except RegistryError as exc:
            code = (
                E.ERROR_CODE_INVITE_INVALID if exc.reason == "invite" else E.ERROR_CODE_UNEXPECTED
            )
            await self._error(session, rid, code, str(exc))

    def _context(self, session: Session) -> frames.FrameContext:
        assert session.member is not None
        by_topic = {frames.topic_for(self.server_id, c): c for c in self._channels}

        def topic_of(channel_id: str) -> str | None:
            return (
                frames.topic_for(self.server_id, channel_id)
                if channel_id in self._channels
                else None
            )

        return frames.FrameContext(
            member=session.member,
            server_id=self.server_id,
            members=self.member_set(),
            topic_of=topic_of,
            channel_of=by_topic.get,
        )

    async def _on_hello(self, session: Session, frame: pb.ClientFrame) -> None:
        if frame.hello.protocol_version != frames.PROTOCOL_VERSION:
            await self._error(
                session,
                frame.request_id,
                E.ERROR_CODE_UNSUPPORTED_VERSION,
                f"this server speaks protocol {frames.PROTOCOL_VERSION}",
            )
            raise SessionClosed
        await session.send(pb.ServerFrame(request_id=frame.request_id, ok=pb.Ok()))

    # ---- login -----------------------------------------------------------------------

    # Failed logins are counted where they cannot hurt anyone else. Signatures
    # cannot be guessed, so throttles only shed work on attempts that would fail:
    # - an AuthResponse naming a current member's key counts against that
    #   (address, key) only; past max_failed_auth_per_key_per_minute a failure
    #   closes its session at once, but a valid signature always logs in;
    # - everything else (registrations, unknown keys) shares the address's
    #   anonymous budget; past it such attempts are refused before any work.
    # Nothing refuses a member's own login because of other people's failures.

    def _set_member(self, member: Member) -> None:
        old = self._members.get(member.member_id)
        if old is not None:
            self._member_keys.pop(old.public_key, None)
        self._members[member.member_id] = member
        self._member_keys[member.public_key] = member.member_id

    def _drop_member(self, member_id: str) -> None:
        old = self._members.pop(member_id, None)
        if old is not None:
            self._member_keys.pop(old.public_key, None)

    async def _login_failed(
        self, session: Session, rid: int, code: int, message: str, member_key: bytes | None
    ) -> None:
        session.failures += 1
        if member_key is not None:
            count = self._member_failures.hit((session.address, member_key))
            limit = self.config.max_failed_auth_per_key_per_minute
            if count == limit:
                log.warning(
                    "%d failed logins in a minute for member %s from %s",
                    count,
                    self._member_keys.get(member_key, "?"),
                    session.address,
                )
        else:
            count = self._anonymous_failures.hit(session.address)
            limit = self.config.max_failed_auth_per_minute
        await self._error(session, rid, code, message)
        if session.failures >= self.config.max_failed_auth_per_session or count >= limit:
            raise SessionClosed
        await self._challenge(session)

    async def _on_login(self, session: Session, frame: pb.ClientFrame, kind: str) -> None:
        assert self.registry is not None
        rid = frame.request_id
        body = frame.auth if kind == "auth" else frame.register
        key = bytes(body.public_key)
        member_key = key if kind == "auth" and key in self._member_keys else None

        async def fail(code: int, message: str) -> None:
            await self._login_failed(session, rid, code, message, member_key)

        if member_key is None and (
            self._anonymous_failures.count(session.address)
            >= self.config.max_failed_auth_per_minute
        ):
            await self._error(
                session, rid, E.ERROR_CODE_RATE_LIMITED, "too many failed logins from this address"
            )
            raise SessionClosed
        if self._logged_in_from[session.address] >= self.config.max_sessions_per_address:
            await self._error(
                session, rid, E.ERROR_CODE_RATE_LIMITED, "too many sessions from this address"
            )
            raise SessionClosed
        nonce, session.nonce = session.nonce, None  # single use, whatever happens next
        if nonce is None or body.nonce != nonce or time.time() > session.nonce_expires:
            await fail(E.ERROR_CODE_NONCE_INVALID, "unknown, used or expired nonce")
            return
        if session.request.transport is not None:  # it answered: not pushed out meanwhile
            self._gate.answering(session.request.transport)
        if kind == "auth":
            signed = frames.auth_bytes(self.server_id, nonce, key)
            if not frames.verify(key, signed, frame.auth.signature):
                await fail(E.ERROR_CODE_BAD_SIGNATURE, "signature does not verify")
                return
            member = await self.registry.member_by_key(key) if member_key else None
            if member is None:
                await fail(E.ERROR_CODE_NOT_A_MEMBER, "not a member")
                return
        else:
            try:
                name = frames.clean_display_name(frame.register.display_name)
            except frames.FrameError as exc:
                await fail(exc.code, str(exc))
                return
            signed = frames.register_bytes(self.server_id, nonce, key, name)
            if not frames.verify(key, signed, frame.register.signature):
                await fail(E.ERROR_CODE_BAD_SIGNATURE, "signature does not verify")
                return
            code = frame.register.invite_code or None
            if self.config.registration == "invite" and code is None:
                await fail(E.ERROR_CODE_INVITE_INVALID, "an invite is required")
                return
            try:
                member = await self.registry.register(key, name, code)
            except RegistryError as exc:
                reason = (
                    E.ERROR_CODE_INVITE_INVALID
                    if exc.reason == "invite"
                    else E.ERROR_CODE_UNEXPECTED
                )
                await fail(reason, str(exc))
                return
            self._set_member(member)
            log.info("registered member %s (%s)", member.display_name, member.peer_id)
        self._logged_in(session, member)
        await session.send(await self._welcome(rid, member))
        if kind == "register":
            await self._member_list_changed()

    def _logged_in(self, session: Session, member: Member) -> None:
        """Count the session as a member's, no longer as pending; the member's
        oldest sessions beyond max_sessions_per_member are closed."""
        session.member = member
        self._logged_in_from[session.address] += 1
        transport = session.request.transport
        if transport is not None:
            self._gate.release(transport)
        sessions = self._online[member.member_id]
        sessions.append(session)
        for old in sessions[: -self.config.max_sessions_per_member]:
            self._close_later(old, 4009, b"replaced by a newer session")

    async def _welcome(self, rid: int, member: Member) -> pb.ServerFrame:
        assert self.registry is not None
        joined = [
            self._channel_pb(c) for c in await self.registry.joined_channels(member.member_id)
        ]
        return pb.ServerFrame(
            request_id=rid,
            welcome=pb.Welcome(
                server_id=self.server_id,
                you=self._member_pb(member, await self.registry.previous_keys(member.member_id)),
                members=[self._member_pb(m) for m in self._members.values()],
                joined=joined,
                server_addrs=self.server_addrs(),
                server_peer_id=self.p2p.peer_id,
            ),
        )

    # ---- authenticated requests ------------------------------------------------------

    async def _on_rotate(self, session: Session, frame: pb.ClientFrame) -> None:
        assert self.registry is not None and session.member is not None
        member, body = session.member, frame.rotate_key
        new_key = bytes(body.new_public_key)
        signed = frames.rotation_bytes(self.server_id, member.member_id, member.public_key, new_key)
        if len(new_key) != 32 or not (
            frames.verify(member.public_key, signed, body.signature_by_old)
            and frames.verify(new_key, signed, body.signature_by_new)
        ):
            await self._error(
                session,
                frame.request_id,
                E.ERROR_CODE_BAD_SIGNATURE,
                "rotation signatures do not verify",
            )
            return
        rotated = await self.registry.rotate_key(member, new_key)
        self._set_member(rotated)
        for s in self._online.get(member.member_id, []):
            s.member = rotated
        log.info("member %s rotated to %s", member.display_name, rotated.peer_id)
        await session.send(pb.ServerFrame(request_id=frame.request_id, ok=pb.Ok()))
        await self._member_list_changed()

    async def _on_join_leave(self, session: Session, frame: pb.ClientFrame) -> None:
        assert self.registry is not None and session.member is not None
        kind = frame.WhichOneof("body")
        ref = frame.join.channel if kind == "join" else frame.leave.channel
        channel = await self.registry.find_channel(ref)
        if channel is None:
            await self._error(
                session, frame.request_id, E.ERROR_CODE_UNKNOWN_CHANNEL, f"no channel {ref!r}"
            )
            return
        member_id = session.member.member_id
        if kind == "join":
            await self.registry.join(member_id, channel.channel_id)
            self._channel_members[channel.channel_id].add(member_id)
        else:
            await self.registry.leave(member_id, channel.channel_id)
            self._channel_members[channel.channel_id].discard(member_id)
        joined = await self.registry.joined_channels(member_id)
        await session.send(
            pb.ServerFrame(
                request_id=frame.request_id,
                channel_list=pb.ChannelList(channels=[self._channel_pb(c) for c in joined]),
            )
        )
        await self._push_presence(channel.channel_id)

    async def _on_create_channel(self, session: Session, frame: pb.ClientFrame) -> None:
        if not self.config.members_create_channels:
            await self._error(
                session,
                frame.request_id,
                E.ERROR_CODE_UNEXPECTED,
                "channels are created by the server admin",
            )
            return
        channel = await self.create_channel(frame.create_channel.name)
        await session.send(
            pb.ServerFrame(
                request_id=frame.request_id,
                channel_list=pb.ChannelList(
                    channels=[
                        pb.Channel(
                            channel_id=channel.channel_id, name=channel.name, topic=channel.topic
                        )
                    ]
                ),
            )
        )

    async def _on_list_channels(self, session: Session, frame: pb.ClientFrame) -> None:
        channels = [self._channel_pb(c) for c in self._channels.values()]
        await session.send(
            pb.ServerFrame(
                request_id=frame.request_id, channel_list=pb.ChannelList(channels=channels)
            )
        )

    async def _on_announce(self, session: Session, frame: pb.ClientFrame) -> None:
        assert session.member is not None
        addrs = frames.clean_addrs(list(frame.announce.addrs))
        # A wildcard listen address is reachable at the address the session came from.
        session.addrs = [a.replace("/ip4/0.0.0.0/", f"/ip4/{session.remote}/") for a in addrs]
        await session.send(pb.ServerFrame(request_id=frame.request_id, ok=pb.Ok()))
        for channel_id, members in self._channel_members.items():
            if session.member.member_id in members:
                await self._push_presence(channel_id)

    async def _on_directory_query(self, session: Session, frame: pb.ClientFrame) -> None:
        channel_id = frame.directory_query.channel_id
        if channel_id not in self._channels:
            await self._error(
                session,
                frame.request_id,
                E.ERROR_CODE_UNKNOWN_CHANNEL,
                f"no channel {channel_id!r}",
            )
            return
        await session.send(
            pb.ServerFrame(
                request_id=frame.request_id,
                directory_answer=pb.DirectoryAnswer(
                    channel_id=channel_id, online=self.online(channel_id)
                ),
            )
        )

    _handlers = {
        "rotate_key": _on_rotate,
        "join": _on_join_leave,
        "leave": _on_join_leave,
        "create_channel": _on_create_channel,
        "list_channels": _on_list_channels,
        "announce": _on_announce,
        "directory_query": _on_directory_query,
    }

    # ---- pushes ----------------------------------------------------------------------

    async def _went_offline(self, session: Session) -> None:
        if session.member is None:
            return
        self._logged_in_from[session.address] -= 1
        if self._logged_in_from[session.address] <= 0:
            del self._logged_in_from[session.address]
        sessions = self._online.get(session.member.member_id, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self._online.pop(session.member.member_id, None)
        for channel_id, members in self._channel_members.items():
            if session.member.member_id in members:
                await self._push_presence(channel_id)

    async def _push_presence(self, channel_id: str) -> None:
        frame = pb.ServerFrame(
            presence=pb.Presence(channel_id=channel_id, online=self.online(channel_id))
        )
        for member_id in list(self._channel_members.get(channel_id, ())):
            for session in list(self._online.get(member_id, [])):
                await session.send(frame)

    async def _member_list_changed(self) -> None:
        frame = pb.ServerFrame(
            member_list=pb.MemberList(members=[self._member_pb(m) for m in self._members.values()])
        )
        for sessions in list(self._online.values()):
            for session in list(sessions):
                await session.send(frame)
        await self._members_changed()

    async def _members_changed(self) -> None:
        await call_async(
            self.node.hook.united_members_changed(node=self.node, members=self.member_set())
        )

    async def _channels_changed(self) -> None:
        await call_async(
            self.node.hook.united_channels_changed(node=self.node, channels=tuple(self.channels()))
        )

    # ---- protobuf views --------------------------------------------------------------

    def _channel_pb(self, channel: ChannelRecord) -> pb.Channel:
        return pb.Channel(
            channel_id=channel.channel_id,
            name=channel.name,
            topic=frames.topic_for(self.server_id, channel.channel_id),
        )

    @staticmethod
    def _member_pb(member: Member, previous: Iterable[bytes] = ()) -> pb.Member:
        return pb.Member(
            member_id=member.member_id,
            display_name=member.display_name,
            public_key=member.public_key,
            peer_id=member.peer_id,
            previous_keys=list(previous),
        )


@contextlib.asynccontextmanager
async def directory_service(
    config: Config, node: NodeAPI, p2p: P2PAPI, data_dir: Path
) -> AsyncIterator[DirectoryService]:
    service = DirectoryService(config, node, p2p, data_dir)
    try:
        await service.start()  # the other plugins hear of the state in united_node_started
        yield service
    finally:
        await service.stop()
