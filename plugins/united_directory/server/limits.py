"""Limits on connections that have not logged in, and on failed logins.

Why a module of its own: these are the directory's defences against floods,
and they hold whatever the protocol does. Nothing here knows frames.

Connections that have not logged in are bounded before aiohttp sees them
(:class:`PendingGate`, enforced at the socket by :class:`GatedSite`): the HTTP
request must arrive within ``header_timeout``, and at most
``max_pending_sessions`` of them (``max_pending_per_address`` per address) are
held; past that the heaviest network (by /24, or /48, /56 and /64) gives up its
oldest, or the newcomer is refused if that one is still young or logging in.
Logged-in sessions are not counted.

Failed logins are counted where they cannot hurt anyone else
(:class:`LoginLimits`): signatures cannot be guessed, so throttles only shed
work on attempts that would fail, and nobody else's failures stop a member's
login.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, cast

from aiohttp import web

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)
TLS_SHUTDOWN_TIMEOUT = 2.0  # seconds a closing TLS connection waits for the peer's close_notify


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

    def rekey(self, old: asyncio.Transport, new: asyncio.Transport) -> None:
        """``old`` is now reached through ``new`` (its TLS transport): count it,
        with its age, place and deadline, under the transport aiohttp sees."""
        group = self._leaf_of.pop(old, None)
        if group is None:
            return
        self._leaf_of[new] = group
        group.members = collections.OrderedDict(
            (new if t is old else t, None) for t in group.members
        )
        self._since[new] = self._since.pop(old)
        if old in self._answering:
            self._answering.discard(old)
            self._answering.add(new)
        deadline = self._deadlines.pop(old, None)
        if deadline is not None:
            deadline.cancel()
            self._deadlines[new] = asyncio.get_running_loop().call_at(
                deadline.when(), self._too_slow, new
            )

    def _too_slow(self, transport: asyncio.Transport) -> None:
        if self._deadlines.pop(transport, None) is not None:
            self.release(transport)
            self.timed_out += 1
            transport.abort()


class _GatedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted by the gate until it logs in.
    A connection the gate refuses never reaches aiohttp.

    With TLS, the gate counts the plain TCP connection from its accept, the
    handshake included (``loop.start_tls`` wraps it once admitted), so
    connections that stall in the handshake are bounded like any other."""

    __slots__ = (
        "_early",
        "_factory",
        "_gate",
        "_handshake",
        "_handshakes",
        "_inner",
        "_ssl",
        "_transport",
    )

    def __init__(
        self,
        gate: PendingGate,
        factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None = None,
        handshakes: set[asyncio.Task[None]] | None = None,
    ) -> None:
        self._gate = gate
        self._factory = factory
        self._ssl = ssl_context
        self._handshakes = handshakes if handshakes is not None else set()
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []  # TLS data that arrived before aiohttp's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if not self._gate.admit(stream, str(peer[0]) if peer else "?"):
            return
        self._transport = stream
        if self._ssl is None:
            self._serve(stream)
            return
        stream.pause_reading()  # the ClientHello waits for the TLS layer
        self._handshake = asyncio.get_running_loop().create_task(self._start_tls(stream))
        self._handshakes.add(self._handshake)
        self._handshake.add_done_callback(self._handshakes.discard)

    async def _start_tls(self, raw: asyncio.Transport) -> None:
        assert self._ssl is not None
        timeout = self._gate.header_timeout or 60.0
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw,
                self,
                self._ssl,
                server_side=True,
                ssl_handshake_timeout=timeout,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
            )
        except BaseException as exc:  # a failed handshake, or the server stopping
            log.debug("TLS handshake failed: %r", exc)
            self._gate.release(raw)
            raw.abort()
            if not isinstance(exc, Exception):
                raise
            return
        if tls is None or tls.is_closing():  # gone (evicted, timed out) meanwhile
            self._gate.release(raw)
            return
        self._gate.rekey(raw, tls)
        self._transport = tls
        self._serve(tls)

    def _serve(self, transport: asyncio.Transport) -> None:
        self._inner = self._factory()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        if self._transport is not None:
            self._gate.release(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        elif self._handshake is not None:  # decrypted before start_tls() returned to us
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GatedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`PendingGate` (and then,
    given an ``ssl_context``, through TLS)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        gate: PendingGate,
        backlog: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._gate = gate
        self._ssl = ssl_context
        self._handshakes: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Server | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        gate, context, handshakes = self._gate, self._ssl, self._handshakes

        def protocol() -> asyncio.Protocol:
            return _GatedProtocol(gate, server, context, handshakes)

        self._listener = await asyncio.get_running_loop().create_server(
            protocol, self._host or None, self._port, backlog=self._backlog, reuse_address=True
        )
        self._server = self._listener  # closed by BaseSite.stop()

    async def stop(self) -> None:
        for task in list(self._handshakes):  # connections aiohttp has not seen yet
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        await super().stop()


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


class LoginLimits:
    """Failed logins and logged-in sessions, counted by address.

    - A login naming a current member's key counts its failures against that
      (address, key) only; past ``max_failed_auth_per_key_per_minute`` each
      failure closes its session at once, but a valid signature always logs in.
    - Everything else (registrations, unknown keys) shares the address's
      anonymous budget; past ``max_failed_auth_per_minute`` such attempts are
      refused before any work.
    - At most ``max_sessions_per_address`` logged-in sessions per address.

    Nothing refuses a member's own login because of other people's failures.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.anonymous_failures = FailureWindows()
        self.member_failures = FailureWindows()
        self.logged_in_from: collections.Counter[str] = collections.Counter()

    def refusal(self, address: str, member_key: bytes | None) -> str | None:
        """Why a login from ``address`` is refused before any work (None: go on).
        ``member_key`` is the key it names if that is a current member's."""
        if (
            member_key is None
            and self.anonymous_failures.count(address) >= self.config.max_failed_auth_per_minute
        ):
            return "too many failed logins from this address"
        if self.logged_in_from[address] >= self.config.max_sessions_per_address:
            return "too many sessions from this address"
        return None

    def failed(self, address: str, member_key: bytes | None, member_id: str = "?") -> bool:
        """Count a failed login; True when its budget is spent (close the session)."""
        if member_key is not None:
            count = self.member_failures.hit((address, member_key))
            limit = self.config.max_failed_auth_per_key_per_minute
            if count == limit:
                log.warning(
                    "%d failed logins in a minute for member %s from %s", count, member_id, address
                )
        else:
            count = self.anonymous_failures.hit(address)
            limit = self.config.max_failed_auth_per_minute
        return count >= limit

    def logged_in(self, address: str) -> None:
        self.logged_in_from[address] += 1

    def logged_out(self, address: str) -> None:
        self.logged_in_from[address] -= 1
        if self.logged_in_from[address] <= 0:
            del self.logged_in_from[address]
