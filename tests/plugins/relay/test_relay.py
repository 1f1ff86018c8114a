"""The members-only relay (``relay``) and its client (``relay-client``) on bare P2P
runtimes on loopback: one relay, members admitted by a shared gate (a set the
test edits to make a member a non-member), real circuits through the relay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from united_relay.config import Config as RelayConfig
from united_relay.hop import RelayService, TokenBucket
from united_relay.panel import render_panel
from united_relay_client.client_service import RelayClientService, parse_circuit
from united_relay_client.config import Config as ClientConfig
from united_relay_client.panel import render_panel as render_client_panel
from united_relay_client.policy import classify, needs_relay

from united_core.config import ConfigError, ConfigSection, build_section
from united_core.identity import Identity
from united_core.node import load_settings
from united_core.p2p.dialer import usable_addrs
from united_core.p2p.options import HostOptions
from united_core.p2p.runtime import P2PRuntime
from united_core.testing import make_node_dir, until

LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)
SINK = "/united/test/sink/1"


@dataclass
class Lab:
    relay: RelayService
    relay_rt: P2PRuntime
    runtimes: dict[str, P2PRuntime]
    clients: dict[str, RelayClientService]
    admitted: set[str] = field(default_factory=set)

    @property
    def relay_addr(self) -> str:
        return f"{self.relay_rt.listen_addrs[0].split('/p2p/')[0]}/p2p/{self.relay_rt.peer_id}"

    def id(self, name: str) -> str:
        return self.runtimes[name].peer_id

    async def join(self, name: str, *, reserve: bool) -> None:
        """Connect ``name`` to the relay and tell its client whether to reserve."""
        rt = self.runtimes[name]
        await rt.call_service("relay-client", "configure", [self.relay_rt.peer_id], reserve)
        await rt.connect(self.relay_addr)

    async def reserved(self, name: str, timeout: float = 5) -> str:
        """Wait for ``name``'s reservation; its announced circuit address."""
        client = self.clients[name]
        await until(lambda: client.snapshot()["reserved"], timeout, f"{name} to reserve")
        addr: str = client.snapshot()["addr"]
        assert addr in self.runtimes[name].announce_addrs
        return addr

    async def relayed_to(self, name: str, other: str) -> list[dict[str, Any]]:
        return [
            p
            for p in await self.runtimes[name].peers()
            if p["peer_id"] == self.id(other) and p["relayed"]
        ]


@contextlib.asynccontextmanager
async def lab(names: tuple[str, ...] = ("a", "b"), **relay_settings: Any) -> AsyncIterator[Lab]:
    admitted: set[str] = set()

    def gate(peer_id: str, direction: str) -> bool:
        return peer_id in admitted

    relay = RelayService(RelayConfig(**relay_settings))
    relay_rt = P2PRuntime(
        Identity.generate(), HostOptions(listen_addrs=LOOPBACK, services=[relay]), gate=gate
    )
    clients = {n: RelayClientService(ClientConfig(retry_min=5.0)) for n in names}
    runtimes = {
        n: P2PRuntime(
            Identity.generate(),
            HostOptions(listen_addrs=LOOPBACK, services=[clients[n]]),
            gate=gate,
        )
        for n in names
    }
    admitted |= {relay_rt.peer_id, *(rt.peer_id for rt in runtimes.values())}
    started: list[P2PRuntime] = []
    try:
        for rt in (relay_rt, *runtimes.values()):
            await rt.start()
            started.append(rt)
        await until(lambda: relay.snapshot()["running"], what="the relay service")
        yield Lab(relay, relay_rt, runtimes, clients, admitted)
    finally:
        for rt in reversed(started):
            await rt.stop()


