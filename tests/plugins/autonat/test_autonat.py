"""AutoNAT with a real dial-back (``autonat`` on the server, ``autonat-client`` on
members) on bare P2P runtimes on loopback: a server and members admitted by a shared
gate (a set the test edits), the member gate really refusing the dial-back's
identity unless the probe admitted it.

What must hold (issue 12, deliverable 5): a member that listens where it says is
``public``, with the nonce on a fresh connection from the server's dialer (the
member's connection to the server untouched, no peer event for the dialer); a
claimed address where nothing listens is a ``DIAL_ERROR`` and ``private``, never
``public``; an address on another IP is refused, not dialed; a non-member's and a
relayed request are refused; malformed bytes get an error and the server goes on;
probes are rate-limited per member. A member that is not public learns its NAT kind
from two observations of its listen port (the server's reflector ports, a token
for members only); anything but a live token on those ports gets no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from united_autonat import verdict, wire
from united_autonat.client import render_panel as client_panel
from united_autonat.client.config import Config as ClientConfig
from united_autonat.client.service import AutonatClient
from united_autonat.server import render_panel as server_panel
from united_autonat.server import service
from united_autonat.server.config import Config as ServerConfig
from united_autonat.server.observe import Tokens
from united_autonat.server.service import AutonatServer

from united_core.config import ConfigError, ConfigSection, build_section
from united_core.identity import Identity
from united_core.p2p.events import P2PEvent, PeerConnected, ReachabilityChanged
from united_core.p2p.gate import Admissions
from united_core.p2p.options import HostOptions
from united_core.p2p.runtime import P2PRuntime
from united_core.testing import free_port, until

LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)


@dataclass
class Lab:
    server: AutonatServer
    server_rt: P2PRuntime
    runtimes: dict[str, P2PRuntime]
    clients: dict[str, AutonatClient]
    admitted: set[str]
    events: dict[str, list[P2PEvent]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # (peer, direction) the gate refused

    @property
    def server_addr(self) -> str:
        bare = self.server_rt.listen_addrs[0].split("/p2p/")[0]
        return f"{bare}/p2p/{self.server_rt.peer_id}"

    def id(self, name: str) -> str:
        return self.runtimes[name].peer_id

    def own_addr(self, name: str) -> str:
        return self.runtimes[name].announce_addrs[0]

    async def probe(self, name: str, addrs: list[str], adopt: bool = True) -> dict[str, Any]:
        rt = self.runtimes[name]
        return await rt.call_service(  # type: ignore[no-any-return]
            "autonat-client", "probe", self.server_rt.peer_id, addrs, adopt
        )

    async def main_conn(self, name: str) -> int:
        """The identity of ``name``'s connection object to the server (trio side)."""
        rt = self.runtimes[name]

        async def read() -> int:
            from libp2p.peer.id import ID

            conns = rt.host_context.host.get_network().connections.get(
                ID.from_base58(self.server_rt.peer_id), []
            )
            assert len(conns) == 1, conns
            return id(conns[0])

        return await rt.call(read)


@contextlib.asynccontextmanager
async def lab(names: tuple[str, ...] = ("a",), **server_settings: Any) -> AsyncIterator[Lab]:
    admitted: set[str] = set()
    refused: list[str] = []

    def gate(peer_id: str, direction: str) -> bool:
        if peer_id not in admitted:
            refused.append(f"{peer_id} {direction}")
        return peer_id in admitted

    server_settings.setdefault("observe_ports", (0, 0))  # never 7422-7423 of this host
    server = AutonatServer(ServerConfig(**server_settings))
    server_rt = P2PRuntime(
        Identity.generate(), HostOptions(listen_addrs=LOOPBACK, services=[server]), gate=gate
    )
    clients = {n: AutonatClient(ClientConfig(timeout=20)) for n in names}
    runtimes = {
        n: P2PRuntime(
            Identity.generate(),
            HostOptions(listen_addrs=LOOPBACK, services=[clients[n]]),
            gate=gate,
        )
        for n in names
    }
    admitted |= {server_rt.peer_id, *(rt.peer_id for rt in runtimes.values())}
    events: dict[str, list[P2PEvent]] = {n: [] for n in names}
    pumps: list[asyncio.Task[None]] = []

    async def pump(rt: P2PRuntime, into: list[P2PEvent]) -> None:
        while True:
            into.append(await rt.events())

    started: list[P2PRuntime] = []
    try:
        for rt in (server_rt, *runtimes.values()):
            await rt.start()
            started.append(rt)
        for n, rt in runtimes.items():
            pumps.append(asyncio.create_task(pump(rt, events[n])))
        await until(lambda: server.dialer_id, what="the AutoNAT service")
        L = Lab(server, server_rt, runtimes, clients, admitted, events, refused)
        for rt in runtimes.values():
            await rt.connect(L.server_addr)
        yield L
    finally:
        for task in pumps:
            task.cancel()
        for rt in reversed(started):
            await rt.stop()


