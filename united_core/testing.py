"""Testing helpers: nodes and small communities on loopback, for tests and benchmarks.

Two kinds, both with real libp2p hosts and real WebSocket sessions:

- **in process** (what plugin tests want): :func:`make_node_dir` writes a node
  directory with ``united init``, :func:`running_node` runs a node in the
  caller's event loop, :func:`running_community` runs a server and members
  joined to channels; :func:`until`, :func:`ctl` and :func:`call` wait for and
  drive them. The pytest plugin :mod:`united_core.pytest_plugin` wraps them in
  fixtures (``united_node_dir``, ``united_node``, ``united_community``,
  ``united_ctl``);
- **as processes** (:class:`Community`, :class:`NodeProcess`): members created
  with ``united init``/``united invite``/``united join`` exactly as a user
  would, each its own process with its own directory. Logs go to files in each
  node's directory (never pipes, which a chatty node could fill).

Everything listens on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .node import Node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def united(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "united_core", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def poll(fn: Callable[[], Any], timeout: float = 20, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out; last result: {last!r}")


def add_to_table(config: Path, table: str, lines: str) -> None:
    text = config.read_text()
    header = f"[{table}]\n"
    if header not in text:
        text += f"\n{header}"
    config.write_text(text.replace(header, header + lines.rstrip("\n") + "\n", 1))


@dataclass
class NodeProcess:
    """A ``united run`` process; ``ctl`` runs ``united ctl`` against it.

    ``command`` builds every command line, so a subclass can run the node
    elsewhere (tests/netns.py runs it in a network namespace).
    """

    name: str
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.config.parent / "node.log"

    def command(self, *args: str) -> list[str]:
        """The command line of ``united ARGS`` for this node."""
        return [sys.executable, "-m", "united_core", *args]

    def ctl(self, *args: str, timeout: float = 30) -> Any:
        result = subprocess.run(
            self.command("ctl", "-c", str(self.config), *args, "--json"),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: ctl {' '.join(args)}: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else None

    def try_ctl(self, *args: str) -> Any:
        try:
            return self.ctl(*args, timeout=10)
        except (RuntimeError, subprocess.TimeoutExpired):
            return None

    def spawn(self) -> subprocess.Popen[bytes]:
        """``united run`` for this node, logging to ``log``; returns without waiting."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command("run", "-c", str(self.config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self.proc

    def start(self, *, timeout: float = 30) -> None:
        self.spawn()
        poll(lambda: self._alive() and self.try_ctl("status"), timeout=timeout)

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
        return True

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)


@dataclass
class Community:
    base: Path
    mesh_settings: str = ""
    member_settings: dict[str, str] = field(default_factory=dict)  # table -> lines
    server: NodeProcess | None = None
    members: list[NodeProcess] = field(default_factory=list)

    def start_server(self) -> NodeProcess:
        directory = self.base / "server"
        assert united("init", "--role", "server", "--dir", str(directory)).returncode == 0
        config = directory / "united.toml"
        config.write_text(
            config.read_text().replace('"/ip4/0.0.0.0/tcp/7420"', '"/ip4/127.0.0.1/tcp/0"')
        )
        add_to_table(
            config, "directory", f'listen_host = "127.0.0.1"\nlisten_port = {free_port()}\n'
        )
        add_to_table(config, "autonat", "observe_ports = [0, 0]\n")  # not 7422-7423
        add_to_table(config, "metrics", f'listen = "{METRICS_LOOPBACK}"\n')  # not 9464
        if self.mesh_settings:
            add_to_table(config, "mesh", self.mesh_settings)
        self.server = NodeProcess("server", config)
        self.server.start()
        return self.server

    def create_channel(self, name: str) -> dict[str, str]:
        assert self.server is not None
        return self.server.ctl("channel-create", name)  # type: ignore[no-any-return]

    def add_member(self, name: str, *, start: bool = True) -> NodeProcess:
        assert self.server is not None
        invite = self.server.ctl("invite")
        directory = self.base / name
        result = united(
            "join", invite["url"], invite["code"], "--dir", str(directory), "--name", name
        )
        if result.returncode != 0:
            raise RuntimeError(f"join {name}: {result.stderr}")
        config = directory / "united.toml"
        on_loopback(config)
        if self.mesh_settings:
            add_to_table(config, "mesh", self.mesh_settings)
        for table, lines in self.member_settings.items():
            add_to_table(config, table, lines)
        member = NodeProcess(name, config)
        self.members.append(member)
        if start:
            member.start()
        return member

    def stop(self) -> None:
        for node in [*self.members, *([self.server] if self.server else [])]:
            node.stop()


