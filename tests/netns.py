"""A network-namespace lab for process tests on distinct addresses (issue 11).

Loopback hides what breaks across machines (a node announcing ``0.0.0.0``, a
peer dialled at an address nobody routes). A :class:`Lab` builds, as root::

    bridge namespace  <name>-b: bridge br0, no address, forwards nothing else
       |  veth h1          |  veth h2   ...
    host <name>-h1       host <name>-h2       198.51.100.1, .2, ... /24 on eth0

Every veth is created inside a lab namespace with its peer moved straight into
another lab namespace, so nothing appears in (or changes) the host namespace:
no interface, route, sysctl or firewall rule. Addresses are in a documentation
range, and the lab has no route anywhere else. Names carry the pid and a counter
(tests run in parallel); the context manager kills what still runs inside the
lab's namespaces and deletes them, on success or failure.

Usage::

    pytestmark = pytest.mark.netns

    def test_x(tmp_path):
        with Lab(hosts=3) as lab:           # skips the test when not root / no `ip`
            server = lab.node(1, "server", config)   # `united run -c config` in host 1
            server.start(); server.ctl("status")
            lab.cut(2); ...; lab.restore(2)          # pull / plug host 2's cable

Setup and teardown take about 0.2 s.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

SUBNET = "198.51.100"
_counter = itertools.count(1)


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network-namespace tests need root (CI runs them as root)"
    if shutil.which("ip") is None:
        return "network-namespace tests need `ip` (iproute2)"
    return None


def require_netns() -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass
class Host:
    index: int
    netns: str
    address: str  # its IPv4 address in the lab
    bridge_port: str  # its veth's name on the bridge side


class Lab:
    """A bridge namespace and ``hosts`` host namespaces joined by veth pairs."""

    def __init__(self, hosts: int = 2, *, subnet: str = SUBNET) -> None:
        if not 1 <= hosts <= 250:
            raise ValueError("1..250 hosts")
        self.name = f"ut{os.getpid()}x{next(_counter)}"
        self.bridge = f"{self.name}-b"
        self.hosts = [
            Host(i, f"{self.name}-h{i}", f"{subnet}.{i}", f"p{i}") for i in range(1, hosts + 1)
        ]
        self._created: list[str] = []
        self.nodes: list[NsNode] = []

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Lab:
        require_netns()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        if ip("netns", "list").stdout.split().count(name):
            raise RuntimeError(f"namespace {name} exists already: refusing to touch it")
        ip("netns", "add", name)
        self._created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_netns(self.bridge)
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "link", "set", "br0", "up")
        for host in self.hosts:
            self._add_netns(host.netns)
            ip(
                "-n",
                host.netns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                host.bridge_port,
                "netns",
                self.bridge,
            )
            ip("-n", self.bridge, "link", "set", host.bridge_port, "master", "br0", "up")
            ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.netns, "link", "set", "eth0", "up")

    def close(self) -> None:
        """Stop every node, kill what still runs in the lab, delete the namespaces."""
        for node in self.nodes:
            node.stop()
        for name in reversed(self._created):
            pids = ip("netns", "pids", name, check=False).stdout.split()
            for pid in pids:  # only processes inside this lab's namespaces
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            ip("netns", "del", name, check=False)
        self._created.clear()

    # ---- using it --------------------------------------------------------------------

    def host(self, index: int) -> Host:
        return self.hosts[index - 1]

    def argv(self, index: int, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.host(index).netns, *argv]

    def run(self, index: int, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside host ``index`` and wait for it (bounded)."""
        return subprocess.run(
            self.argv(index, *argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def united(
        self, index: int, *args: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return self.run(index, sys.executable, "-m", "united_core", *args, timeout=timeout)

    def node(self, index: int, name: str, config: Path) -> NsNode:
        """A ``united run -c config`` process to start in host ``index`` (stopped at close)."""
        node = NsNode(self, index, name, config)
        self.nodes.append(node)
        return node

    def cut(self, index: int) -> None:
        """Pull host ``index``'s cable: its bridge port goes down (the host keeps its
        address, so its connections time out rather than fail at once)."""
        ip("-n", self.bridge, "link", "set", self.host(index).bridge_port, "down")

    def restore(self, index: int) -> None:
        ip("-n", self.bridge, "link", "set", self.host(index).bridge_port, "up")


@dataclass
class NsNode:
    """A node process inside a lab host; ``ctl`` runs ``united ctl`` in the same host."""

    lab: Lab
    index: int
    name: str
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.lab.host(self.index).address

    @property
    def log(self) -> Path:
        return self.config.parent / "node.log"

    def ctl(self, *args: str, timeout: float = 30) -> Any:
        result = self.lab.united(
            self.index, "ctl", "-c", str(self.config), *args, "--json", timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: ctl {' '.join(args)}: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else None

    def try_ctl(self, *args: str) -> Any:
        try:
            return self.ctl(*args, timeout=10)
        except (RuntimeError, subprocess.TimeoutExpired):
            return None

    def start(self, *, timeout: float = 30) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.lab.argv(
                    self.index, sys.executable, "-m", "united_core", "run", "-c", str(self.config)
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_for(lambda: self._alive() and self.try_ctl("status"), timeout, f"{self.name} up")

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


def wait_for(fn: Any, timeout: float, what: str = "condition", interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s (last: {last!r})")