def test_a_member_reserves_announces_and_is_reached_through_the_relay() -> None:
    async def scenario() -> None:
        async with lab(("a", "b")) as L:
            await L.join("a", reserve=True)
            await L.join("b", reserve=False)
            circuit = await L.reserved("a")
            relay_id = L.relay_rt.peer_id
            assert circuit.endswith(f"/p2p/{relay_id}/p2p-circuit")
            assert circuit.startswith(L.relay_addr.split("/p2p/")[0])  # never 0.0.0.0
            assert L.clients["a"].snapshot()["limited"] is False  # members: no Limit sent

            started = time.monotonic()
            assert await L.runtimes["b"].dial(L.id("a"), [circuit]) == L.id("a")
            print(f"relayed dial: {(time.monotonic() - started) * 1000:.0f} ms")
            (conn,) = await L.relayed_to("b", "a")
            assert conn["addrs"] == [f"/p2p/{relay_id}/p2p-circuit/p2p/{L.id('a')}"]
            assert await L.relayed_to("a", "b")  # the other end sees it relayed too
            assert len(await L.runtimes["b"].ping(L.id("a"), 3)) == 3
            assert len(await L.runtimes["a"].ping(L.id("b"), 3)) == 3  # both ways

            figures = L.relay.snapshot()
            assert figures["reservations"] == 1 and figures["reserved_peers"] == [L.id("a")]
            assert figures["circuits"] == 1 and figures["circuits_total"] == 1
            assert figures["bytes_relayed"] > 0
            assert L.clients["b"].snapshot()["relayed_out"] == 1
            assert L.clients["a"].snapshot()["relayed_in"] == 1
            snap = await L.relay_rt.snapshot()
            assert snap["services"]["relay"]["circuits"] == 1
            assert "reservations 1/128" in "\n".join(render_panel({"p2p": snap}))

            await L.runtimes["b"].disconnect(L.id("a"))
            await until(lambda: L.relay.snapshot()["circuits"] == 0, what="the circuit freed")
            assert L.relay.snapshot()["ended"] == {"closed": 1}

    asyncio.run(scenario())


def test_a_non_member_can_neither_reserve_nor_open_a_circuit() -> None:
    """z is admitted long enough to connect, then leaves the member set (as a
    removed member would): the relay refuses both its requests with
    PERMISSION_DENIED, and a circuit to it as well."""

    async def scenario() -> None:
        async with lab(("a", "z")) as L:
            await L.join("a", reserve=True)
            circuit = await L.reserved("a")
            await L.join("z", reserve=False)
            L.admitted.discard(L.id("z"))

            await L.runtimes["z"].call_service(
                "relay-client", "configure", [L.relay_rt.peer_id], True
            )
            z = L.clients["z"]
            await until(lambda: z.snapshot()["last_status"], what="z's reservation answer")
            assert z.snapshot()["last_status"] == "PERMISSION_DENIED"
            assert not z.snapshot()["reserved"]
            assert z.snapshot()["failures"] == 1  # the next attempt waits retry_min (5 s)

            with pytest.raises(Exception, match="PERMISSION_DENIED"):
                await L.runtimes["z"].dial(L.id("a"), [circuit])
            z_circuit = f"{L.relay_addr}/p2p-circuit"  # a member asking for z
            with pytest.raises(Exception, match="PERMISSION_DENIED"):
                await L.runtimes["a"].dial(L.id("z"), [z_circuit])

            refused = L.relay.snapshot()["refused"]
            assert refused["reserve"] == {"PERMISSION_DENIED": 1}
            assert refused["connect"] == {"PERMISSION_DENIED": 2}
            assert L.relay.snapshot()["circuits_total"] == 0
            assert not await L.relayed_to("z", "a")

    asyncio.run(scenario())


