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
            lab.block_tcp_except(2, 7421); ...; lab.unblock(2)  # only port 7421's TCP

:func:`community` builds the usual cast on a lab (a server on host 1, members on
hosts 2, 3, ... joined to one channel); :func:`connected_ids`, :func:`fully_meshed`
and :func:`texts` read what the nodes' `ctl` shows.

Setup and teardown take about 0.2 s.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import pytest

from united_core.testing import NodeProcess, add_to_table

SUBNET = "198.51.100"
WS_PORT = 7421  # the server preset's WebSocket port (the directory)
CHANNEL = "general"
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


class NamespaceLab:
    """What every lab of namespaces shares: it makes its namespaces (never touching
    one that exists), builds itself, and on leaving stops its nodes, kills whatever
    still runs inside, and deletes every namespace it made, whatever happened."""

    def __init__(self) -> None:
        self._created: list[str] = []
        self.nodes: list[NsNode] = []
        self.procs: list[subprocess.Popen[str]] = []  # helpers started in the lab

    def _require(self) -> None:
        require_netns()

    def _build(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._require()
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
        for proc in self.procs:  # `ip netns exec` has exec'd: these are the killed ones
            if proc.poll() is None:
                proc.kill()
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(self._created):
            ip("netns", "del", name, check=False)
        self._created.clear()


class Lab(NamespaceLab):
    """A bridge namespace and ``hosts`` host namespaces joined by veth pairs."""

    def __init__(self, hosts: int = 2, *, subnet: str = SUBNET) -> None:
        if not 1 <= hosts <= 250:
            raise ValueError("1..250 hosts")
        self.name = f"ut{os.getpid()}x{next(_counter)}"
        self.bridge = f"{self.name}-b"
        self.hosts = [
            Host(i, f"{self.name}-h{i}", f"{subnet}.{i}", f"p{i}") for i in range(1, hosts + 1)
        ]
        super().__init__()

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

    # ---- using it --------------------------------------------------------------------

    def host(self, index: int) -> Host:
        return self.hosts[index - 1]

    def address(self, index: int) -> str:
        return self.host(index).address

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
        node = NsNode(name, config, lab=self, index=index)
        self.nodes.append(node)
        return node

    def cut(self, index: int) -> None:
        """Pull host ``index``'s cable: its bridge port goes down (the host keeps its
        address, so its connections time out rather than fail at once)."""
        ip("-n", self.bridge, "link", "set", self.host(index).bridge_port, "down")

    def restore(self, index: int) -> None:
        ip("-n", self.bridge, "link", "set", self.host(index).bridge_port, "up")

    def block_tcp_except(self, index: int, port: int) -> None:
        """Drop every TCP segment host ``index`` sends or is sent, except those of its
        connections to ``port`` on other hosts (to it: destination port ``port``;
        from it: source port ``port``). Its other connections stall as behind a
        firewall that drops (nothing is refused or reset), ARP and the rest go on.

        E.g. ``block_tcp_except(3, WS_PORT)``: the member on host 3 keeps its
        WebSocket session with the server while its libp2p connections go silent.

        Done with egress qdiscs only (no tc actions, no ``prio`` qdisc: a kernel may
        lack ``act_gact`` and ``sch_prio``; this one needs ``sch_htb`` and
        ``cls_u32``): an ``htb`` whose class 1:2 ends in a ``pfifo limit 0`` (it
        drops everything put in it), and u32 filters passing TCP of ``port`` to
        class 1:1 and putting the rest of TCP in 1:2. What the host sends is
        filtered on its ``eth0``, in its namespace; what it is sent, on its bridge
        port's egress, in the bridge namespace (the host's ingress, which could
        only drop with an action). :meth:`unblock` removes both."""
        host = self.host(index)
        _drop_tcp_except(host.netns, "eth0", "dport", port)
        _drop_tcp_except(self.bridge, host.bridge_port, "sport", port)

    def unblock(self, index: int) -> None:
        """Undo :meth:`block_tcp_except`: the host's TCP flows again."""
        host = self.host(index)
        _tc(host.netns, "qdisc del dev eth0 root")
        _tc(self.bridge, f"qdisc del dev {host.bridge_port} root")


def _tc(netns: str, command: str) -> None:
    """``tc -netns NETNS COMMAND...`` (``command`` split on spaces); raises on failure."""
    tc = shutil.which("tc") or "/usr/sbin/tc"
    if not Path(tc).exists():
        pytest.skip("blocking traffic needs `tc` (iproute2)")
    argv = [tc, "-netns", netns, *command.split()]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _drop_tcp_except(netns: str, dev: str, field: str, port: int) -> None:
    """On ``dev``'s egress: TCP whose ``field`` (``sport``/``dport``) is ``port`` passes,
    other TCP is dropped, everything else passes (see :meth:`Lab.block_tcp_except`)."""
    _tc(netns, f"qdisc add dev {dev} root handle 1: htb default 1")
    for klass in ("1:1", "1:2"):  # 10 Gbit/s: unshaped in practice
        _tc(netns, f"class add dev {dev} parent 1: classid {klass} htb rate 10gbit quantum 60000")
    _tc(netns, f"qdisc add dev {dev} parent 1:2 handle 2: pfifo limit 0")  # drops all
    add, tcp = f"filter add dev {dev} parent 1: protocol ip", "u32 match ip protocol 6 0xff"
    _tc(netns, f"{add} prio 1 {tcp} match ip {field} {port} 0xffff classid 1:1")
    _tc(netns, f"{add} prio 2 {tcp} classid 1:2")


class Hosts(Protocol):
    """What :class:`NsNode` needs of a lab: a host's command prefix and address
    (:class:`Lab` names hosts by index, tests/natlab.py's ``NatLab`` by name)."""

    def argv(self, host: Any, /, *argv: str) -> list[str]: ...

    def address(self, host: Any, /) -> str: ...


@dataclass
class NsNode(NodeProcess):
    """A node process inside a lab host; ``ctl`` runs ``united ctl`` in the same host."""

    lab: Hosts | None = None
    index: Any = 0  # the host: its index in a Lab, its name in a NatLab

    @property
    def address(self) -> str:
        assert self.lab is not None
        return self.lab.address(self.index)

    def command(self, *args: str) -> list[str]:
        assert self.lab is not None
        return self.lab.argv(self.index, *super().command(*args))


def wait_for(fn: Any, timeout: float, what: str = "condition", interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s (last: {last!r})")


# ---- the usual cast: a server and members, and what their `ctl` shows --------------------


def community(
    lab: Lab, base: Path, names: tuple[str, ...] = ("alice", "bob"), *, channel: str = CHANNEL
) -> tuple[NsNode, list[NsNode]]:
    """A server on host 1 and members ``names`` on hosts 2, 3, ..., all in ``channel``.

    The server runs its preset unchanged (libp2p on ``0.0.0.0`` port 7420, the
    WebSocket on port :data:`WS_PORT`, as a self-hoster runs it) with its
    ``public_url`` on host 1's address; each member is made with ``united invite``
    / ``united join`` in its own host, as a user would. Node directories are
    ``base/server`` and ``base/<name>``. Returns once every node answers and each
    member has joined ``channel`` (the mesh may still be forming: see
    :func:`fully_meshed`)."""
    if len(names) + 1 > len(lab.hosts):
        raise ValueError(f"{len(names)} members and a server need {len(names) + 1} hosts")
    result = lab.united(1, "init", "--role", "server", "--dir", str(base / "server"))
    assert result.returncode == 0, result.stderr
    config = base / "server" / "united.toml"
    assert '"/ip4/0.0.0.0/tcp/7420"' in config.read_text()  # unchanged: the wildcard
    add_to_table(config, "directory", f'public_url = "ws://{lab.host(1).address}:{WS_PORT}/ws"')
    server = lab.node(1, "server", config)
    server.start()
    server.ctl("channel-create", channel)
    members = []
    for index, name in enumerate(names, start=2):
        invite = server.ctl("invite")
        assert lab.host(1).address in invite["url"]
        joined = lab.united(
            index, "join", invite["url"], invite["code"], "--dir", str(base / name), "--name", name
        )
        assert joined.returncode == 0, joined.stderr
        member = lab.node(index, name, base / name / "united.toml")
        member.start()
        member.ctl("join", channel)
        members.append(member)
    return server, members


def connected_ids(peers: Any) -> set[str]:
    """Peer ids `ctl peers` shows as connected (remembered, unconnected rows skipped)."""
    out = set()
    for row in peers or []:
        if not isinstance(row, dict) or not row.get("peer_id"):
            continue
        if row.get("connected") is False or row.get("state") not in (None, "connected"):
            continue
        out.add(row["peer_id"])
    return out


def peer_id(node: NsNode) -> str:
    return str(node.ctl("status")["peer_id"])


def fully_meshed(nodes: list[NsNode], timeout: float = 15) -> dict[str, str]:
    """Wait until every node shows every other as connected; return name -> PeerId."""
    ids = {node.name: peer_id(node) for node in nodes}
    for node in nodes:
        others = {ids[n.name] for n in nodes if n is not node}
        wait_for(
            lambda n=node, o=others: o <= connected_ids(n.try_ctl("peers")),
            timeout,
            f"{node.name} connected to every other node",
        )
    return ids


def history(node: NsNode, channel: str = CHANNEL) -> list[dict[str, Any]]:
    """A member's `ctl history` rows (``[]`` while it does not answer)."""
    rows = node.try_ctl("history", channel, "--limit", "1000") or []
    return [row for row in rows if isinstance(row, dict)]


def texts(node: NsNode, channel: str = CHANNEL, *, confirmed: bool = True) -> set[str]:
    """The texts in a member's history: the confirmed ones (numbered by the server's
    archive), or all (``confirmed=False``: unconfirmed ones too)."""
    return {
        str(r.get("text")) for r in history(node, channel) if r.get("confirmed") or not confirmed
    }


def plugin_stats(node: NsNode, plugin: str) -> dict[str, Any]:
    """What ``plugin`` reports in the node's `ctl snapshot` (``{}`` if nothing)."""
    snapshot = node.try_ctl("snapshot") or {}
    return dict((snapshot.get("plugins") or {}).get(plugin) or {})