# ---- in process: node directories, nodes in this event loop, communities ----------------

LOOPBACK_LISTEN = "/ip4/127.0.0.1/tcp/0"
METRICS_LOOPBACK = "127.0.0.1:0"
# Free ports only: the directory's WebSocket, AutoNAT's NAT-observation ports.
SERVER_LOOPBACK = (
    '[directory]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n[autonat]\nobserve_ports = [0, 0]\n'
)


def _on_loopback(text: str) -> str:
    """Listen on loopback, on a free port (never the default 0.0.0.0 or a fixed port);
    the metrics endpoint too, where the file has its section (not 9464)."""
    extra = f'[p2p]\nlisten = ["{LOOPBACK_LISTEN}"]\n'
    if re.search(r"^\[metrics\]\s*$", text, flags=re.M):
        extra += f'[metrics]\nlisten = "{METRICS_LOOPBACK}"\n'
    return merge_toml_text(text, extra)


def make_node_dir(
    base: Path,
    name: str = "node",
    role: str = "client",
    *,
    plugins: Sequence[str] | None = ("ping",),
    extra: str = "",
) -> Path:
    """``united init`` a node in ``base/name`` listening on loopback; return its config path.

    ``plugins`` replaces the preset's ``[node] plugins`` (``None`` keeps the
    preset's; the names are not checked here, so a test can write a broken
    list); ``extra`` is TOML merged into the file (see :func:`merge_toml_text`).
    """
    from .cli import main as cli_main

    directory = base / name
    status = cli_main(["init", "--role", role, "--dir", str(directory)])
    if status != 0:
        raise RuntimeError(f"united init --role {role} --dir {directory} exited {status}")
    config = directory / "united.toml"
    text = _on_loopback(config.read_text())
    if plugins is not None:
        listed = "plugins = [" + ", ".join(f'"{p}"' for p in plugins) + "]"
        text = re.sub(r"^plugins = \[.*\]$", listed, text, count=1, flags=re.M)
    config.write_text(merge_toml_text(text, extra))
    return config


def enable_plugins(config: Path, *names: str) -> None:
    """Add ``names`` to the ``[node] plugins`` of ``config`` (those not listed yet)."""
    text = config.read_text()
    found = re.search(r"^plugins = \[(.*)\]$", text, flags=re.M)
    if found is None:
        raise ValueError(f"{config}: no [node] plugins line")
    listed = re.findall(r'"([^"]+)"', found.group(1))
    listed += [n for n in names if n not in listed]
    line = "plugins = [" + ", ".join(f'"{p}"' for p in listed) + "]"
    config.write_text(text[: found.start()] + line + text[found.end() :])


def merge_toml(config: Path, extra: str) -> None:
    """Merge the TOML ``extra`` into the file ``config`` (see :func:`merge_toml_text`)."""
    if extra.strip():
        config.write_text(merge_toml_text(config.read_text(), extra))