def test_a_member_that_listens_where_it_says_is_public_by_a_fresh_connection() -> None:
    async def scenario() -> None:
        async with lab(("a",)) as L:
            before = await L.main_conn("a")
            started = time.monotonic()
            out = await L.probe("a", [L.own_addr("a")])
            took = time.monotonic() - started
            assert out["verdict"] == "public" and out["nat"] == "none", out
            [row] = out["results"]
            assert row["status"] == "OK" and row["verified"], row
            # The nonce came on an inbound direct connection from the server's dialer:
            # another identity than the server's, so not the connection the request used.
            via = row["via"]
            assert via["peer"] == out["dialer"] == L.server.dialer_id != L.server_rt.peer_id
            assert (via["direction"], via["relayed"]) == ("inbound", False)
            assert out["observed"].startswith("/ip4/127.0.0.1/tcp/")
            # a's connection to the server is the same object, and the only one.
            assert await L.main_conn("a") == before
            # The member's gate let exactly the dialer in (no refusal logged for it), and
            # no peer event, no peers() row, ever mentions it.
            assert not any(L.server.dialer_id in r for r in L.refused)
            assert not L.runtimes["a"]._admissions.admits(L.server.dialer_id, "inbound")
            await asyncio.sleep(0.3)
            connected = [e.peer_id for e in L.events["a"] if isinstance(e, PeerConnected)]
            assert connected == [L.server_rt.peer_id], connected
            peers = {p["peer_id"] for p in await L.runtimes["a"].peers()}
            assert peers == {L.server_rt.peer_id}
            # The verdict is the node's, announced once as an event.
            rt = L.runtimes["a"]
            await until(lambda: rt.reachability == "public", what="the event")
            changes = [e for e in L.events["a"] if isinstance(e, ReachabilityChanged)]
            assert changes == [ReachabilityChanged("public", "none")]
            # The server's figures; the dialer holds no connection afterwards.
            figures = L.server.snapshot()
            assert figures["answered"] == 1 and figures["dials"] == {"OK": 1}
            assert figures["recent"][-1]["results"] == [[L.own_addr("a"), "OK", ""]]
            panel = "\n".join(server_panel({"plugins": {"autonat": dict(figures)}}))
            assert "probes answered 1" in panel and "dial-backs: ok 1" in panel
            mine = dict(L.clients["a"].snapshot())
            assert "public (nat none)" in "\n".join(
                client_panel({"plugins": {"autonat-client": mine}})
            )
            json.dumps(figures), json.dumps(mine)  # stats must be JSON
            print(f"[autonat] public verdict in {took * 1000:.0f} ms ({row['ms']} ms dial-back)")

    asyncio.run(scenario())


def test_an_address_where_nothing_listens_is_private_never_a_false_public() -> None:
    """The member is connected to the server (so py-libp2p's AutoNAT would say OK): a
    claimed port on its own IP where nothing listens is a DIAL_ERROR; private."""

    async def scenario() -> None:
        async with lab(("a",)) as L:
            before = await L.main_conn("a")
            closed = f"/ip4/127.0.0.1/tcp/{free_port()}"
            out = await L.probe("a", [closed])
            assert out["verdict"] == "private", out
            assert out["nat"] == "none"  # seen from 127.0.0.1, its own IP: no translation
            [row] = out["results"]
            assert row["status"] == "DIAL_ERROR" and not row["verified"], row
            assert await L.main_conn("a") == before
            assert L.runtimes["a"].reachability != "public"
            await until(lambda: L.runtimes["a"].reachability == "private", what="private")
            # Both: the real one is reached, the closed one is not; one is enough.
            out = await L.probe("a", [closed, L.own_addr("a")])
            assert [r["status"] for r in out["results"]] == ["DIAL_ERROR", "OK"], out
            assert [r["verified"] for r in out["results"]] == [False, True]
            assert out["verdict"] == "public"
            assert L.server.snapshot()["dials"] == {"DIAL_ERROR": 2, "OK": 1}

    asyncio.run(scenario())


