"""A NAT lab: homes behind Linux routers, for relay and hole-punching tests (issue 12).

Built as root from network namespaces, like tests/netns.py's :class:`~netns.Lab`::

                 internet <name>-i: bridge br0, no address, ip_forward=0
        +------------------+---------------------+----------------------+
    server              peer                 router1 (wan)          router2 (wan) ...
    203.0.113.10        203.0.113.20         203.0.113.11           203.0.113.12
                                             NAT "eim"|"symmetric"  NAT ...
                                             10.1.0.1/24 (lan)      10.2.0.1/24 (lan)
                                             home1 10.1.0.10        home2 10.2.0.10

Each router runs nftables (table ``ip natlab``) as a home router does:
``masquerade`` on its wan for the LAN, forward policy drop except
``ct state established,related`` and lan -> wan, and on its wan input only
established/related traffic, so unsolicited inbound traffic is silently dropped
(no RST). NAT kinds (:data:`NAT_KINDS`):

- ``"eim"``: plain ``masquerade``, endpoint-independent and port-preserving (the
  member's source port is kept when free, the same for every destination);
- ``"symmetric"``: ``masquerade fully-random``, a new random port per flow
  (endpoint-dependent mapping).

Filtering is always address-and-port dependent (conntrack); Linux has no full cone.
:meth:`NatLab.set_nat` switches a home's kind live (and flushes the router's
conntrack table); :meth:`NatLab.cut` / :meth:`NatLab.restore` pull and plug a
home's wan cable or a public host's.

As in tests/netns.py: every veth is created inside a lab namespace with its peer
moved straight into another lab namespace, nothing appears in or changes the host
namespace (no interface, route, sysctl or nft rule), addresses are documentation
ranges (and RFC 1918 inside homes) with no route out of the lab, names carry the
pid and a counter (tests run in parallel), and the context manager kills only what
still runs inside the lab's namespaces and deletes them, on success or failure.

Usage::

    pytestmark = pytest.mark.natlab

    def test_x(tmp_path):
        with NatLab(homes=("eim", "symmetric")) as lab:   # skips when not root / no nft
            lab.run("home1", sys.executable, "-c", "...")  # bounded, in home 1's member
            node = lab.node("home2", "bob", config)        # `united run -c config` there
            node.start(); node.ctl("status")
            lab.address("home1"), lab.wan("home1")          # 10.1.0.10, 203.0.113.11
            lab.set_nat("home1", "symmetric"); lab.cut("home2"); lab.restore("home2")

Hosts are named ``"server"``, ``"peer"`` (with ``peer=True``), ``"routerK"`` and
``"homeK"`` (the member behind router K), K = 1, 2, ...; for a home's NAT and
cable ``"homeK"`` and ``"routerK"`` mean the same. :func:`serve`, :func:`dial`
and :func:`punch` run small socket probes (:data:`PROBE`) in lab hosts.

Setup takes about 0.2 s for two homes (0.4 s for six), teardown a few hundredths.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netns import CHANNEL, WS_PORT, NamespaceLab, NsNode, ip, netns_unavailable

from united_core.testing import add_to_table

PUBLIC = "203.0.113"  # the lab's "internet" (TEST-NET-3)
SERVER = f"{PUBLIC}.10"
PEER = f"{PUBLIC}.20"
NAT_KINDS = ("eim", "symmetric")
MAX_HOMES = 9  # routers .11 .. .19, below the public peer's .20
_MASQUERADE = {"eim": "masquerade", "symmetric": "masquerade fully-random"}
_counter = itertools.count(1)


def _tool(name: str) -> str | None:
    """``name``'s path (also in /usr/sbin, which a non-login PATH may lack), or None."""
    found = shutil.which(name)
    if found:
        return found
    sbin = Path("/usr/sbin") / name
    return str(sbin) if sbin.exists() else None


