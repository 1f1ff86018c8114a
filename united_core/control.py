"""The local control API: versioned JSON lines over an owner-only Unix socket.

Protocol version 1. One request per line::

    {"v": 1, "id": 7, "command": "status", "args": []}

and for it either one reply, or (for streaming commands) any number of events
followed by an end marker::

    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "event": {...}}            # streaming commands only
    {"v": 1, "id": 7, "ok": true, "end": true}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "bad_request", "message": "..."}}

An error may carry ``"detail"``: a machine code from the layer below (the
server's ``ERROR_CODE_UNKNOWN_CHANNEL``), for ``--json``; the message is for
people. A stream the node ends because it stops ends with
``{"ok": true, "end": true, "reason": "the node is stopping"}``.

The socket is created with a 0177 umask (so it is never reachable by others,
not even briefly) inside the config directory. Plugins add commands through
``united_register_commands``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api import CommandError, ControlCommand, NodeState

if TYPE_CHECKING:
    from .node import Node

__all__ = ["CommandError", "ControlClient", "ControlCommand", "ControlServer"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
# Answered while the node starts or stops too; everything else says "starting".
ALWAYS_SERVED = frozenset({"status", "stop"})
MAX_LINE_BYTES = 1024 * 1024


class ControlSocketBusy(RuntimeError):
    """Another running node already answers on this control socket."""


class ControlServer:
    """Serves the commands on a Unix socket until closed."""

    def __init__(self, path: Path, node: Node, commands: Mapping[str, ControlCommand]) -> None:
        self.path = path
        self.node = node
        self.commands = dict(commands)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()  # ends every stream with an end marker
        self._streams: set[asyncio.Future[None]] = set()  # each done when its stream ends

    def set_commands(self, commands: Mapping[str, ControlCommand]) -> None:
        """The full command set, once every plugin's hook object is registered."""
        self.commands = dict(commands)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _socket_answers(self.path):
                raise ControlSocketBusy(
                    f"{self.path}: another node is already running with this socket"
                )
            self.path.unlink()  # stale: left by a node that was killed
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve_client, path=str(self.path), limit=MAX_LINE_BYTES
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Streams end first, each with its end marker (a `ctl tail` attached to a
            # stopping node ends cleanly); then the idle connections are cancelled.
            self._closing.set()
            if self._streams:
                await asyncio.wait(list(self._streams), timeout=1.0)
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _send(
                        writer, _error(None, "too_large", f"request over {MAX_LINE_BYTES} bytes")
                    )
                    break
                if not line:
                    break
                await self._handle_line(line, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() cancels the connections. This task is asyncio's own (the
            # streams' client_connected_cb): ending it cancelled makes asyncio log
            # a CancelledError traceback, so it ends normally; close() awaits it.
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle_line(
        self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            await _send(writer, _error(None, "malformed", f"not a JSON request: {exc}"))
            return
        req_id = request.get("id")
        if request.get("v") != PROTOCOL_VERSION:
            await _send(
                writer,
                _error(
                    req_id,
                    "unsupported_version",
                    f"this node speaks control protocol v{PROTOCOL_VERSION}",
                ),
            )
            return
        name, args = request.get("command"), request.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            await _send(writer, _error(req_id, "malformed", "args must be a list of strings"))
            return
        if self.node.state is not NodeState.RUNNING and name not in ALWAYS_SERVED:
            await _send(
                writer,
                _error(req_id, self.node.state.value, f"the node is {self.node.state.value}"),
            )
            return
        command = self.commands.get(name) if isinstance(name, str) else None
        if command is None:
            known = ", ".join(sorted(self.commands))
            await _send(
                writer,
                _error(req_id, "unknown_command", f"unknown command {name!r}; commands: {known}"),
            )
            return
        try:
            outcome = command.handler(self.node, args)
            if inspect.isasyncgen(outcome):
                await self._stream(outcome, req_id, reader, writer)
            else:
                result = await outcome  # type: ignore[misc]
                await _send(
                    writer, {"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "result": result}
                )
        except CommandError as exc:
            await _send(writer, _error(req_id, exc.code, str(exc), getattr(exc, "detail", None)))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("control command %s failed", name)
            await _send(writer, _error(req_id, "internal", f"{type(exc).__name__}: {exc}"))

    async def _stream(
        self, events: Any, req_id: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Send a streaming command's events until it ends or the client leaves.

        A stream occupies its connection: anything the client sends (or its
        going away) ends the stream at once, so a subscriber that disconnects
        stops costing the node immediately, not at the next event.
        """

        async def pump() -> None:
            async for event in events:
                await _send(writer, {"v": PROTOCOL_VERSION, "id": req_id, "event": event})
            await _send(writer, {"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "end": True})

        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._streams.add(ended)
        pumping = asyncio.create_task(pump())
        leaving = asyncio.create_task(reader.read(1))
        closing = asyncio.create_task(self._closing.wait())
        done: set[asyncio.Task[Any]] = set()
        try:
            done, _ = await asyncio.wait(
                {pumping, leaving, closing}, return_when=asyncio.FIRST_COMPLETED
            )
            if closing in done and pumping not in done:
                # The node stops: say so, then end like any stream (not a dropped line).
                end = {"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "end": True}
                with contextlib.suppress(ConnectionError, TimeoutError):
                    async with asyncio.timeout(0.5):
                        await _send(writer, {**end, "reason": "the node is stopping"})
        finally:
            for waiter in (pumping, leaving, closing):
                waiter.cancel()
            await asyncio.gather(pumping, leaving, closing, return_exceptions=True)
            try:
                await events.aclose()
            finally:
                self._streams.discard(ended)
                ended.set_result(None)
        if pumping in done and not pumping.cancelled() and pumping.exception() is not None:
            raise pumping.exception()  # type: ignore[misc]


def _error(req_id: Any, code: str, message: str, detail: str | None = None) -> dict[str, Any]:
    error = {"code": code, "message": message}
    if detail:
        error["detail"] = detail
    return {"v": PROTOCOL_VERSION, "id": req_id, "ok": False, "error": error}


async def _send(writer: asyncio.StreamWriter, obj: Mapping[str, Any]) -> None:
    writer.write(json.dumps(obj, default=str).encode() + b"\n")
    await writer.drain()


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


# ---- client ------------------------------------------------------------------------


class ControlClientError(Exception):
    """The node is unreachable, or answered with an error.

    ``code`` is the control API's (``bad_request``, ``unknown_command``, ...),
    ``unreachable`` when no node answers and ``disconnected`` when the node
    closed the connection (it stopped); ``detail`` is the error's machine code
    from the layer below, if any.
    """

    def __init__(self, message: str, code: str = "unreachable", detail: str | None = None) -> None:
        self.code = code
        self.detail = detail
        super().__init__(message)

    @property
    def node_gone(self) -> bool:
        """No node to talk to: none runs, or it went away mid-way."""
        return self.code in ("unreachable", "disconnected")

    def as_json(self) -> dict[str, Any]:
        """The error as ``--json`` prints it."""
        error: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.detail:
            error["detail"] = self.detail
        return {"error": error}


_GONE = "the node closed the connection"


class ControlClient:
    """A connection to a running node's control socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self.end_reason = ""  # why the node ended the last stream, if it said

    @classmethod
    async def connect(cls, path: Path) -> ControlClient:
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE_BYTES)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlClientError(f"no node is running (no control socket at {path})") from None
        except PermissionError:
            raise ControlClientError(f"permission denied on control socket {path}") from None
        except OSError as exc:
            raise ControlClientError(
                f"cannot reach control socket {path}: {exc.strerror}"
            ) from None
        return cls(reader, writer)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def wait_closed(self) -> None:
        """Return when the node closes this connection (sends nothing to it meanwhile)."""
        with contextlib.suppress(ConnectionError, OSError):
            while await self._reader.read(4096):
                pass

    async def _request(self, command: str, args: list[str]) -> int:
        self._next_id += 1
        line = {"v": PROTOCOL_VERSION, "id": self._next_id, "command": command, "args": args}
        try:
            self._writer.write(json.dumps(line).encode() + b"\n")
            await self._writer.drain()
        except (ConnectionError, OSError):
            raise ControlClientError(_GONE, "disconnected") from None
        return self._next_id

    async def _reply(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
        except (ConnectionError, OSError):
            raise ControlClientError(_GONE, "disconnected") from None
        if not line:
            raise ControlClientError(_GONE, "disconnected")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("ok") is False:
            err = reply.get("error", {})
            raise ControlClientError(
                err.get("message", "error"), err.get("code", "error"), err.get("detail")
            )
        return reply

    async def call(self, command: str, args: list[str] | None = None) -> Any:
        """Send one command and return its result."""
        await self._request(command, args or [])
        return (await self._reply()).get("result")

    async def stream(self, command: str, args: list[str] | None = None) -> AsyncIterator[Any]:
        """Send a streaming command and yield its events until it ends (``end_reason``
        then says why, if the node said: it is stopping)."""
        self.end_reason = ""
        await self._request(command, args or [])
        while True:
            reply = await self._reply()
            if reply.get("end"):
                self.end_reason = str(reply.get("reason") or "")
                return
            if "event" in reply:
                yield reply["event"]
            elif "result" in reply:
                yield reply["result"]
                return