def test_reservations_beyond_max_reservations_are_refused() -> None:
    async def scenario() -> None:
        async with lab(("a", "b"), max_reservations=1) as L:
            await L.join("a", reserve=True)
            await L.reserved("a")
            await L.join("b", reserve=True)
            b = L.clients["b"]
            await until(lambda: b.snapshot()["last_status"], what="b's reservation answer")
            assert b.snapshot()["last_status"] == "RESERVATION_REFUSED"
            assert not b.snapshot()["reserved"]
            assert not any("/p2p-circuit" in a for a in L.runtimes["b"].announce_addrs)
            # A renewal is not a new reservation: a's slot is still its own.
            await asyncio.sleep(0.5)
            assert b.snapshot()["failures"] == 1  # backing off, not retrying in a loop
            figures = L.relay.snapshot()
            assert figures["reservations"] == 1 and figures["reserved_peers"] == [L.id("a")]
            assert figures["refused"]["reserve"] == {"RESERVATION_REFUSED": 1}
            # a leaves: its reservation is dropped with its connection, b gets the slot.
            await L.runtimes["a"].disconnect(L.relay_rt.peer_id)
            await until(lambda: L.relay.snapshot()["reservations"] == 0, what="a's slot freed")
            assert L.relay.snapshot()["reservations_dropped"] == 1
            await L.runtimes["b"].disconnect(L.relay_rt.peer_id)
            await L.runtimes["b"].connect(L.relay_addr)  # reconnected: reserves at once
            await L.reserved("b", timeout=3)

    asyncio.run(scenario())


def test_a_reservation_whose_connection_closed_meanwhile_is_dropped_at_once() -> None:
    """The disconnect raced the request: the notifee found nothing to drop, so the
    request itself drops what it made (else the slot stays taken until its TTL)."""
    from types import SimpleNamespace

    from libp2p.peer.id import ID

    peer = ID.from_base58(Identity.generate().peer_id)
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    stream: Any = SimpleNamespace(write=write, muxed_conn=SimpleNamespace(peer_id=peer))
    network = SimpleNamespace(connections={})  # its connection is gone already

    async def scenario() -> None:
        relay = RelayService(RelayConfig())
        relay._gate = lambda peer_id, direction: True
        relay._host = SimpleNamespace(  # type: ignore[assignment]
            get_network=lambda: network, get_addrs=lambda: [], get_id=lambda: peer
        )
        await relay._reserve(stream, peer)
        figures = relay.snapshot()
        assert written and figures["reservations_made"] == 1  # granted (status OK) ...
        assert figures["reservations"] == 0 and figures["reservations_dropped"] == 1  # ... dropped

    trio.run(scenario)


def test_renewed_at_half_the_lifetime_and_at_once_after_reconnecting() -> None:
    async def scenario() -> None:
        async with lab(("a",), reservation_ttl=2) as L:
            await L.join("a", reserve=True)
            first = await L.reserved("a")
            a = L.clients["a"]
            snap = a.snapshot()
            assert snap["renew_at"] - time.time() <= 1.05  # half of 2 s
            await asyncio.sleep(2.6)  # past the first reservation's expiry
            assert a.snapshot()["reserved"] and a.snapshot()["addr"] == first
            assert 2 <= L.relay.snapshot()["renewals"] + 1 <= 4  # every ~1 s, no busy loop
            # The relay drops the reservation with the connection; the member stops
            # announcing it, and reserves again as soon as it is reconnected.
            await L.runtimes["a"].disconnect(L.relay_rt.peer_id)
            await until(lambda: not a.snapshot()["reserved"], what="the reservation lost")
            assert first not in L.runtimes["a"].announce_addrs
            await L.runtimes["a"].connect(L.relay_addr)
            started = time.monotonic()
            assert await L.reserved("a", timeout=2) == first
            print(f"reserved again {time.monotonic() - started:.2f} s after reconnecting")

    asyncio.run(scenario())


async def _sink(handle: Any) -> None:
    with contextlib.suppress(Exception):
        while await handle.read(65536):
            pass


