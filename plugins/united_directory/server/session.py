"""The WebSocket endpoint: connections, sessions, and their life from upgrade to close.

Why a module of its own: how a connection becomes a session, is read frame by
frame, is given a deadline to log in and is closed does not depend on what the
frames mean. :class:`Endpoint` owns the aiohttp application on ``/ws`` (behind
the pending-connection gate of :mod:`.limits`) and hands every session's
frames to a :class:`SessionHandler`, the directory service, which owns the
protocol and the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import WSMsgType, web

from united_core.wire import frames_pb2 as pb

from .limits import GatedSite, PendingGate, address_key

if TYPE_CHECKING:
    from ..model import Member
    from .config import Config

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Session:
    """One WebSocket connection, before and after its login."""

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
    old_key: bool = False  # its member rotated away from the key it logged in with
    reachability: tuple[str, str] = ("unknown", "unknown")  # as announced: (reachability, nat)
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


class SessionHandler(Protocol):
    """What the endpoint calls for each session (the directory service)."""

    async def session_opened(self, session: Session) -> None:
        """A new session: send it a login challenge."""

    async def frame_received(self, session: Session, data: bytes) -> None:
        """A binary frame; raise :class:`SessionClosed` to end the session."""

    async def error(self, session: Session, request_id: int, code: int, message: str) -> None:
        """Answer with an error frame (counted)."""

    async def session_closed(self, session: Session) -> None:
        """The session ended, however it ended."""


class Endpoint:
    """The aiohttp application serving ``/ws``, one :class:`Session` per connection.

    Connections reach aiohttp only through the :class:`~.limits.PendingGate`;
    a session that has not logged in within ``login_timeout`` is closed (4008).
    """

    def __init__(self, config: Config, handler: SessionHandler) -> None:
        self.config = config
        self.handler = handler
        self.gate = PendingGate(
            config.max_pending_sessions, config.max_pending_per_address, config.header_timeout
        )
        self.sessions: set[Session] = set()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._closers: set[asyncio.Task[Any]] = set()

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen; with ``ssl_context``, every connection is TLS (``wss://``)."""
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
        site = GatedSite(
            self._runner,
            self.config.listen_host,
            self.config.listen_port,
            self.gate,
            backlog=min(4096, max(128, self.config.max_pending_sessions)),
            ssl_context=ssl_context,
        )
        await site.start()
        self.port = site.port
        self._check_file_limit()

    async def stop(self) -> None:
        for session in list(self.sessions):
            with contextlib.suppress(Exception):
                await session.ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()

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
            self.gate.request_arrived(request.transport)
        return await handler(request)

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        # aiohttp closes (1009) past twice our bound; between the two we answer TOO_LARGE.
        ws = web.WebSocketResponse(max_msg_size=2 * self.config.max_frame_bytes, heartbeat=30)
        await ws.prepare(request)
        remote = request.remote or "?"
        session = Session(ws, remote, request, self.config.send_timeout, address_key(remote))
        self.sessions.add(session)
        login_timer = asyncio.get_running_loop().call_later(
            self.config.login_timeout, self._login_expired, session
        )
        try:
            await self.handler.session_opened(session)
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    try:
                        await self.handler.frame_received(session, msg.data)
                    except SessionClosed:
                        break
                elif msg.type == WSMsgType.TEXT:
                    await self.handler.error(
                        session, 0, pb.ERROR_CODE_MALFORMED, "frames are binary protobuf"
                    )
                    break
                else:
                    break
        except Exception:
            log.exception("directory session from %s failed", session.remote)
        finally:
            login_timer.cancel()
            self.sessions.discard(session)
            await self.handler.session_closed(session)
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    def _login_expired(self, session: Session) -> None:
        if session.member is None and not session.ws.closed:
            log.info("closing a session from %s that never logged in", session.remote)
            self.close_later(session, 4008, b"login timeout")

    def close_later(self, session: Session, code: int, message: bytes) -> None:
        """Close ``session`` from a callback or a handler (without waiting for it)."""
        if session.ws.closed:
            return
        task = asyncio.get_running_loop().create_task(session.ws.close(code=code, message=message))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def logged_in(self, session: Session) -> None:
        """The session logged in: it no longer holds a pending place."""
        transport = session.request.transport
        if transport is not None:
            self.gate.release(transport)

    def answering(self, session: Session, answering: bool = True) -> None:
        """The session's login is being checked (it cannot be pushed out meanwhile)."""
        transport = session.request.transport
        if transport is not None:
            self.gate.answering(transport, answering)
