"""The control API's protocol and its handling of bad input, on a real node."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

from conftest import make_node_dir, running_node

from united_core.control import MAX_LINE_BYTES, ControlClient, ControlClientError


async def raw_exchange(path: Path, payload: bytes) -> list[dict]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=4 * MAX_LINE_BYTES)
    writer.write(payload)
    await writer.drain()
    lines = []
    try:
        async with asyncio.timeout(5):
            while True:
                line = await reader.readline()
                if not line:
                    break
                lines.append(json.loads(line))
                if len(lines) >= payload.count(b"\n"):
                    break
    finally:
        writer.close()
    return lines


def test_bad_requests_get_error_replies_and_the_node_keeps_serving(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_node(make_node_dir(tmp_path)) as node:
            path = node.settings.resolve("united.sock")
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            cases = [
                (b"not json\n", "malformed"),
                (b"[1, 2]\n", "malformed"),
                (b'{"v": 99, "id": 1, "command": "status"}\n', "unsupported_version"),
                (b'{"v": 1, "id": 2, "command": "status", "args": "x"}\n', "malformed"),
                (b'{"v": 1, "id": 3, "command": "status", "args": [1]}\n', "malformed"),
                (b'{"v": 1, "id": 4, "command": "nope"}\n', "unknown_command"),
                (b'{"v": 1, "id": 5, "command": 7}\n', "unknown_command"),
                (b'{"v": 1, "id": 6, "command": "connect", "args": []}\n', "bad_request"),
                (b"\xff\xfe\n", "malformed"),
            ]
            for payload, code in cases:
                (reply,) = await raw_exchange(path, payload)
                assert reply["ok"] is False and reply["error"]["code"] == code, (payload, reply)
            # An oversized line closes that connection with an error, nothing else.
            replies = await raw_exchange(path, b"x" * (MAX_LINE_BYTES + 10) + b"\n")
            assert replies and replies[0]["error"]["code"] == "too_large"
            client = await ControlClient.connect(path)
            try:
                status = await client.call("status")
                assert status["peer_id"] == node.identity.peer_id
                assert status["dialable_addrs"] == status["listen_addrs"]  # concrete already
                # Several requests on one connection, answered in order.
                assert (await client.call("peers")) == []
                try:
                    await client.call("nope")
                except ControlClientError as exc:
                    assert exc.code == "unknown_command"
                assert (await client.call("status"))["plugins"] == ["ping"]
            finally:
                await client.close()

    asyncio.run(scenario())


def test_stale_socket_from_a_killed_node_is_replaced(tmp_path: Path) -> None:
    config = make_node_dir(tmp_path)
    stale = config.parent / "united.sock"
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: what SIGKILL leaves behind

    async def scenario() -> None:
        async with running_node(config) as node:
            client = await ControlClient.connect(stale)
            try:
                assert (await client.call("status"))["peer_id"] == node.identity.peer_id
            finally:
                await client.close()
        assert not stale.exists()

    asyncio.run(scenario())