@pytest.mark.parametrize("limit", ["duration", "data"])
def test_a_circuit_cut_by_a_limit_frees_its_slot(limit: str) -> None:
    """With one circuit per member allowed, a second circuit after the cut works:
    the slot was freed (py-libp2p's own hop keeps it, and answers NO_RESERVATION)."""
    settings = {"circuit_duration": 1} if limit == "duration" else {"circuit_data": 64 * 1024}

    async def scenario() -> None:
        async with lab(("a", "b"), max_circuits_per_peer=1, **settings) as L:
            await L.runtimes["a"].set_stream_handler(SINK, _sink)
            await L.join("a", reserve=True)
            await L.join("b", reserve=False)
            circuit = await L.reserved("a")
            assert L.clients["a"].snapshot()["limited"] is True  # a Limit is announced
            await L.runtimes["b"].dial(L.id("a"), [circuit])
            assert L.relay.snapshot()["circuits"] == 1
            started = time.monotonic()
            if limit == "data":
                stream = await L.runtimes["b"].open_stream(L.id("a"), [SINK])
                with contextlib.suppress(Exception):
                    for _ in range(4):
                        await stream.write(b"x" * 32 * 1024)
            # (duration: idle; the deadline fires without a byte flowing)
            await until(lambda: L.relay.snapshot()["circuits"] == 0, 5, "the circuit cut")
            print(f"cut by {limit} after {time.monotonic() - started:.2f} s")
            figures = L.relay.snapshot()
            assert figures["ended"] == {limit: 1}
            assert figures["circuits_by_peer"] == {}
            await until(lambda: _not_connected(L, "b", "a"), what="b's relayed connection gone")
            await L.runtimes["b"].dial(L.id("a"), [circuit])  # the slot is free again
            assert await L.relayed_to("b", "a")
            assert L.relay.snapshot()["circuits_total"] == 2

    asyncio.run(scenario())


def test_the_bandwidth_cap_slows_circuits_down() -> None:
    """``bandwidth`` 100 kB/s for the whole relay: 250 kB take at least 1.5 s past
    the first second's burst (the traffic waits; nothing is cut)."""
    received = 0

    async def count(handle: Any) -> None:
        nonlocal received
        with contextlib.suppress(Exception):
            while data := await handle.read(65536):
                received += len(data)

    async def scenario() -> None:
        async with lab(("a", "b"), bandwidth=100_000) as L:
            await L.runtimes["a"].set_stream_handler(SINK, count)
            await L.join("a", reserve=True)
            await L.join("b", reserve=False)
            await L.runtimes["b"].dial(L.id("a"), [await L.reserved("a")])
            stream = await L.runtimes["b"].open_stream(L.id("a"), [SINK])
            started = time.monotonic()
            for _ in range(5):
                await stream.write(b"x" * 50_000)
            await until(lambda: received >= 250_000, 10, "250 kB through the relay")
            took = time.monotonic() - started
            print(f"250 kB at a 100 kB/s cap: {took:.2f} s")
            assert took >= 1.2
            assert L.relay.snapshot()["circuits"] == 1  # slowed, not cut

    asyncio.run(scenario())


async def _not_connected(L: Lab, name: str, other: str) -> bool:
    return not any(p["peer_id"] == L.id(other) for p in await L.runtimes[name].peers())


def test_two_circuits_to_one_member_are_independent() -> None:
    async def scenario() -> None:
        async with lab(("a", "b", "c")) as L:
            await L.join("a", reserve=True)
            await L.join("b", reserve=False)
            await L.join("c", reserve=False)
            circuit = await L.reserved("a")
            await L.runtimes["b"].dial(L.id("a"), [circuit])
            await L.runtimes["c"].dial(L.id("a"), [circuit])
            assert L.relay.snapshot()["circuits_by_peer"][L.id("a")] == 2
            await L.runtimes["b"].disconnect(L.id("a"))
            await until(
                lambda: L.relay.snapshot()["circuits_by_peer"].get(L.id("a")) == 1,
                what="b's circuit ended",
            )
            assert await L.relayed_to("c", "a")
            assert len(await L.runtimes["c"].ping(L.id("a"), 2)) == 2  # c's still works
            assert len(await L.runtimes["a"].ping(L.id("c"), 2)) == 2
            assert L.relay.snapshot()["circuits"] == 1

    asyncio.run(scenario())