def test_addresses_on_another_ip_are_refused_not_dialed() -> None:
    async def scenario() -> None:
        async with lab(("a",), max_addrs=2) as L:
            elsewhere = "/ip4/192.0.2.1/tcp/4001"  # TEST-NET-1: the server must not dial it
            relayed = f"{L.server_addr}/p2p-circuit"
            dns = "/dns4/example.org/tcp/4001"
            other_peer = f"/ip4/127.0.0.1/tcp/4001/p2p/{L.server_rt.peer_id}"
            own = L.own_addr("a")
            extra = f"/ip4/127.0.0.1/tcp/{free_port()}"
            out = await L.probe("a", [elsewhere, relayed, dns, other_peer, own, own, extra, own])
            rows = [(r["status"], r["code"]) for r in out["results"]]
            assert rows == [
                ("REFUSED", "other-ip"),
                ("REFUSED", "unsupported"),
                ("REFUSED", "unsupported"),
                ("REFUSED", "other-peer"),
                ("OK", ""),
                ("REFUSED", "duplicate"),
                ("DIAL_ERROR", ""),
                ("REFUSED", "duplicate"),
            ], out
            assert L.server.snapshot()["dials"] == {"OK": 1, "DIAL_ERROR": 1}  # two dials
            # Only other-ip refusals (a NAT'd member: its own address is not where its
            # traffic comes from): private, and no dial at all. (Its NAT kind is what
            # the observations show: none here, its listen port is seen as itself.)
            out = await L.probe("a", [elsewhere, "/ip4/10.1.0.10/tcp/4001"])
            assert out["verdict"] == "private" and out["nat"] == "none", out
            assert out["observation"]["kind"] == "none", out
            assert "dialer" not in out  # the server named no dialer: nothing to dial
            assert L.server.snapshot()["dials"] == {"OK": 1, "DIAL_ERROR": 1}
            # Too many: max_addrs = 2 dials, the third is refused (a probe of those
            # only: adopt=False leaves the node's verdict alone).
            ports = [f"/ip4/127.0.0.1/tcp/{free_port()}" for _ in range(3)]
            out = await L.probe("a", ports, adopt=False)
            assert [r["code"] for r in out["results"]][-1] == "too-many", out
            assert out["verdict"] == "unknown" and not out["adopted"]
            assert L.runtimes["a"].reachability == "private"

    asyncio.run(scenario())


def test_a_non_member_is_refused_and_malformed_bytes_get_an_error() -> None:
    """z connects while admitted, then leaves the member set (as a removed member would):
    its probe is refused. Garbage on the protocol gets an error; the server goes on."""

    async def scenario() -> None:
        async with lab(("a", "z")) as L:
            L.admitted.discard(L.id("z"))
            out = await L.probe("z", [L.own_addr("z")])
            assert out["refused"] == "not-a-member" and "verdict" not in out, out
            assert L.runtimes["z"].reachability == "unknown"

            a = L.runtimes["a"]
            garbage = [
                b"\xff\xff" + b"x" * 10,  # a length past MAX_FRAME
                b"\x00\x05hello",  # not JSON
                wire.encode({"type": "request", "nonce": "zz", "addrs": []}),
                wire.encode({"type": "request", "nonce": "00" * 8, "addrs": ["x"] * 17}),
                wire.encode({"type": "request", "nonce": "00" * 8, "addrs": [7]}),
                wire.encode({"type": "hello"}),
                b"\x00",  # then the stream ends inside the length
            ]
            for data in garbage:
                stream = await a.open_stream(L.server_rt.peer_id, [wire.PROTOCOL])
                await stream.write(data)
                if data == b"\x00":
                    await stream.close()
                reply = await asyncio.wait_for(_read_frame(stream), 12)
                assert reply["type"] == "error" and "bad request" in reply["reason"], reply
            # A "ready" that is not one: after "dialing", the server gives up cleanly.
            stream = await a.open_stream(L.server_rt.peer_id, [wire.PROTOCOL])
            request = wire.Request(b"\x01" * 8, (L.own_addr("a"),)).to_message()
            await stream.write(wire.encode(request))
            assert (await _read_frame(stream))["type"] == "dialing"
            await stream.write(wire.encode({"type": "nope"}))
            assert (await _read_frame(stream))["type"] == "error"

            figures = L.server.snapshot()
            assert figures["bad_requests"] == len(garbage) + 1
            assert figures["refused"] == {"not-a-member": 1}
            out = await L.probe("a", [L.own_addr("a")])  # still serving
            assert out["verdict"] == "public", out

    asyncio.run(scenario())