def merge_toml_text(text: str, extra: str) -> str:
    """Add ``extra``'s keys into the file's existing tables (TOML forbids a table twice).

    ``extra`` is ``[table]`` headers with ``key = value`` lines (one line each); a
    key already set in that table is replaced (only in that table: the same key
    elsewhere is left alone; an array is replaced, not appended to), a table not
    in the file is appended.
    """
    blocks = re.split(r"^(\[[^\]]+\])\s*$", extra, flags=re.M)
    if blocks[0].strip():
        raise ValueError("extra must start with a [table] header")
    for header, body in zip(blocks[1::2], blocks[2::2], strict=True):
        lines = body.strip("\n")
        match = re.search(rf"^{re.escape(header)}\s*$", text, flags=re.M)
        if match is None:
            text += f"\n{header}\n{lines}\n"
            continue
        start = match.end()
        following = re.search(r"^\[", text[start:], flags=re.M)
        end = start + following.start() if following else len(text)
        table = text[start:end]
        for key in re.findall(r"^([\w-]+)\s*=", lines, flags=re.M):  # the new value wins
            table = re.sub(rf"^{re.escape(key)}\s*=.*$\n?", "", table, flags=re.M)
        text = text[:start] + "\n" + lines + "\n" + table.lstrip("\n") + text[end:]
    return text


@contextlib.asynccontextmanager
async def running_node(config: Path, *, timeout: float = 20.0) -> AsyncIterator[Node]:
    """Run the node of ``config`` in this event loop; stop it (and wait) on exit.

    Yields once the node is up (every Resource started, ``united_node_started``
    done); a start-up error is raised here.
    """
    from .node import Node, load_settings

    settings, pm, _ = load_settings(config)
    node = Node(settings, pm)
    ready = asyncio.Event()
    task = asyncio.create_task(node.run(ready), name=f"united-node-{config.parent.name}")
    ready_wait = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait(
        {task, ready_wait}, return_when=asyncio.FIRST_COMPLETED, timeout=timeout
    )
    if task in done:
        ready_wait.cancel()
        task.result()  # raises the start-up error
        raise RuntimeError(f"the node of {config} stopped while starting")
    if not ready.is_set():
        ready_wait.cancel()
        node.request_stop()
        await asyncio.wait_for(task, 10)
        raise TimeoutError(f"the node of {config} did not start in {timeout} s")
    try:
        yield node
    finally:
        node.request_stop()
        await asyncio.wait_for(task, 10)