def test_circuits_beyond_the_per_member_cap_are_refused() -> None:
    async def scenario() -> None:
        async with lab(("a", "b", "c"), max_circuits_per_peer=1) as L:
            await L.join("a", reserve=True)
            await L.join("b", reserve=False)
            await L.join("c", reserve=False)
            circuit = await L.reserved("a")
            await L.runtimes["b"].dial(L.id("a"), [circuit])
            with pytest.raises(Exception, match="RESOURCE_LIMIT_EXCEEDED"):
                await L.runtimes["c"].dial(L.id("a"), [circuit])
            # b holds no reservation: a circuit to b is NO_RESERVATION.
            b_circuit = f"{L.relay_addr}/p2p-circuit"
            with pytest.raises(Exception, match="NO_RESERVATION"):
                await L.runtimes["c"].dial(L.id("b"), [b_circuit])
            assert L.relay.snapshot()["refused"]["connect"] == {
                "RESOURCE_LIMIT_EXCEEDED": 1,
                "NO_RESERVATION": 1,
            }

    asyncio.run(scenario())


def test_a_member_accepts_circuits_only_from_its_relay() -> None:
    """a no longer counts the relay as one (its member list changed): it refuses the
    relay's STOP, and the relay answers the dialer CONNECTION_FAILED."""

    async def scenario() -> None:
        async with lab(("a", "b")) as L:
            await L.join("a", reserve=True)
            await L.join("b", reserve=False)
            circuit = await L.reserved("a")
            await L.runtimes["a"].call_service("relay-client", "configure", [], True)
            await until(lambda: not L.clients["a"].snapshot()["reserved"], what="a gives up")
            assert circuit not in L.runtimes["a"].announce_addrs
            with pytest.raises(Exception, match="CONNECTION_FAILED"):
                await L.runtimes["b"].dial(L.id("a"), [circuit])
            assert L.clients["a"].snapshot()["refused_in"] == 1
            assert L.relay.snapshot()["refused"]["connect"] == {"CONNECTION_FAILED": 1}
            assert L.relay.snapshot()["circuits"] == 0  # the slot taken for it is back

    asyncio.run(scenario())