def test_probes_are_rate_limited_per_member() -> None:
    async def scenario() -> None:
        async with lab(("a",), peer_probes_per_minute=2) as L:
            closed = f"/ip4/127.0.0.1/tcp/{free_port()}"
            for _ in range(2):
                assert (await L.probe("a", [closed]))["verdict"] == "private"
            out = await L.probe("a", [closed])
            assert out["refused"] == "rate-limited" and 55 < out["retry_after"] <= 60, out
            assert L.server.snapshot()["refused"] == {"rate-limited": 1}
            assert L.clients["a"].snapshot()["no_verdict"] == 1

    asyncio.run(scenario())


def test_a_server_without_autonat_is_not_asked_again_soon() -> None:
    """A trusted peer that does not offer the protocol (an older server): no stream is
    even opened (its identify says so), and the answer says why."""

    async def scenario() -> None:
        async with lab(("a",)) as L:
            other = P2PRuntime(Identity.generate(), HostOptions(listen_addrs=LOOPBACK))
            L.admitted.add(other.peer_id)
            await other.start()
            try:
                bare = other.listen_addrs[0].split("/p2p/")[0]
                await L.runtimes["a"].connect(f"{bare}/p2p/{other.peer_id}")
                out = await L.runtimes["a"].call_service(
                    "autonat-client", "probe", other.peer_id, [L.own_addr("a")], True
                )
                assert out["not_offered"] and "does not offer" in out["error"], out
                assert L.runtimes["a"].reachability == "unknown"
            finally:
                await other.stop()

    asyncio.run(scenario())


def test_a_request_over_a_relayed_connection_is_refused() -> None:
    """The server would see the relay's address: refused before anything is read."""
    from libp2p.connection_types import ConnectionType
    from libp2p.peer.id import ID

    class Conn:
        peer_id = ID.from_base58(Identity.generate().peer_id)

        def get_connection_type(self) -> ConnectionType:
            return ConnectionType.RELAYED

    class Stream:
        muxed_conn = Conn()
        written = b""
        closed = False

        async def read(self, n: int | None = None) -> bytes:
            raise AssertionError("nothing is read from a relayed request")

        async def write(self, data: bytes) -> None:
            self.written += data

        async def close(self) -> None:
            self.closed = True

    server = AutonatServer(ServerConfig())
    server._tools = server._dialer = object()  # type: ignore[assignment]
    stream = Stream()
    trio.run(server._handle, stream)
    reply = wire.decode(stream.written[2:])
    assert (reply["type"], reply["code"]) == ("refused", "relayed") and stream.closed
    assert server.snapshot()["refused"] == {"relayed": 1}


def test_a_private_member_learns_its_nat_kind_and_the_reflectors_answer_only_tokens() -> None:
    """a is private (it claims only addresses on other IPs) but has no NAT: both
    observations of its listen port, from the server's two reflector ports, see it as
    itself: ``none`` (without them: ``unknown``). A raw TCP client gets an answer for a
    live token only, at most twice; nothing else is answered."""

    async def scenario() -> None:
        async with lab(("a",)) as L:
            ports = L.server.snapshot()["observe"]["ports"]
            assert len(ports) == 2 and 0 not in ports, ports
            started = time.monotonic()
            out = await L.probe("a", ["/ip4/10.1.0.10/tcp/4001"])
            took = time.monotonic() - started
            assert (out["verdict"], out["nat"]) == ("private", "none"), out
            listen = L.own_addr("a").split("/p2p/")[0]
            own = f"127.0.0.1:{listen.rsplit('/', 1)[1]}"
            observation = out["observation"]
            assert observation == {
                "ports": ports,
                "from": own,
                "local": own,
                "seen": [own, own],
                "kind": "none",
            }, observation
            rt = L.runtimes["a"]
            await until(lambda: rt.reachability == "private", what="the event")
            changes = [e for e in L.events["a"] if isinstance(e, ReachabilityChanged)]
            assert changes == [ReachabilityChanged("private", "none")]
            panel = "\n".join(
                client_panel({"plugins": {"autonat-client": dict(L.clients["a"].snapshot())}})
            )
            assert f"NAT none: {own} seen as {own} and {own}" in panel, panel
            figures = L.server.snapshot()["observe"]
            assert (figures["answered"], figures["refused"]) == (2, 0), figures
            assert figures["tokens"] == 0  # both uses spent

            # A token straight from the protocol (a member's request with no address):
            # a raw client gets its own address twice, then nothing.
            stream = await rt.open_stream(L.server_rt.peer_id, [wire.PROTOCOL])
            await stream.write(wire.encode(wire.Request(b"\x02" * 8, ()).to_message()))
            offer = wire.parse_observe(await _read_frame(stream))
            assert offer is not None and list(offer.ports) == ports
            line = wire.observe_request(offer.token)
            for _ in range(2):
                reply, local = await _raw(ports[0], line)
                assert reply == f"127.0.0.1 {local}\n".encode(), reply
            assert (await _raw(ports[1], line))[0] == b""  # a third use

            # Nothing answered: a wrong token, an oversized line, garbage, silence (the
            # server closes it after 0.5 s). Each is closed without a byte.
            quiet = time.monotonic()
            replies = await asyncio.gather(
                _raw(ports[0], b"0" * 32 + b"\n"),
                _raw(ports[1], b"a" * 100),
                _raw(ports[0], b"\xff\x00hello\n"),
                _raw(ports[1], b""),
            )
            waited = time.monotonic() - quiet
            assert [reply for reply, _ in replies] == [b""] * 4, replies
            assert 0.4 < waited < 2, waited  # silence is closed after 0.5 s, not earlier
            figures = L.server.snapshot()["observe"]
            assert (figures["answered"], figures["refused"]) == (4, 5), figures
            panel = "\n".join(server_panel({"plugins": {"autonat": dict(L.server.snapshot())}}))
            assert f"NAT observations on TCP {ports[0]}, {ports[1]}: answered 4, refused 5" in panel
            # The server still serves, and the member's next probe observes again.
            again = await L.probe("a", ["/ip4/10.1.0.10/tcp/4001"])
            assert again["observation"]["kind"] == "none", again
            print(f"[autonat] private with NAT kind observed in {took * 1000:.0f} ms")

    asyncio.run(scenario())


