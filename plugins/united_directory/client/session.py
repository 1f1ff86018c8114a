"""One WebSocket session with the coordination server (client side).

Used by the discovery service, by ``united join`` and by tests. Requests carry a
``request_id``; the reply with the same id completes them. Frames with id 0 are
pushes (member list, presence) or a fresh login challenge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from united_core.api import RemoteRefusal
from united_core.identity import Identity
from united_core.wire import frames_pb2 as pb

from .. import protocol

log = logging.getLogger(__name__)

PushHandler = Callable[[pb.ServerFrame], Any]


class DirectoryError(RemoteRefusal):
    """The server answered with an error frame, or the session ended."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, f"{pb.ErrorCode.Name(code)}: {message}" if code else message)
        self.code: int = code


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
        cls, url: str, on_push: PushHandler | None = None, request_timeout: float = 10.0
    ) -> DirectoryClient:
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(
                url,
                max_msg_size=2 * protocol.MAX_FRAME_BYTES,
                heartbeat=30,
                timeout=aiohttp.ClientWSTimeout(ws_close=request_timeout),
                autoping=True,
            )
        except BaseException:
            await http.close()
            raise
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
