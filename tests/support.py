"""Helpers shared by several test modules (servers, registered clients, raw sessions,
communities, processes); the ones plugin authors need ship in united_core.testing."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from conftest import run_cli, united_cmd
from united_directory import protocol
from united_directory.client.session import DirectoryClient

from united_core.identity import Identity
from united_core.node import Node
from united_core.testing import join, make_node_dir, merge_toml_text, on_loopback, running_node
from united_core.wire import frames_pb2 as pb


class Recorder:
    """A client whose pushes are kept, for assertions."""

    def __init__(self) -> None:
        self.pushes: list[pb.ServerFrame] = []
        self.changed = asyncio.Event()

    def __call__(self, frame: pb.ServerFrame) -> None:
        self.pushes.append(frame)
        self.changed.set()

    async def wait_for(self, predicate: Any, timeout: float = 5) -> pb.ServerFrame:
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.pushes:
                    if predicate(frame):
                        return frame
                self.changed.clear()
                await self.changed.wait()


SERVER_EXTRA = '[directory]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n'


def server_config(tmp_path: Path, extra: str = "", plugins: tuple[str, ...] = ()) -> Path:
    existing = tmp_path / "server" / "united.toml"
    if existing.exists():
        return existing
    return make_node_dir(
        tmp_path,
        "server",
        role="server",
        plugins=("ping", "membership", "directory", *plugins),
        extra=SERVER_EXTRA + extra,
    )


@contextlib.asynccontextmanager
async def server(tmp_path: Path, extra: str = "") -> AsyncIterator[tuple[Node, Any, str]]:
    async with running_node(server_config(tmp_path, extra)) as node:
        service = node.service("directory")
        yield node, service, f"ws://127.0.0.1:{service.port}/ws"


async def registered(
    url: str, service: Any, name: str, tls_fingerprint: str = ""
) -> tuple[DirectoryClient, Identity, pb.Welcome, Recorder]:
    identity = Identity.generate()
    pushes = Recorder()
    client = await DirectoryClient.connect(url, on_push=pushes, tls_fingerprint=tls_fingerprint)
    invite = await service.create_invite()
    welcome = await client.register(identity, name, invite["code"])
    return client, identity, welcome, pushes


async def raw_session(
    url: str,
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse, pb.ServerFrame]:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(url, max_msg_size=0)
    msg = await ws.receive(timeout=5)
    return http, ws, protocol.decode_server_frame(msg.data)


async def replies_until_close(ws: aiohttp.ClientWebSocketResponse) -> list[pb.ServerFrame]:
    out = []
    async with asyncio.timeout(5):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                out.append(protocol.decode_server_frame(msg.data))
    return out


async def peer_ids(node: Node) -> set[str]:
    return {p["peer_id"] for p in await node.p2p.peers()}


@contextlib.asynccontextmanager
async def community(
    tmp_path: Path, members: int = 2
) -> AsyncIterator[tuple[Node, list[Node], list[Path]]]:
    """A running server and ``members`` clients created by `united join`, unedited."""
    async with running_node(server_config(tmp_path)) as server:
        service = server.service("directory")
        url = f"ws://127.0.0.1:{service.port}/ws"
        configs = [
            await join(url, service, tmp_path / f"member{i}", f"member{i}") for i in range(members)
        ]
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(running_node(c)) for c in configs]
            for client in clients:
                await asyncio.wait_for(client.service("discovery").connected.wait(), 10)
            yield server, clients, configs


def init_server_dir(tmp_path: Path, *options: str, port: int | None = None) -> Path:
    """`united init --role server OPTIONS` as an operator runs it, then only what a
    test on loopback needs (loopback listeners, free ports); the config's path."""
    directory = tmp_path / "server"
    result = run_cli("init", "--role", "server", "--dir", str(directory), *options)
    assert result.returncode == 0, result.stderr
    config = directory / "united.toml"
    on_loopback(config)
    extra = f'[directory]\nlisten_host = "127.0.0.1"\nlisten_port = {port or free_port()}\n'
    extra += "[autonat]\nobserve_ports = [0, 0]\n"  # not the fixed 7422-7423
    config.write_text(merge_toml_text(config.read_text(), extra))
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(config: Path, proc: subprocess.Popen[str], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = config.parent / "node.log"
            output = log.read_text()[-3000:] if log.exists() else proc.communicate()
            raise AssertionError(f"node exited early: {output}")
        result = run_cli("ctl", "-c", str(config), "status", "--json", timeout=10)
        if result.returncode == 0:
            return json.loads(result.stdout)
        time.sleep(0.2)
    raise AssertionError("node did not start serving")


@contextlib.contextmanager
def serving_node(config: Path) -> Iterator[subprocess.Popen[str]]:
    """``united run`` as a user starts it; SIGTERM (then kill) when the test is done.

    Its output goes to ``node.log`` beside the config: a pipe nobody reads fills up
    and blocks the node's logging, and with it the node."""
    with (config.parent / "node.log").open("a") as log:
        proc = subprocess.Popen(
            united_cmd("run", "-c", str(config)), stdout=log, stderr=subprocess.STDOUT, text=True
        )
    try:
        wait_until_serving(config, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---- hookspec rules (datasette's): shared by the core's and the directory's specs -------


def hook_names(module: Any) -> list[str]:
    """The hookspecs a hookspec module defines (``united_*`` callables)."""
    return sorted(n for n, o in vars(module).items() if n.startswith("united_") and callable(o))


def check_hook_documented(module: Any, name: str, doc: Path) -> None:
    """``doc`` has a ``### name(params)`` heading with the hook's exact signature."""
    heading = f"{name}({', '.join(inspect.signature(getattr(module, name)).parameters)})"
    headings = set(re.findall(r"^###\s+`?([^`\n]+)`?\s*$", doc.read_text(), flags=re.M))
    assert heading in headings, f"{doc.name} needs '### {heading}'"


def check_hook_has_a_test(name: str) -> None:
    """Some ``tests/**/test_*.py`` defines ``test_hook_<name>``."""
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.rglob("test_*.py"))
    assert f"def test_hook_{name}(" in tests


def check_hook_docstring(module: Any, name: str) -> None:
    doc = inspect.getdoc(getattr(module, name)) or ""
    assert len(doc.splitlines()) >= 2, f"{name} needs a real docstring"