def test_the_relay_refuses_to_start_on_an_unchecked_libp2p(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import united_relay.hop
    import united_relay_client.client_service

    monkeypatch.setattr(united_relay.hop, "CHECKED_LIBP2P", ("9.9.",))
    monkeypatch.setattr(united_relay_client.client_service, "CHECKED_LIBP2P", ("9.9.",))

    async def scenario() -> None:
        relay = RelayService(RelayConfig())
        client = RelayClientService(ClientConfig())
        rt = P2PRuntime(
            Identity.generate(), HostOptions(listen_addrs=LOOPBACK, services=[relay, client])
        )
        await rt.start()
        try:
            await until(lambda: relay.snapshot()["error"], what="the relay's refusal")
            assert "is not a version the relay was checked against" in relay.snapshot()["error"]
            assert not relay.snapshot()["running"]
            await until(lambda: client.snapshot()["error"], what="the client's refusal")
            assert rt.running  # the node goes on without them
            assert "off:" in render_panel({"p2p": await rt.snapshot()})[0]
        finally:
            await rt.stop()

    asyncio.run(scenario())


# ---- pieces without a network ------------------------------------------------------------


def test_the_token_bucket_holds_the_rate() -> None:
    async def main() -> None:
        bucket = TokenBucket(100_000)
        start = trio.current_time()
        for _ in range(10):  # 10 x 64 KiB; a full bucket (1 s of traffic) passes at once
            await bucket.take(64 * 1024)
        took = trio.current_time() - start
        assert took == pytest.approx((10 * 64 * 1024 - 100_000) / 100_000, abs=0.01)
        await trio.sleep(60)  # idle: the bucket refills to its capacity, no more
        start = trio.current_time()
        await bucket.take(100_000)
        await bucket.take(50_000)
        assert trio.current_time() - start == pytest.approx(0.5, abs=0.01)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize(
    ("addr", "kind"),
    [
        ("/ip4/127.0.0.1/tcp/1", "loopback"),
        ("/ip4/192.168.1.20/tcp/1", "private"),
        ("/ip4/10.1.0.10/tcp/1", "private"),
        ("/ip4/100.64.3.4/tcp/1", "private"),
        ("/ip4/198.51.100.2/tcp/1", "public"),  # documentation: the labs' internet
        ("/ip4/8.8.8.8/tcp/1", "public"),
        ("/ip6/fd00::1/tcp/1", "private"),
        ("/dns4/example.org/tcp/1", "public"),
        ("/ip4/0.0.0.0/tcp/1", "unknown"),
    ],
)
def test_auto_mode_classifies_addresses(addr: str, kind: str) -> None:
    assert classify(addr) == kind


def test_auto_mode_reserves_only_behind_a_router() -> None:
    relay = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    relayed = f"/ip4/203.0.113.10/tcp/7420/p2p/{relay}/p2p-circuit"
    assert needs_relay("auto", ["/ip4/192.168.1.20/tcp/4001"])
    assert needs_relay("auto", ["/ip4/192.168.1.20/tcp/4001", relayed])  # its own relayed one
    assert not needs_relay("auto", ["/ip4/192.168.1.20/tcp/4001", "/ip4/8.8.4.4/tcp/4001"])
    assert not needs_relay("auto", ["/ip4/127.0.0.1/tcp/4001"])  # this machine only
    assert needs_relay("always", ["/ip4/8.8.4.4/tcp/4001"])
    assert not needs_relay("never", ["/ip4/10.0.0.2/tcp/4001"])
    # An AutoNAT verdict wins over the addresses' look: a public-looking address
    # behind a firewall is private, a private one forwarded by the router public.
    assert needs_relay("auto", ["/ip4/8.8.4.4/tcp/4001"], "private")
    assert not needs_relay("auto", ["/ip4/192.168.1.20/tcp/4001"], "public")
    assert needs_relay("auto", ["/ip4/192.168.1.20/tcp/4001"], "unknown")
    assert not needs_relay("never", ["/ip4/8.8.4.4/tcp/4001"], "private")


def test_the_dialer_keeps_relayed_addresses_whole() -> None:
    relay = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    peer = "12D3KooWLbntLaun7f3hL8Ro2mz8SuPqLv5sGuDCUTzjHbSEaqM2"
    circuit = f"/ip4/203.0.113.10/tcp/7420/p2p/{relay}/p2p-circuit"
    assert usable_addrs([f"{circuit}/p2p/{peer}", circuit, "/ip4/10.0.0.1/tcp/5/p2p/x"]) == [
        circuit,
        "/ip4/10.0.0.1/tcp/5",
    ]
    assert usable_addrs([f"/ip4/0.0.0.0/tcp/7420/p2p/{relay}/p2p-circuit"]) == []
    assert usable_addrs([f"/p2p/{relay}/p2p-circuit"]) == [f"/p2p/{relay}/p2p-circuit"]
    got = parse_circuit(f"{circuit}/p2p/{peer}")
    assert (got[0].to_base58(), got[1], got[2].to_base58()) == (
        relay,
        "/ip4/203.0.113.10/tcp/7420",
        peer,
    )


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"max_circuits_per_peer": 20, "max_circuits": 10}, "max_circuits_per_peer"),
        ({"circuit_data": 1000}, "circuit_data"),
        ({"bandwidth": 10}, "bandwidth"),
        ({"bandwidth": 10_000, "circuit_bandwidth": 20_000}, "circuit_bandwidth"),
        ({"reservation_ttl": 1}, "reservation_ttl"),
    ],
)
def test_bad_relay_settings_are_refused(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_section(ConfigSection("relay", RelayConfig), settings)
    assert info.value.key == key


def test_bad_relay_client_settings_are_refused() -> None:
    for settings, key in (
        ({"mode": "sometimes"}, "mode"),
        ({"retry_min": 10.0, "retry_max": 5.0}, "retry_max"),
    ):
        with pytest.raises(ConfigError) as info:
            build_section(ConfigSection("relay_client", ClientConfig), settings)
        assert info.value.key == key
    assert build_section(ConfigSection("relay", RelayConfig), {}).limited is False


def test_the_client_panel() -> None:
    fresh = {
        "reserved": True,
        "relay": "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        "expires_at": 1_800_000_000.0,
        "limited": False,
        "relayed_in": 2,
        "relayed_out": 1,
        "refused_in": 0,
    }
    snapshot = {"p2p": {"services": {"relay-client": fresh}}}
    lines = render_client_panel({**snapshot, "plugins": {"relay-client": {"mode": "auto"}}})
    assert lines[0].startswith("  mode auto: reserved on ") and "2 in, 1 out" in lines[1]
    assert render_client_panel({}) == ["  (no figures yet)"]


def test_the_sections_of_disabled_relay_plugins_are_ignored_with_a_warning(
    tmp_path: Path,
) -> None:
    extra = '[relay_client]\nmode = "always"\n[relay]\nmax_reservations = 4\n'
    config = make_node_dir(tmp_path, plugins=("ping",), extra=extra)
    settings, _, warnings = load_settings(config)
    assert "relay_client" not in settings.sections and "relay" not in settings.sections
    for name in ("relay", "relay_client"):  # a warning, not "unknown section"
        assert any(f"[{name}] belongs to a plugin that is not enabled" in w for w in warnings)


def test_one_member_cannot_pin_anothers_circuit_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile member opens CONNECTs to a victim and then never speaks (the victim's
    handshake times out, its side closes, the member's side stays open). At most
    PAIR_CIRCUITS such circuits per pair, so others still reach the victim; and a
    half-closed circuit is reset after HALF_CLOSED_GRACE, freeing its slots (found
    by a hostile review: 16 of them locked the victim out of the relay for good)."""
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as PbPeerId
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
    from united_relay import hop

    monkeypatch.setattr(hop, "HALF_CLOSED_GRACE", 1.0)

    async def scenario() -> None:
        async with lab(("a", "b", "c")) as L:
            await L.join("a", reserve=True)
            await L.join("b", reserve=False)
            await L.join("c", reserve=False)
            circuit = await L.reserved("a")
            relay, victim = ID.from_base58(L.relay_rt.peer_id), ID.from_base58(L.id("a"))
            held: list[Any] = []

            async def connect_and_go_silent() -> int:
                stream = await L.runtimes["b"].host_context.host.new_stream(
                    relay, [hop.HOP_PROTOCOL]
                )
                request = HopMessage(type=HopMessage.CONNECT, peer=PbPeerId(id=victim.to_bytes()))
                await write_delimited_msg(stream, request)
                answer = await read_delimited_msg(stream, HopMessage)
                held.append(stream)  # never speaks Noise, never closes
                return int(answer.status)

            codes = [await L.runtimes["b"].call(connect_and_go_silent) for _ in range(6)]
            assert codes[: hop.PAIR_CIRCUITS] == [hop.OK] * hop.PAIR_CIRCUITS, codes
            assert set(codes[hop.PAIR_CIRCUITS :]) == {hop.RESOURCE_LIMIT_EXCEEDED}, codes
            # c still reaches a through the relay.
            assert await L.runtimes["c"].dial(L.id("a"), [circuit]) == L.id("a")
            # a's handshakes with the silent ones time out (10 s, py-libp2p), a's side
            # closes, and the grace then frees b's slots.
            await until(
                lambda: L.relay.snapshot()["circuits_by_peer"].get(L.id("b"), 0) == 0,
                30,
                "b's silent circuits reset",
            )

    asyncio.run(scenario())


def test_circuits_go_only_through_the_communitys_relay() -> None:
    """A relayed address naming another relay (a member may announce anything) is not
    dialed: the circuit dialer uses only the member set's relays."""

    async def scenario() -> None:
        async with lab(("a", "b")) as L:
            await L.join("a", reserve=True)
            circuit = await L.reserved("a")
            # b knows no relay at all: the same address is refused, before any dial.
            await L.runtimes["b"].call_service("relay-client", "configure", [], False)
            with pytest.raises(Exception, match="not a relay of this community"):
                await L.runtimes["b"].dial(L.id("a"), [circuit])
            await L.join("b", reserve=False)  # now the server is b's relay too
            assert await L.runtimes["b"].dial(L.id("a"), [circuit]) == L.id("a")

    asyncio.run(scenario())