def natlab_unavailable() -> str | None:
    """Why NAT-lab tests cannot run here, or None."""
    reason = netns_unavailable()
    if reason:
        return reason.replace("network-namespace tests", "NAT-lab tests")
    for tool, package in (("nft", "nftables"), ("conntrack", "conntrack")):
        if _tool(tool) is None:
            return f"NAT-lab tests need `{tool}` (Debian package {package}; .ci/run installs it)"
    return None


def require_natlab() -> None:
    reason = natlab_unavailable()
    if reason:
        pytest.skip(reason)


@dataclass
class LabHost:
    name: str  # "server", "peer", "routerK", "homeK"
    netns: str
    address: str  # its own address: public, or 10.K.0.10 for a member
    bridge_port: str | None = None  # its veth on the internet bridge (None: behind a router)
    home: int = 0  # K for routerK and homeK


class NatLab(NamespaceLab):
    """An internet bridge, public hosts, and homes (a router with a member) behind NAT."""

    def __init__(self, homes: Sequence[str] = ("eim", "eim"), *, peer: bool = True) -> None:
        if not 1 <= len(homes) <= MAX_HOMES:
            raise ValueError(f"1..{MAX_HOMES} homes")
        for kind in homes:
            if kind not in NAT_KINDS:
                raise ValueError(f"NAT kind {kind!r}: one of {NAT_KINDS}")
        self.name = f"nat{os.getpid()}x{next(_counter)}"
        self.internet = f"{self.name}-i"
        self.hosts: dict[str, LabHost] = {}
        publics = [("server", SERVER), *([("peer", PEER)] if peer else [])]
        for name, address in publics:
            self.hosts[name] = LabHost(name, f"{self.name}-{name[0]}", address, f"p-{name}")
        for k in range(1, len(homes) + 1):
            router = LabHost(f"router{k}", f"{self.name}-r{k}", f"{PUBLIC}.{10 + k}", f"p-r{k}", k)
            self.hosts[router.name] = router
            self.hosts[f"home{k}"] = LabHost(
                f"home{k}", f"{self.name}-m{k}", f"10.{k}.0.10", None, k
            )
        self.nat = {f"home{k}": kind for k, kind in enumerate(homes, start=1)}
        super().__init__()

    # ---- lifecycle -------------------------------------------------------------------

    def _require(self) -> None:
        require_natlab()

    @property
    def namespaces(self) -> list[str]:
        return [self.internet, *(host.netns for host in self.hosts.values())]

    def _add_netns(self, name: str) -> None:
        super()._add_netns(name)
        # A new namespace may inherit the host's setting: no forwarding (routers: below).
        self._exec(name, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")

    def _exec(self, netns: str, *argv: str, stdin: str | None = None) -> str:
        command = ["ip", "netns", "exec", netns, *argv]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
        return result.stdout

    def _veth(self, netns: str, dev: str, peer_netns: str, peer_dev: str) -> None:
        """A veth pair made in ``netns`` whose peer goes straight into ``peer_netns``."""
        ip(
            "-n",
            netns,
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            peer_dev,
            "netns",
            peer_netns,
        )

    def _attach(self, host: LabHost, dev: str) -> None:
        """Plug ``host``'s ``dev`` into the internet bridge, with its public address."""
        assert host.bridge_port is not None
        self._veth(host.netns, dev, self.internet, host.bridge_port)
        ip("-n", self.internet, "link", "set", host.bridge_port, "master", "br0", "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", dev)
        ip("-n", host.netns, "link", "set", dev, "up")

    def _build(self) -> None:
        self._add_netns(self.internet)
        ip("-n", self.internet, "link", "add", "br0", "type", "bridge")
        ip("-n", self.internet, "link", "set", "br0", "up")
        for host in self.hosts.values():
            if host.name.startswith("home"):
                continue  # made with its router
            if not host.name.startswith("router"):
                self._add_netns(host.netns)
                self._attach(host, "eth0")
                continue
            k = host.home
            member = self.hosts[f"home{k}"]
            self._add_netns(host.netns)
            self._attach(host, "wan")
            self._add_netns(member.netns)
            self._veth(host.netns, "lan", member.netns, "eth0")
            ip("-n", host.netns, "addr", "add", f"10.{k}.0.1/24", "dev", "lan")
            ip("-n", host.netns, "link", "set", "lan", "up")
            ip("-n", member.netns, "addr", "add", f"{member.address}/24", "dev", "eth0")
            ip("-n", member.netns, "link", "set", "eth0", "up")
            ip("-n", member.netns, "route", "add", "default", "via", f"10.{k}.0.1")
            self._exec(host.netns, self._nft, "-f", "-", stdin=_ruleset(self.nat[member.name]))
            self._exec(host.netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")

    @property
    def _nft(self) -> str:
        return _tool("nft") or "nft"

    # ---- hosts -----------------------------------------------------------------------

    def host(self, name: str) -> LabHost:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in this lab: {sorted(self.hosts)}") from None

    def address(self, name: str) -> str:
        """``name``'s own address (a member's is private: 10.K.0.10)."""
        return self.host(name).address

    def wan(self, name: str) -> str:
        """The public address ``name`` is seen from: its router's for a member."""
        host = self.host(name)
        return self.address(f"router{host.home}") if host.home else host.address

    def _router(self, name: str) -> LabHost:
        host = self.host(name)
        if not host.home:
            raise ValueError(f"{name} is not a home (homeK or routerK)")
        return self.host(f"router{host.home}")

    # ---- running things --------------------------------------------------------------

    def argv(self, name: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.host(name).netns, *argv]

    def run(self, name: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside host ``name`` and wait for it (bounded)."""
        return subprocess.run(
            self.argv(name, *argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def spawn(self, name: str, *argv: str) -> subprocess.Popen[str]:
        """Start a command inside host ``name`` (stdout and stderr piped; killed at close:
        it should print little)."""
        proc = subprocess.Popen(
            self.argv(name, *argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs.append(proc)
        return proc

    def united(
        self, name: str, *args: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return self.run(name, sys.executable, "-m", "united_core", *args, timeout=timeout)

    def node(self, name: str, node_name: str, config: Path) -> NsNode:
        """A ``united run -c config`` process to start in host ``name`` (stopped at close)."""
        node = NsNode(node_name, config, lab=self, index=name)
        self.nodes.append(node)
        return node

    # ---- changing the network --------------------------------------------------------

    def set_nat(self, name: str, kind: str) -> None:
        """Switch home ``name``'s NAT to ``kind`` now, and flush its router's conntrack
        table (existing mappings and connections are forgotten)."""
        if kind not in NAT_KINDS:
            raise ValueError(f"NAT kind {kind!r}: one of {NAT_KINDS}")
        router = self._router(name)
        script = (
            "flush chain ip natlab postrouting\n"
            f'add rule ip natlab postrouting oifname "wan" {_MASQUERADE[kind]}\n'
        )
        self._exec(router.netns, self._nft, "-f", "-", stdin=script)
        self._exec(router.netns, _tool("conntrack") or "conntrack", "-F")
        self.nat[f"home{router.home}"] = kind

    def ruleset(self, name: str) -> str:
        """``nft list ruleset`` in host ``name`` (a router's shows its NAT)."""
        return self._exec(self.host(name).netns, self._nft, "list", "ruleset")

    def _bridge_port(self, name: str) -> str:
        host = self.host(name)
        if host.home:
            host = self.host(f"router{host.home}")
        assert host.bridge_port is not None
        return host.bridge_port

    def cut(self, name: str) -> None:
        """Pull the cable of ``name`` (a home's wan link, or a public host's) at the
        internet bridge: addresses stay, so connections time out rather than fail."""
        ip("-n", self.internet, "link", "set", self._bridge_port(name), "down")

    def restore(self, name: str) -> None:
        ip("-n", self.internet, "link", "set", self._bridge_port(name), "up")


def _ruleset(kind: str) -> str:
    """A home router's nftables ruleset (``lan`` inside, ``wan`` outside)."""
    return f"""
table ip natlab {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {_MASQUERADE[kind]}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }}
}}
"""


# ---- socket probes: plain Python in lab hosts, for tests of the lab itself ----------------

PROBE = r"""
import json, signal, socket, sys, threading, time

signal.alarm(60)  # never outlives a test
mode, args = sys.argv[1], sys.argv[2:]


def reusable(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if port:
        s.bind(("0.0.0.0", port))
    return s


def outcome(exc):
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return f"error: {exc}"


def serve(conn, peer):
    # whoami, then echo: the first line is the address this connection came from
    with conn:
        conn.sendall(f"{peer[0]}:{peer[1]}\n".encode())
        while data := conn.recv(4096):
            conn.sendall(data)


if mode == "serve":  # serve PORT
    listener = reusable(int(args[0]))
    listener.listen(16)
    print("ready", flush=True)
    while True:
        conn, peer = listener.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()

elif mode == "dial":  # dial LOCAL_PORT TIMEOUT HOST:PORT... (0: any local port)
    local, timeout, rows, keep = int(args[0]), float(args[1]), [], []
    for target in args[2:]:
        host, port = target.rsplit(":", 1)
        s = reusable(local)
        s.settimeout(timeout)
        started = time.monotonic()
        try:
            s.connect((host, int(port)))
            f = s.makefile("rb")
            seen = f.readline().decode().strip()
            s.sendall(b"echo me\n")
            echo = f.readline() == b"echo me\n"
            row = {"result": "ok", "seen": seen, "echo": echo}
            keep.append(s)  # later dials share the local port with this open one
        except OSError as exc:
            row = {"result": outcome(exc)}
        ms = round((time.monotonic() - started) * 1000)
        row.update(target=target, local=s.getsockname()[1], ms=ms)
        rows.append(row)
    print(json.dumps(rows), flush=True)

elif mode == "punch":  # punch LOCAL_PORT HOST:PORT TRIES TIMEOUT DELAY: simultaneous open
    local, target, tries, timeout = int(args[0]), args[1], int(args[2]), float(args[3])
    time.sleep(float(args[4]))
    host, port = target.rsplit(":", 1)
    started, result = time.monotonic(), "none"
    for attempt in range(1, tries + 1):
        s = reusable(local)
        s.settimeout(timeout)
        t0 = time.monotonic()
        try:
            s.connect((host, int(port)))
            s.sendall(b"hello\n")
            got = s.makefile("rb").readline()
            result = "ok" if got == b"hello\n" else f"bad greeting {got!r}"
            s.close()
            break
        except OSError as exc:
            result = outcome(exc)
            s.close()
            if result != "timeout":  # refused or reset: the other side is not there yet
                time.sleep(max(0.0, min(0.5, timeout - (time.monotonic() - t0))))
    ms = round((time.monotonic() - started) * 1000)
    print(json.dumps({"result": result, "tries": attempt, "ms": ms}), flush=True)
"""


def _line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line ``proc`` prints, within ``timeout`` s."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no output from {proc.args!r} within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        stderr = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        raise RuntimeError(f"{proc.args!r} printed nothing: {stderr[-2000:]}")
    return line.strip()


def serve(lab: NatLab, name: str, port: int, timeout: float = 10) -> subprocess.Popen[str]:
    """A TCP server on ``port`` in host ``name``: on each connection it first sends
    ``"IP:PORT\\n"`` of the address the connection came from, then echoes. Returns once
    it listens; killed at the lab's close."""
    proc = lab.spawn(name, sys.executable, "-c", PROBE, "serve", str(port))
    line = _line(proc, timeout)
    if line != "ready":
        raise RuntimeError(f"probe server in {name}: {line!r}")
    return proc


def dial(
    lab: NatLab, name: str, *targets: str, local_port: int = 0, timeout: float = 2
) -> list[dict[str, Any]]:
    """Connect from host ``name`` to each ``"HOST:PORT"`` in turn (all from
    ``local_port`` when given, the connections kept open together); per target:
    ``result`` (``ok``, ``timeout``, ``refused``...), ``seen`` (the source address the
    :func:`serve` server saw), ``echo`` (the echo came back), ``local``, ``ms``."""
    bound = timeout * len(targets) + 10
    result = lab.run(
        name,
        sys.executable,
        "-c",
        PROBE,
        "dial",
        str(local_port),
        str(timeout),
        *targets,
        timeout=bound,
    )
    if result.returncode != 0:
        raise RuntimeError(f"dial from {name}: {result.stderr.strip()[-2000:]}")
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def classify(lab: NatLab, name: str, local_port: int, port: int) -> tuple[str, list[int]]:
    """Home ``name``'s mapping behaviour, as a STUN client finds it: connect from
    ``local_port`` to the server and to the public peer (both running :func:`serve` on
    ``port``) and compare the source ports they saw. Returns ``("eim", ports)`` when
    both saw the same port (endpoint-independent), ``("symmetric", ports)`` otherwise."""
    rows = dial(lab, name, f"{SERVER}:{port}", f"{PEER}:{port}", local_port=local_port)
    if any(row["result"] != "ok" for row in rows):
        raise RuntimeError(f"classify {name}: {rows}")
    ports = [int(row["seen"].rsplit(":", 1)[1]) for row in rows]
    return ("eim" if len(set(ports)) == 1 else "symmetric"), ports


def punch(
    lab: NatLab,
    *pairs: tuple[str, str],
    port: int,
    tries: int = 3,
    timeout: float = 2,
    stagger: float = 0,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """TCP simultaneous open between the members of each pair ``(a, b)``, as DCUtR
    does: each binds ``port`` and connects to the other's public address (its
    router's, same port), ``tries`` times at most, ``timeout`` s each; ``b`` starts
    ``stagger`` s after ``a`` (so ``a``'s first SYN is dropped by ``b``'s router and
    ``b``'s SYN then meets ``a``'s mapping). Every pair runs at the same time; returns
    each pair's ``({"result", "tries", "ms"}, {...})``."""
    procs = [
        lab.spawn(
            me,
            sys.executable,
            "-c",
            PROBE,
            "punch",
            str(port),
            f"{lab.wan(other)}:{port}",
            str(tries),
            str(timeout),
            str(delay),
        )
        for a, b in pairs
        for me, other, delay in ((a, b, 0), (b, a, stagger))
    ]
    bound = tries * timeout + stagger + 10
    ends = [json.loads(_line(proc, bound)) for proc in procs]
    return [(ends[i], ends[i + 1]) for i in range(0, len(ends), 2)]


# ---- a community in the lab ---------------------------------------------------------


def natlab_community(lab: NatLab, base: Path) -> tuple[NsNode, dict[str, NsNode]]:
    """The server in host "server", alice in home1 and bob in home2, all in CHANNEL."""
    result = lab.united("server", "init", "--role", "server", "--dir", str(base / "server"))
    assert result.returncode == 0, result.stderr
    config = base / "server" / "united.toml"
    add_to_table(config, "directory", f'public_url = "ws://{SERVER}:{WS_PORT}/ws"')
    server = lab.node("server", "server", config)
    server.start()
    server.ctl("channel-create", CHANNEL)
    members = {}
    for home, name in (("home1", "alice"), ("home2", "bob")):
        invite = server.ctl("invite")
        argv = ("join", invite["url"], invite["code"], "--dir", str(base / name), "--name", name)
        joined = lab.united(home, *argv)
        assert joined.returncode == 0, joined.stderr
        members[name] = lab.node(home, name, base / name / "united.toml")
    for member in members.values():
        member.start()
        member.ctl("join", CHANNEL)
    return server, members


def relayed_ids(node: NsNode) -> set[str]:
    return {r["peer_id"] for r in node.try_ctl("peers") or [] if r.get("relayed")}
