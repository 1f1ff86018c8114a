"""Run a local community of real ``united`` processes (tests and benchmarks).

Everything listens on loopback: a server (directory, mesh), members created with
``united init``/``united invite``/``united join`` exactly as a user would, each
its own process with its own directory. Logs go to files in each node's
directory (never pipes, which a chatty node could fill).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    name: str
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    def ctl(self, *args: str, timeout: float = 30) -> Any:
        result = united("ctl", "-c", str(self.config), *args, "--json", timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: ctl {' '.join(args)}: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else None

    def try_ctl(self, *args: str) -> Any:
        try:
            return self.ctl(*args)
        except RuntimeError:
            return None

    def start(self) -> None:
        log = (self.config.parent / "node.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "united_core", "run", "-c", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        poll(lambda: self._alive() and self.try_ctl("status"), timeout=30)

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited: {(self.config.parent / 'node.log').read_text()[-2000:]}"
            )
        return True

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


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