def test_a_busy_observe_port_is_one_warning_and_no_observations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another program holds the port: the server warns once, runs on, offers nothing;
    the member's NAT kind is what the probe alone tells."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]

        async def scenario() -> None:
            async with lab(("a",), observe_ports=(0, port)) as L:
                assert L.server.snapshot()["observe"]["ports"] == []
                out = await L.probe("a", ["/ip4/10.1.0.10/tcp/4001"])
                assert (out["verdict"], out["nat"]) == ("private", "unknown"), out
                assert "observation" not in out
                out = await L.probe("a", [L.own_addr("a")])  # probes still answered
                assert out["verdict"] == "public", out

        with caplog.at_level(logging.WARNING, logger="united_autonat"):
            asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("united_autonat")]
    assert len(warnings) == 1, warnings
    assert f"port {port}" in warnings[0] and "will not learn their NAT kind" in warnings[0]


def test_idle_connections_from_one_source_do_not_hold_up_another_members_observation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More idle connections from 127.0.0.1 than the server serves at once in all: it
    serves 4 of them (per source), closes the others at once, and a member connecting
    from 127.0.0.2 gets its answer at once, not when the idle ones time out."""
    monkeypatch.setattr(service, "OBSERVE_TIMEOUT", 3.0)  # idle ones held long: no race

    async def scenario() -> None:
        async with lab(("a",)) as L:
            ports = L.server.snapshot()["observe"]["ports"]
            stream = await L.runtimes["a"].open_stream(L.server_rt.peer_id, [wire.PROTOCOL])
            await stream.write(wire.encode(wire.Request(b"\x03" * 8, ()).to_message()))
            offer = wire.parse_observe(await _read_frame(stream))
            assert offer is not None
            idle = [
                await asyncio.open_connection("127.0.0.1", ports[i % 2])
                for i in range(service.OBSERVE_HANDLERS + 6)
            ]
            try:
                started = time.monotonic()
                reply, local = await _raw(
                    ports[0], wire.observe_request(offer.token), source="127.0.0.2"
                )
                took = time.monotonic() - started
                assert reply == f"127.0.0.2 {local}\n".encode(), reply
                assert took < 1.0, took

                # Those above 4 are closed at once, without a byte; which 4 are held
                # depends on how the two ports' accept loops interleave.
                async def outcome(reader: asyncio.StreamReader) -> bytes | None:
                    try:
                        return await asyncio.wait_for(reader.read(), 1.5)
                    except TimeoutError:
                        return None  # still held (the idle timeout is 3 s here)

                seen = await asyncio.gather(*(outcome(reader) for reader, _ in idle))
                assert seen.count(b"") == len(idle) - 4 and seen.count(None) == 4, seen
                assert L.server.snapshot()["observe"]["busy"] == len(idle) - 4
            finally:
                for _, writer in idle:
                    writer.close()
            panel = "\n".join(server_panel({"plugins": {"autonat": dict(L.server.snapshot())}}))
            assert f"busy {len(idle) - 4}" in panel, panel
            print(f"[autonat] observation answered in {took * 1000:.0f} ms beside idle ones")

    asyncio.run(scenario())


async def _raw(port: int, data: bytes, source: str = "127.0.0.1") -> tuple[bytes, int]:
    """Connect from ``source`` to 127.0.0.1:``port``, send ``data``, read until the
    server closes: ``(what came back, our local port)``. A reset counts as nothing back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    local = writer.get_extra_info("sockname")[1]
    try:
        if data:
            writer.write(data)
            await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 5), local
        except ConnectionResetError:
            return b"", local
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_frame(stream: Any) -> dict[str, Any]:
    header = await stream.read(2)
    body = b""
    while len(body) < wire.frame_length(header):
        body += await stream.read(wire.frame_length(header) - len(body))
    return wire.decode(body)


