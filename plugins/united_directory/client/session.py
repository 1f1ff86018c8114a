"""One WebSocket session with the coordination server (client side).

Used by the discovery service, by ``united join`` and by tests. Requests carry a
``request_id``; the reply with the same id completes them. Frames with id 0 are
pushes (member list, presence) or a fresh login challenge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import aiohttp

from united_core.api import RemoteRefusal
from united_core.identity import Identity
from united_core.wire import frames_pb2 as pb

from .. import protocol
from ..tls import FingerprintError, client_ssl, describe_tls_failure

log = logging.getLogger(__name__)

PushHandler = Callable[[pb.ServerFrame], Any]


class DirectoryError(RemoteRefusal):
    """The server answered with an error frame, or the session ended."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, f"{pb.ErrorCode.Name(code)}: {message}" if code else message)
        self.code: int = code
        self.message = message  # for people, without the code (``ctl`` prints this)

    @property
    def code_name(self) -> str | None:
        """The protocol's code (``ERROR_CODE_UNKNOWN_CHANNEL``), kept for ``--json``."""
        return pb.ErrorCode.Name(self.code) if self.code else None


class Unreachable(ConnectionError):
    """The server could not be reached, refused TLS or the WebSocket, or did not
    answer in time; the message is one line saying which."""


class _Redirected(Exception):
    """Raised from aiohttp's redirect trace: a directory is never followed elsewhere."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(status, location)
        self.status = status
        self.location = location


def describe_redirect(url: str, status: int, location: str) -> str:
    return (
        f"{url}: the server answered the WebSocket upgrade with a redirect (HTTP {status}"
        + (f" to {location}" if location else "")
        + "); redirects are not followed (a pinned wss:// connection could end up in "
        "plain text): use the directory's own URL"
    )


class TLSFailure(Unreachable):
    """The TLS handshake failed or the server's certificate was refused (not the
    pinned one, not trusted): nothing was sent to the server."""


def describe_connect_error(exc: aiohttp.ClientError, url: str) -> str:
    """One line for a failure (other than TLS) to open a WebSocket to ``url``."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return (
            f"{url} is not a UNITED directory (the WebSocket upgrade got HTTP {exc.status}"
            + (f" {exc.message}" if exc.message else "")
            + ")"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return f"{url}: cannot resolve the host name {exc.host!r} ({os_error.strerror})"
        errno = getattr(os_error, "errno", None)  # asyncio's own text hides the reason
        reason = os.strerror(errno) if errno else str(os_error) or type(os_error).__name__
        return f"{url}: cannot connect to {exc.host} port {exc.port} ({reason})"
    hint = " (a wss:// server reached with ws://?)" if url.startswith("ws://") else ""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{url}: the server closed the connection without answering{hint}"
    if isinstance(exc, aiohttp.ClientOSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"{url}: the server closed the connection without answering ({reason}){hint}"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{url}: not a valid URL"
    return f"{url}: {type(exc).__name__}: {exc}"


class DirectoryClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        on_push: PushHandler | None,
        timeout: float,
    ) -> None:
        self._http = http
        self._ws = ws
        self._on_push = on_push
        self._timeout = timeout
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[pb.ServerFrame]] = {}
        self._challenge: asyncio.Future[pb.Challenge] = asyncio.get_running_loop().create_future()
        self.server_id = ""
        self.logged_in = False
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="united-directory-reader")

    @classmethod
    async def connect(
        cls,
        url: str,
        on_push: PushHandler | None = None,
        request_timeout: float = 10.0,
        *,
        tls_fingerprint: str = "",
        connect_timeout: float | None = None,
    ) -> DirectoryClient:
        """Open a session with the server at ``url``.

        ``wss://`` is verified with the system's CAs and the host name, or, given
        ``tls_fingerprint``, by that certificate fingerprint alone (never falling
        back to ``ws://``). The connection, TLS handshake and WebSocket upgrade
        together take at most ``connect_timeout`` seconds (default
        ``request_timeout``). Failures raise :class:`Unreachable` with a one-line
        reason.
        """
        try:
            ssl_param = client_ssl(url, tls_fingerprint)
        except FingerprintError as exc:
            raise Unreachable(str(exc)) from None
        timeout = request_timeout if connect_timeout is None else connect_timeout
        connected = False

        async def on_connected(*_: Any) -> None:
            nonlocal connected
            connected = True

        async def on_redirect(_: Any, __: Any, params: aiohttp.TraceRequestRedirectParams) -> None:
            # Before aiohttp follows it: nothing is sent to the Location named.
            location = params.response.headers.get("Location", "")
            params.response.close()
            raise _Redirected(params.response.status, location)

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_connected)
        trace.on_request_redirect.append(on_redirect)
        http = aiohttp.ClientSession(trace_configs=[trace])
        try:
            async with asyncio.timeout(timeout):
                ws = await http.ws_connect(
                    url,
                    max_msg_size=2 * protocol.MAX_FRAME_BYTES,
                    heartbeat=30,
                    timeout=aiohttp.ClientWSTimeout(ws_close=request_timeout),
                    autoping=True,
                    ssl=ssl_param,
                )
        except TimeoutError:
            await http.close()
            if connected:
                raise Unreachable(
                    f"{url}: the server accepted the connection but did not answer the "
                    f"WebSocket upgrade within {timeout:g} s (is this the directory's port?)"
                ) from None
            if url.startswith("wss://"):
                raise Unreachable(
                    f"{url}: no TLS connection within {timeout:g} s (the host does not "
                    "answer, or this port does not complete a TLS handshake)"
                ) from None
            raise Unreachable(
                f"{url}: no connection within {timeout:g} s (the host does not answer: "
                "a wrong address, or a firewall dropping the port)"
            ) from None
        except _Redirected as exc:
            await http.close()
            raise Unreachable(describe_redirect(url, exc.status, exc.location)) from None
        except aiohttp.ClientError as exc:
            await http.close()
            tls = describe_tls_failure(exc, url, tls_fingerprint)
            if tls is not None:
                raise TLSFailure(f"{url}: {tls}") from None
            raise Unreachable(describe_connect_error(exc, url)) from None
        except BaseException:
            await http.close()
            raise
        history = ws._response.history  # empty unless a redirect got past the trace
        if history:
            await ws.close()
            await http.close()
            raise Unreachable(
                describe_redirect(url, history[0].status, history[0].headers.get("Location", ""))
            )
        return cls(http, ws, on_push, request_timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._http.close()

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                try:
                    frame = protocol.decode_server_frame(msg.data)
                except protocol.FrameError as exc:
                    log.warning("bad frame from the server: %s", exc)
                    continue
                self._dispatch(frame)
        finally:
            self.closed.set()
            error = DirectoryError(0, "the session with the server ended")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            if not self._challenge.done():
                self._challenge.set_exception(error)
                self._challenge.exception()  # nobody may be waiting: mark it retrieved

    def _dispatch(self, frame: pb.ServerFrame) -> None:
        kind = frame.WhichOneof("body")
        if kind == "challenge":
            self.server_id = frame.challenge.server_id
            if self._challenge.done():
                self._challenge = asyncio.get_running_loop().create_future()
            self._challenge.set_result(frame.challenge)
            return
        if (
            kind == "error"
            and frame.request_id == 0
            and not self.logged_in
            and not self._challenge.done()
        ):
            # Refused before any challenge (rate limited): that is why the login fails.
            self._challenge.set_exception(DirectoryError(frame.error.code, frame.error.message))
            self._challenge.exception()
            return
        future = self._pending.pop(frame.request_id, None) if frame.request_id else None
        if future is not None:
            if not future.done():
                future.set_result(frame)
        elif self._on_push is not None:
            try:
                self._on_push(frame)
            except Exception:
                log.exception("push handler failed")

    async def send(self, frame: pb.ClientFrame) -> None:
        await self._ws.send_bytes(frame.SerializeToString())

    async def request(self, frame: pb.ClientFrame) -> pb.ServerFrame:
        """Send ``frame`` with a fresh request id; return the reply or raise DirectoryError."""
        self._next_id += 1
        frame.request_id = self._next_id
        future: asyncio.Future[pb.ServerFrame] = asyncio.get_running_loop().create_future()
        self._pending[frame.request_id] = future
        try:
            await self.send(frame)
            async with asyncio.timeout(self._timeout):
                reply = await future
        finally:
            self._pending.pop(frame.request_id, None)
        if reply.WhichOneof("body") == "error":
            raise DirectoryError(reply.error.code, reply.error.message)
        return reply

    async def _next_challenge(self) -> pb.Challenge:
        async with asyncio.timeout(self._timeout):
            challenge = await self._challenge
        # A challenge is single use: the next login waits for the next one.
        self._challenge = asyncio.get_running_loop().create_future()
        return challenge

    async def login(self, identity: Identity) -> pb.Welcome:
        challenge = await self._next_challenge()
        signed = protocol.auth_bytes(challenge.server_id, challenge.nonce, identity.public_key)
        reply = await self.request(
            pb.ClientFrame(
                auth=pb.AuthResponse(
                    public_key=identity.public_key,
                    signature=identity.sign(signed),
                    nonce=challenge.nonce,
                )
            )
        )
        self.logged_in = True
        return reply.welcome

    async def register(self, identity: Identity, display_name: str, invite_code: str) -> pb.Welcome:
        challenge = await self._next_challenge()
        signed = protocol.register_bytes(
            challenge.server_id, challenge.nonce, identity.public_key, display_name
        )
        reply = await self.request(
            pb.ClientFrame(
                register=pb.Register(
                    invite_code=invite_code,
                    display_name=display_name,
                    public_key=identity.public_key,
                    signature=identity.sign(signed),
                    nonce=challenge.nonce,
                )
            )
        )
        self.logged_in = True
        return reply.welcome

    async def rotate_key(self, old: Identity, new: Identity, member_id: str) -> None:
        signed = protocol.rotation_bytes(self.server_id, member_id, old.public_key, new.public_key)
        await self.request(
            pb.ClientFrame(
                rotate_key=pb.RotateKey(
                    new_public_key=new.public_key,
                    signature_by_old=old.sign(signed),
                    signature_by_new=new.sign(signed),
                )
            )
        )
