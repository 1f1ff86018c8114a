"""AutoNAT in a real community on loopback (the presets: ``autonat`` on the server,
``autonat-client`` on members, nothing configured).

alice listens on 127.0.0.1, where the server sees her come from: the server dials
her back and ``ctl status`` says ``reachability: public``. bob listens on 127.0.0.2
only, but his connection to the server leaves from 127.0.0.1 (as a member behind a
router leaves from the router's address): the server refuses to dial another IP
than the one it sees, and bob is ``private``. Yet bob has no NAT, and learns it:
from his listen port he connects to the server's two observation ports (free ones
here, ``[autonat] observe_ports = [0, 0]`` in the test server's settings) and both
times the server sees him as himself, 127.0.0.2 and his listen port: ``nat: none``
(without observations it would be ``unknown``). A claimed port where nothing listens
is a dial error, never public; the dial-back never shows up as a peer.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from united_core.testing import SERVER_LOOPBACK, free_port, running_community

BOB = '[p2p]\nlisten = ["/ip4/127.0.0.2/tcp/0"]\n'


def test_members_learn_their_reachability_from_the_server(tmp_path: Path) -> None:
    async def scenario() -> None:
        started = time.monotonic()
        async with running_community(tmp_path, ("alice", "bob"), node_extra={"bob": BOB}) as c:
            alice, bob = c.members["alice"], c.members["bob"]
            await c.until(lambda: alice.p2p.reachability == "public", 15, "alice public")
            await c.until(lambda: bob.p2p.reachability == "private", 15, "bob private")
            learned = time.monotonic() - started

            status = await c.ctl("alice", "status")
            assert status.returncode == 0, status.stderr
            assert "reachability: public" in status.stdout, status.stdout
            assert (await c.call("bob", "status"))["reachability"] == "private"
            assert alice.p2p.nat == "none"
            await c.until(lambda: bob.p2p.nat == "none", 10, "bob's NAT kind observed")
            bob_status = await c.ctl("bob", "status")
            assert "reachability: private" in bob_status.stdout, bob_status.stdout
            assert "nat: none" in bob_status.stdout, bob_status.stdout
            # Each announces its verdict in presence: the other's panel shows it.
            ids = {n: c.node(n).identity.peer_id for n in ("alice", "bob")}

            async def nat_of(viewer: str, peer: str) -> str | None:
                return (await c.stats(viewer))["discovery"].get("peer_nat", {}).get(ids[peer])

            await c.until(lambda: _is(nat_of("bob", "alice"), "public"), 15, "alice's in presence")
            await c.until(lambda: _is(nat_of("alice", "bob"), "private"), 15, "bob's in presence")

            shown = await c.ctl("alice", "reachability")
            assert shown.returncode == 0, shown.stderr
            assert "reachability: public (nat none)" in shown.stdout
            assert "OK (nonce back)" in shown.stdout, shown.stdout
            bob_probe = (await c.call("bob", "reachability"))["probe"]
            [row] = bob_probe["results"]
            assert (row["status"], row["code"]) == ("REFUSED", "other-ip"), bob_probe
            assert bob_probe["observed"].startswith("/ip4/127.0.0.1/tcp/")
            bob_listen = bob.p2p.announce_addrs[0].split("/p2p/")[0].rsplit("/", 1)[1]
            himself = f"127.0.0.2:{bob_listen}"
            assert bob_probe["observation"]["seen"] == [himself, himself], bob_probe
            assert bob_probe["observation"]["kind"] == "none"
            shown_bob = await c.ctl("bob", "reachability")
            assert f"NAT none: {himself} seen as {himself} and {himself}" in shown_bob.stdout

            # A claimed port where nothing listens: a dial error, and the node's own
            # verdict stays (a probe of given addresses is only a check).
            closed = f"/ip4/127.0.0.1/tcp/{free_port()}"
            checked = await c.call("alice", "reachability", "probe", closed)
            assert checked["probe"]["verdict"] == "private", checked
            assert checked["probe"]["results"][0]["status"] == "DIAL_ERROR"
            assert checked["reachability"] == "public"

            # The dial-back never appeared as a peer: alice's and the server's peers are
            # the community's, and no plugin heard of the dialer.
            server_figures = (await c.stats("server"))["autonat"]
            dialer = server_figures["dialer"]
            assert server_figures["answered"] >= 3 and server_figures["dials"]["OK"] >= 1
            assert "observe_ports = [0, 0]" in SERVER_LOOPBACK  # free ports, not 7422-7423
            observe = server_figures["observe"]
            assert len(observe["ports"]) == 2 and 7422 not in observe["ports"], observe
            assert observe["answered"] >= 2 and observe["refused"] == 0, observe  # bob's
            members = {n.identity.peer_id for n in (c.server, alice, bob)}
            for node in (alice, bob):
                peers = {p["peer_id"] for p in await node.p2p.peers()}
                assert peers <= members and dialer not in peers
            stats = await c.stats("alice")
            mine = stats.pop("autonat-client")
            assert mine["last"]["dialer"] == dialer
            assert dialer not in str(stats)  # reconnect, mesh, membership: no trace
            assert mine["reachability"] == "public" and mine["probes"] >= 1
            print(f"[autonat] community up and both verdicts known in {learned:.1f} s")

    asyncio.run(scenario())


async def _is(value: Any, wanted: str) -> bool:
    return bool(await value == wanted)