# ---- the wire format and the verdict rules, as plain data ------------------------------


def test_admissions_let_one_peer_in_inbound_for_a_while_and_keep_it_quiet() -> None:
    """united_core/p2p/gate.py: what ServiceHost.admit_inbound does."""
    admissions = Admissions()
    gate = admissions.gate(lambda peer, direction: peer == "member")
    assert gate("member", "outbound") and not gate("dialer", "inbound")
    with admissions.admit_inbound("dialer"):
        assert gate("dialer", "inbound") and not gate("dialer", "outbound")
        assert admissions.opened("dialer", first=True)  # transient: no event
        assert not admissions.opened("member", first=True)
    assert not gate("dialer", "inbound")  # the probe is over
    assert admissions.is_transient("dialer")  # its connection is still closing
    assert admissions.closed("dialer", last=True) and not admissions.is_transient("dialer")
    # A peer already connected when admitted never becomes transient.
    with admissions.admit_inbound("member"):
        assert not admissions.opened("member", first=False)
    assert not admissions.closed("member", last=True)


def test_frames_are_bounded_and_checked() -> None:
    assert wire.decode(wire.encode({"type": "x"})[2:]) == {"type": "x"}
    with pytest.raises(wire.BadMessage):
        wire.encode({"type": "x", "pad": "y" * wire.MAX_FRAME})
    for header in (b"\x00\x00", b"\x10\x01", b"\x01"):
        with pytest.raises(wire.BadMessage):
            wire.frame_length(header)
    for body in (b"[1]", b'{"type": 1}', b"\xff", b"{"):
        with pytest.raises(wire.BadMessage):
            wire.decode(body)
    request = wire.Request(b"\x00" * 8, ("/ip4/1.2.3.4/tcp/5",))
    assert wire.parse_request(request.to_message()) == request
    for bad in (
        {"type": "request", "nonce": "00" * 7, "addrs": []},
        {"type": "request", "nonce": "00" * 8},
        {"type": "request", "nonce": "00" * 8, "addrs": ["a" * 300]},
    ):
        with pytest.raises(wire.BadMessage):
            wire.parse_request(bad)
    # A server's result must answer exactly what was asked, in order.
    sent = ("/ip4/1.2.3.4/tcp/5",)
    ok = wire.result("/ip4/1.2.3.4/tcp/9", [wire.AddrResult(sent[0], wire.OK)])
    assert wire.parse_results(ok, sent)[0].status == wire.OK
    for results in ([], [{"addr": "/ip4/9.9.9.9/tcp/5", "status": "OK"}], [{"addr": sent[0]}]):
        with pytest.raises(wire.BadMessage):
            wire.parse_results({"type": "result", "results": results}, sent)


