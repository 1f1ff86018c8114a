"""The relay end to end in a community (in-process nodes on loopback): the server's
``relay`` and the members' ``relay-client`` from the presets, members told to
reserve (``mode = "always"``: loopback is not behind a router).

Alice and bob stop accepting connections (their listeners are closed, as a home
router would drop inbound connections): they reach each other only through the
server, and the channel's gossip flows over that relayed connection both ways.
A node outside the community gets nowhere.
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import pytest
from united_relay_client.client_service import RelayClientService
from united_relay_client.config import Config as ClientConfig

from united_core.api import hookimpl
from united_core.identity import Identity
from united_core.node import Node
from united_core.p2p.options import HostOptions
from united_core.p2p.runtime import P2PRuntime
from united_core.testing import call, running_community, until

MEMBERS = '[relay_client]\nmode = "always"\n'
pytestmark = pytest.mark.timeout(90)


class Received:
    """Records which peer handed each message over (``united_message_received``)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    @hookimpl
    def united_message_received(self, message: Any, from_peer: str) -> None:
        self.got.append((message.text, from_peer))


async def stop_listening(node: Node) -> None:
    """Close the node's listeners: nobody can dial it any more (it still dials out)."""

    async def close() -> None:
        network = node.p2p.host_context.host.get_network()
        for listener in list(network.listeners.values()):
            await listener.close()

    await node.p2p.call(close)


async def relayed_peer(node: Node, peer_id: str) -> dict[str, Any] | None:
    rows = [r for r in await call(node, "peers") if r["peer_id"] == peer_id and r["connected"]]
    return rows[0] if rows and all(r["relayed"] for r in rows) else None


def test_members_behind_nat_meet_through_the_relay(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_community(tmp_path, ("alice", "bob"), member_extra=MEMBERS) as c:
            alice, bob, server = c.node("alice"), c.node("bob"), c.server
            ids = {n: c.node(n).identity.peer_id for n in ("alice", "bob")}
            relay = server.service("relay")
            await until(lambda: relay.snapshot()["reservations"] == 2, what="two reservations")

            # Alice announces her relayed address; bob sees it in her presence.
            circuit = (await c.stats("alice"))["relay-client"]["addr"]
            assert circuit.endswith(f"/p2p/{server.identity.peer_id}/p2p-circuit")
            assert circuit in alice.p2p.announce_addrs

            async def alice_presence() -> list[str]:
                rows = await call(bob, "who", "general")
                return next((r["addrs"] for r in rows if r["peer_id"] == ids["alice"]), [])

            await until(lambda: _has(alice_presence(), circuit), what="the circuit in presence")

            # Behind "NAT": no inbound connections; the direct link between them goes.
            for node in (alice, bob):
                await stop_listening(node)
            await bob.p2p.disconnect(ids["alice"])
            started = time.monotonic()
            presence = await alice_presence()
            assert await bob.p2p.dial(ids["alice"], presence) == ids["alice"]
            print(f"bob reached alice through the relay in {time.monotonic() - started:.2f} s")
            row = await until(lambda: relayed_peer(bob, ids["alice"]), what="relayed in peers")
            assert row["kind"] == "relayed"
            assert row["addrs"] == [
                f"/p2p/{server.identity.peer_id}/p2p-circuit/p2p/{ids['alice']}"
            ]
            await until(lambda: relayed_peer(alice, ids["bob"]), what="alice sees it relayed")

            # Gossip between them can only take the relayed connection: the server
            # leaves the channel's mesh (it still relays the bytes).
            topic = c.topic("general")
            await server.p2p.unsubscribe(topic)
            for a, b in (("alice", "bob"), ("bob", "alice")):
                meshed = functools.partial(_in_mesh, c.node(a), ids[b], topic)
                await until(meshed, 20, f"{b} in {a}'s mesh")
            for sender, receiver in (("alice", "bob"), ("bob", "alice")):
                recorder = Received()
                c.node(receiver).pm.register(recorder, name=f"test-recorder-{receiver}")
                try:
                    before = relay.snapshot()["bytes_relayed"]
                    text = f"{sender} over the relay " + "x" * 20_000
                    await c.node(sender).service("mesh").send("general", text)
                    await until(
                        lambda s=sender, r=recorder, t=text: (t, ids[s]) in r.got,
                        what=f"{sender}'s message at {receiver}, from {sender}",
                    )
                    assert relay.snapshot()["bytes_relayed"] - before >= 20_000
                finally:
                    c.node(receiver).pm.unregister(recorder)

            figures = (await c.stats("server"))["relay"]
            assert figures["reservations"] == 2 and figures["circuits"] >= 1
            assert figures["refused"] == {"reserve": {}, "connect": {}}
            bob_client = (await c.stats("bob"))["relay-client"]
            assert bob_client["mode"] == "always" and bob_client["relayed_out"] >= 1
            assert (await c.stats("alice"))["relay-client"]["relayed_in"] >= 1

            # A node outside the community: the server's member gate refuses it at
            # the handshake, so it can neither reserve nor open a circuit.
            client = RelayClientService(ClientConfig())
            outsider = P2PRuntime(
                Identity.generate(),
                HostOptions(listen_addrs=("/ip4/127.0.0.1/tcp/0",), services=[client]),
            )
            await outsider.start()
            try:
                await outsider.call_service(
                    "relay-client", "configure", [server.identity.peer_id], True
                )
                with pytest.raises(Exception):  # noqa: B017 - the handshake fails
                    await outsider.dial(ids["alice"], [circuit])
                await asyncio.sleep(0.5)
                assert not client.snapshot()["reserved"]
                assert not await outsider.peers()
            finally:
                await outsider.stop()
            assert relay.snapshot()["reservations"] == 2

    asyncio.run(scenario())


async def _has(addrs: Any, wanted: str) -> bool:
    return wanted in await addrs


async def _in_mesh(node: Node, peer_id: str, topic: str) -> bool:
    return peer_id in (await node.p2p.snapshot())["mesh"].get(topic, ())