async def until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition"
) -> Any:
    """Wait until ``predicate()`` (sync, or returning an awaitable) is truthy; return it.

    Raises ``TimeoutError`` naming ``what`` and the last value after ``timeout`` s.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.05)


async def join(url: str, invite: str | Any, directory: Path, name: str) -> Path:
    """``united join`` as a member runs it; return the new node's config path (the
    node listens on loopback, like every test node).

    ``invite`` is an invite code, or an object with an async ``create_invite()``
    (the directory service). Runs in a thread: the command runs its own event loop.
    """
    from .cli import main as cli_main

    code = invite if isinstance(invite, str) else (await invite.create_invite())["code"]
    argv = ["join", url, code, "--dir", str(directory), "--name", name]
    status = await asyncio.to_thread(cli_main, argv)
    if status != 0:
        raise RuntimeError(f"united join ... --name {name} exited {status}")
    config = directory / "united.toml"
    on_loopback(config)
    return config


def on_loopback(config: Path) -> None:
    """Make a node listen on loopback only (tests talk to nothing else; a wildcard
    listener would announce this machine's other addresses)."""
    config.write_text(_on_loopback(config.read_text()))


@dataclass(frozen=True)
class CtlResult:
    """What ``united ctl`` did: its exit status and what it printed."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """``stdout`` parsed (run the command with ``--json``)."""
        return json.loads(self.stdout)


async def ctl(config: Path, *args: str, timeout: float = 30.0) -> CtlResult:
    """Run ``united ctl -c CONFIG ARGS...`` in a process, as a user would; never raises
    for a failing command (look at ``returncode`` and ``stderr``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "united_core",
        "ctl",
        "-c",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CtlResult(tuple(args), proc.returncode, out.decode(), err.decode())


async def call(node: Node, command: str, *args: str) -> Any:
    """Run one control command on ``node`` through its control socket; its JSON result.

    A refusal raises ``ControlClientError`` (``.code`` and the message).
    """
    from .control import ControlClient

    settings = node.settings
    client = await ControlClient.connect(settings.resolve(settings["control"].socket))
    try:
        return await client.call(command, list(args))
    finally:
        await client.close()


@dataclass
class LocalCommunity:
    """A running server and members, in this event loop (see :func:`running_community`)."""

    base: Path
    server: Node
    members: dict[str, Node]
    configs: dict[str, Path]  # "server" and each member's name -> its united.toml
    channels: dict[str, dict[str, str]]  # name -> {"channel_id", "name", "topic"}

    until = staticmethod(until)

    def node(self, name: str) -> Node:
        """``"server"`` or a member, by name."""
        return self.server if name == "server" else self.members[name]

    def topic(self, channel: str) -> str:
        return self.channels[channel]["topic"]

    async def ctl(self, name: str, *args: str, timeout: float = 30.0) -> CtlResult:
        """``united ctl`` on node ``name``, in a process (see :func:`ctl`)."""
        return await ctl(self.configs[name], *args, timeout=timeout)

    async def call(self, name: str, command: str, *args: str) -> Any:
        """A control command on node ``name``, in process (see :func:`call`)."""
        return await call(self.node(name), command, *args)

    async def stats(self, name: str) -> dict[str, Any]:
        """Node ``name``'s plugin stats: ``{plugin name: what it contributed}``."""
        snapshot = await self.node(name).stats.snapshot()
        plugins: dict[str, Any] = snapshot["plugins"]
        return plugins


@contextlib.asynccontextmanager
async def running_community(
    base: Path,
    members: Sequence[str] = ("alice", "bob"),
    *,
    channels: Sequence[str] = ("general",),
    plugins: Sequence[str] = (),
    extra: str = "",
    server_extra: str = "",
    member_extra: str = "",
    node_extra: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> AsyncIterator[LocalCommunity]:
    """A server (its preset: directory, mesh, archive) and ``members`` (the client
    preset, made with ``united join``), all in every one of ``channels``.

    ``plugins`` are added to every node's ``[node] plugins``; ``extra`` is TOML
    merged into every node's config, ``server_extra``/``member_extra`` into the
    server's or the members', ``node_extra[name]`` into that node's (``"server"``
    or a member's name), in that order. Yields once each member has joined every channel and
    is in the server's gossipsub mesh for it; everything stops on exit.
    """
    configs: dict[str, Path] = {}
    server_config = make_node_dir(base, "server", "server", plugins=None, extra=SERVER_LOOPBACK)
    enable_plugins(server_config, *plugins)
    merge_toml(server_config, extra)
    merge_toml(server_config, server_extra)
    merge_toml(server_config, (node_extra or {}).get("server", ""))
    configs["server"] = server_config
    async with running_node(server_config, timeout=timeout) as server:
        made = {name: await call(server, "channel-create", name) for name in channels}
        for name in members:
            invite = await call(server, "invite")
            config = await join(invite["url"], invite["code"], base / name, name)
            config.write_text(_on_loopback(config.read_text()))
            enable_plugins(config, *plugins)
            merge_toml(config, extra)
            merge_toml(config, member_extra)
            merge_toml(config, (node_extra or {}).get(name, ""))
            configs[name] = config
        async with contextlib.AsyncExitStack() as stack:
            nodes = {
                name: await stack.enter_async_context(running_node(configs[name], timeout=timeout))
                for name in members
            }
            for name, node in nodes.items():
                for channel in channels:
                    joined = functools.partial(_joined, node, channel)
                    await until(joined, timeout, f"{name} to join {channel}")
            peers = {node.identity.peer_id for node in nodes.values()}
            topics = [c["topic"] for c in made.values()]
            await until(lambda: _meshed(server, peers, topics), timeout, "the meshes to form")
            yield LocalCommunity(base, server, nodes, configs, made)


async def _joined(node: Node, channel: str) -> bool:
    from .control import ControlClientError

    try:
        await call(node, "join", channel)  # refused until discovery has logged in
    except ControlClientError:
        return False
    return True


async def _meshed(server: Node, peers: set[str], topics: list[str]) -> bool:
    mesh = (await server.p2p.snapshot())["mesh"]
    return all(peers <= set(mesh.get(topic, ())) for topic in topics)