def test_classify_and_conclude() -> None:
    me = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    assert wire.classify("/ip4/1.2.3.4/tcp/5", "1.2.3.4", me) == wire.Dialable(
        "/ip4/1.2.3.4/tcp/5", "1.2.3.4", 5
    )
    assert isinstance(wire.classify(f"/ip4/1.2.3.4/tcp/5/p2p/{me}", "1.2.3.4", me), wire.Dialable)
    assert isinstance(wire.classify("/ip6/::1/tcp/5", "0:0::1", me), wire.Dialable)
    for addr, code in (
        ("/ip4/1.2.3.5/tcp/5", wire.OTHER_IP),
        ("/ip6/::1/tcp/5", wire.OTHER_IP),
        ("/ip4/0.0.0.0/tcp/5", wire.INVALID),
        ("/ip4/1.2.3.4/tcp/0", wire.INVALID),
        ("nonsense", wire.INVALID),
        ("/ip4/1.2.3.4/udp/5/quic", wire.UNSUPPORTED),
        ("/ip4/1.2.3.4/tcp/5/p2p-circuit", wire.UNSUPPORTED),
    ):
        assert wire.classify(addr, "1.2.3.4", me)[0] == code, addr

    def r(status: str, code: str = "", addr: str = "/ip4/1.2.3.4/tcp/5") -> wire.AddrResult:
        return wire.AddrResult(addr, status, code)

    assert verdict.conclude([r("OK")], {0}, "1.2.3.4") == ("public", "none")
    assert verdict.conclude([r("OK")], set(), "1.2.3.4") == ("unknown", "unknown")  # no nonce
    assert verdict.conclude([r("DIAL_ERROR")], set(), "1.2.3.4") == ("private", "none")
    assert verdict.conclude(
        [r("REFUSED", "other-ip", "/ip4/10.0.0.2/tcp/5")], set(), "1.2.3.4"
    ) == ("private", "unknown")
    assert verdict.conclude([r("DIAL_ERROR"), r("REFUSED", "too-many")], set(), "1.2.3.4") == (
        "unknown",
        "unknown",
    )
    assert verdict.conclude([], set(), None) == ("unknown", "unknown")
    assert verdict.candidates(["/ip4/1.2.3.4/tcp/5", "/ip4/9.9.9.9/tcp/1/p2p/X/p2p-circuit"]) == (
        "/ip4/1.2.3.4/tcp/5",
    )


def test_observe_ports_setting() -> None:
    section = ConfigSection("autonat", ServerConfig)
    assert ServerConfig().observe_ports == (7422, 7423)
    for ok in ([], [0, 0], [7422, 7423], [1, 65535]):
        assert build_section(section, {"observe_ports": ok}).observe_ports == tuple(ok)
    for bad in ([7422], [7422, 7423, 7424], [7422, 7422], [70000, 1], [-1, 2], ["x", 1]):
        with pytest.raises(ConfigError, match="observe_ports"):
            build_section(section, {"observe_ports": bad})


def test_observations_on_the_wire() -> None:
    """The ``result``'s ``observe`` is optional and checked; the lines are bounded."""
    token = "0123456789abcdef" * 2
    sent = ("/ip4/1.2.3.4/tcp/5",)
    rows = [wire.AddrResult(sent[0], wire.DIAL_ERROR)]
    plain = wire.result("/ip4/1.2.3.4/tcp/9", rows)
    assert "observe" not in plain and wire.parse_observe(plain) is None  # an older server
    offer = wire.Observe((7422, 7423), token)
    message = wire.decode(wire.encode(wire.result("/ip4/1.2.3.4/tcp/9", rows, offer))[2:])
    assert wire.parse_observe(message) == offer
    assert wire.parse_results(message, sent) == rows  # an older client reads it as before
    for bad in (
        None,
        [7422, 7423],
        {"ports": [7422, 7423]},
        {"ports": [7422], "token": token},
        {"ports": [7422, 7422], "token": token},
        {"ports": [0, 7423], "token": token},
        {"ports": [7422, 65536], "token": token},
        {"ports": [True, 7423], "token": token},
        {"ports": ["7422", 7423], "token": token},
        {"ports": [7422, 7423], "token": token.upper()},
        {"ports": [7422, 7423], "token": token[:-1]},
        {"ports": [7422, 7423], "token": 7},
    ):
        with pytest.raises(wire.BadMessage):
            wire.parse_observe({"type": "result", "observe": bad})

    # Where a member observes from: its bare TCP listen address of the server's family.
    assert wire.tcp_endpoint("/ip4/0.0.0.0/tcp/7420") == ("0.0.0.0", 7420)
    assert wire.tcp_endpoint("/ip6/::/tcp/5") == ("::", 5)
    for not_bare in ("/ip4/1.2.3.4/tcp/5/p2p/X/p2p-circuit", "/dns4/a/tcp/5", "/ip4/1.2.3.4/udp/5"):
        assert wire.tcp_endpoint(not_bare) is None

    assert wire.complete_line(b"abc") is None
    assert wire.complete_line(b"abc\ndef") == b"abc\n"
    assert wire.complete_line(b"x" * 63 + b"\n") == b"x" * 63 + b"\n"
    for oversized in (b"x" * 64, b"x" * 64 + b"\n", b"x" * 200):
        with pytest.raises(wire.BadMessage):
            wire.complete_line(oversized)
    assert wire.parse_observe_request(wire.observe_request(token)) == token
    assert wire.parse_observe_request(token.encode() + b"\r\n") == token
    for bad_line in (b"\n", b"zz" * 16 + b"\n", token.encode() + b"x\n", b"\xff" * 32 + b"\n"):
        with pytest.raises(wire.BadMessage):
            wire.parse_observe_request(bad_line)
    assert wire.parse_observed_line(wire.observed_line("203.0.113.11", 40001)) == (
        "203.0.113.11",
        40001,
    )
    assert wire.observed_line("::ffff:10.0.0.1", 5) == b"10.0.0.1 5\n"  # dual-stack socket
    assert wire.parse_observed_line(b"2001:db8::1 5\n") == ("2001:db8::1", 5)
    for bad_reply in (
        b"",
        b"1.2.3.4 5",
        b"1.2.3.4 5\n\n",
        b"1.2.3.4:5\n",
        b"1.2.3.4 0\n",
        b"1.2.3.4 65536\n",
        b"1.2.3.4 05\n",
        b"1.2.3.4 1_0\n",
        b"1.2.3.4  5\n",
        b"example.org 5\n",
        b"\xff 5\n",
        b"1.2.3.4 5" + b" " * 80 + b"\n",
    ):
        with pytest.raises(wire.BadMessage):
            wire.parse_observed_line(bad_reply)


def test_the_nat_kind_from_two_observations() -> None:
    local = ("10.1.0.10", 40001)
    eim = ("203.0.113.11", 40001)
    assert verdict.mapping([(local, local), (local, local)]) == "none"
    assert verdict.mapping([(("::ffff:10.1.0.10", 40001), local)] * 2) == "none"
    assert verdict.mapping([(local, eim), (local, eim)]) == "endpoint-independent"
    moved = ("203.0.113.11", 51000)  # port-changing, but the same for both: still EIM
    assert verdict.mapping([(local, moved), (local, moved)]) == "endpoint-independent"
    assert verdict.mapping([(local, eim), (local, moved)]) == "symmetric"
    other_ip = ("203.0.113.12", 40001)  # another IP of a pool: depends on the destination
    assert verdict.mapping([(local, eim), (local, other_ip)]) == "symmetric"
    assert verdict.mapping([(local, local), (local, eim)]) == "symmetric"
    assert verdict.mapping([(local, eim)]) == "unknown"  # one observation
    assert verdict.mapping([]) == "unknown"
    assert verdict.mapping([(local, eim), (("10.1.0.10", 40002), eim)]) == "unknown"
    assert verdict.mapping([(local, ("nonsense", 1)), (local, eim)]) == "unknown"
    assert verdict.mapping([(local, ("1.2.3.4", 0)), (local, eim)]) == "unknown"

    assert verdict.nat_kind("public", "none", "symmetric") == "none"
    assert verdict.nat_kind("private", "unknown", "symmetric") == "symmetric"
    assert verdict.nat_kind("private", "unknown", "endpoint-independent") == (
        "endpoint-independent"
    )
    assert verdict.nat_kind("private", "unknown", None) == "unknown"  # no observation
    assert verdict.nat_kind("private", "none", None) == "none"  # a firewall, no translation
    assert verdict.nat_kind("unknown", "unknown", "none") == "none"
    assert verdict.nat_kind("private", "unknown", "unknown") == "unknown"


def test_observation_connections_count_per_ipv4_address_or_ipv6_64() -> None:
    source = service._source
    assert source("203.0.113.7") == "203.0.113.7"
    assert source("::ffff:203.0.113.7") == "203.0.113.7"  # a dual-stack listener
    assert source("2001:db8:1:2::5") == source("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source("2001:db8:1:3::5") != source("2001:db8:1:2::5")
    assert source("fe80::1%eth0") == "fe80::/64"


def test_observation_tokens_are_for_two_uses_within_their_lifetime() -> None:
    now = [100.0]
    tokens = Tokens(ttl=30, uses=2, limit=3, clock=lambda: now[0])
    token = tokens.issue()
    assert wire.is_token(token) and len(tokens) == 1
    assert tokens.redeem(token) and tokens.redeem(token)
    assert not tokens.redeem(token) and len(tokens) == 0  # spent
    assert not tokens.redeem("0" * 32)
    late = tokens.issue()
    now[0] += 30
    assert not tokens.redeem(late) and len(tokens) == 0  # expired
    issued = [tokens.issue() for _ in range(4)]
    assert len(tokens) == 3 and not tokens.redeem(issued[0])  # the oldest went first
    assert all(tokens.redeem(t) for t in issued[1:])
    now[0] += 31
    tokens.issue()
    assert len(tokens) == 1  # expired ones are dropped on the next issue
