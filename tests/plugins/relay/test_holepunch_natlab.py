"""Hole punching (DCUtR, ``relay-client``'s ``holepunch.py``) in the NAT lab
(tests/natlab.py), with real ``united run`` processes (``natlab.natlab_community``):
the server on the lab's internet, alice and bob each behind a home router.

- Two endpoint-independent ("eim", port-preserving) NATs: the members meet
  through the relay, the side that received the relayed connection punches once,
  and they end with a direct connection (the relayed one closed); the server then
  stops and they keep talking, both ways.
- Two symmetric NATs: the one attempt fails, they stay relayed, messages flow both
  ways, and no new attempt follows for 10 s (a minute would show it better; too
  long for CI). The relay's side is checked there too: both members reserved with
  `mode = "auto"` (only private addresses), announced the server's relayed
  address, and the server counts the circuit and its bytes.

Prints ``[natlab]`` timings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from natlab import SERVER, NatLab, natlab_community, relayed_ids
from netns import CHANNEL, NsNode, connected_ids, peer_id, plugin_stats, texts, wait_for

pytestmark = [pytest.mark.natlab, pytest.mark.slow, pytest.mark.timeout(90)]

QUIET_S = 60  # watched for flapping after the failure (the "over a minute")
EXCHANGE_EVERY_S = 15  # messages both ways this often meanwhile


def direct_ids(node: NsNode) -> set[str]:
    return {r["peer_id"] for r in node.try_ctl("peers") or [] if r.get("relayed") is False}


def relayed_since(node: NsNode, peer: str) -> object:
    """When ``node``'s relayed connection to ``peer`` was made (a new one: a flap)."""
    rows = [r for r in node.try_ctl("peers") or [] if r.get("peer_id") == peer and r.get("relayed")]
    return rows[0].get("connected_since") if rows else None


def punch_figures(*nodes: NsNode) -> dict[str, int]:
    """The members' hole-punch counters, added up."""
    total: dict[str, int] = {}
    for node in nodes:
        stats: dict[str, Any] = plugin_stats(node, "relay-client")
        for key in ("punch_attempts", "punch_successes", "punch_failures", "relayed_in"):
            total[key] = total.get(key, 0) + int(stats.get(key) or 0)
        total["relayed_out"] = total.get("relayed_out", 0) + int(stats.get("relayed_out") or 0)
    return total


def exchange(alice: NsNode, bob: NsNode, tag: str, timeout: float = 15) -> float:
    """alice -> bob, then bob -> alice; the seconds it took."""
    started = time.monotonic()
    alice.ctl("send", CHANNEL, f"{tag}: hello bob")
    wait_for(lambda: f"{tag}: hello bob" in texts(bob, confirmed=False), timeout, f"{tag} at bob")
    bob.ctl("send", CHANNEL, f"{tag}: hello alice")
    wait_for(
        lambda: f"{tag}: hello alice" in texts(alice, confirmed=False), timeout, f"{tag} at alice"
    )
    return time.monotonic() - started


def test_members_behind_eim_nats_punch_a_direct_connection_that_outlives_the_server(
    tmp_path: Path,
) -> None:
    with NatLab(homes=("eim", "eim"), peer=False) as lab:
        server, members = natlab_community(lab, tmp_path)
        started = time.monotonic()
        alice, bob = members["alice"], members["bob"]
        ids = {name: peer_id(node) for name, node in members.items()}
        wait_for(lambda: ids["bob"] in connected_ids(alice.try_ctl("peers")), 30, "alice-bob")
        connected = time.monotonic() - started
        alice.ctl("send", CHANNEL, "first: hello bob")
        wait_for(lambda: "first: hello bob" in texts(bob, confirmed=False), 15, "first at bob")
        first = time.monotonic() - started

        wait_for(
            lambda: ids["bob"] in direct_ids(alice) and ids["alice"] in direct_ids(bob),
            20,
            "a direct connection between alice and bob",
        )
        direct = time.monotonic() - started
        figures = punch_figures(alice, bob)
        # They met through the relay (no direct path between the homes), and one of
        # them (the one that received the relayed connection) punched, once.
        assert figures["relayed_in"] >= 1 and figures["relayed_out"] >= 1, figures
        assert figures["punch_attempts"] == 1 and figures["punch_successes"] == 1, figures
        initiator = next(
            n for n in (alice, bob) if plugin_stats(n, "relay-client").get("punch_attempts")
        )
        other = bob if initiator is alice else alice
        stats = plugin_stats(initiator, "relay-client")
        assert stats["punched_peers"] == [ids[other.name]], stats
        upgrade_ms = stats["punch_last_ms"]
        # The relayed leg is closed; only the direct connection remains.
        wait_for(
            lambda: not relayed_ids(alice) & {ids["bob"]} and not relayed_ids(bob) & {ids["alice"]},
            10,
            "the relayed connection closed",
        )
        for node, peer in ((alice, "bob"), (bob, "alice")):
            rows = [r for r in node.ctl("peers") if r.get("peer_id") == ids[peer]]
            assert rows and all(r.get("relayed") is False for r in rows), rows
            assert [r.get("kind") for r in rows] == ["hole-punched"], rows  # ctl peers says so
            assert all(lab.wan("home1" if peer == "alice" else "home2") in str(r) for r in rows)
        exchange(alice, bob, "direct")

        server_id = peer_id(server)
        server.stop()  # SIGTERM: the relay and the directory go away
        gone = time.monotonic()
        wait_for(
            lambda: server_id not in connected_ids(alice.try_ctl("peers")),
            15,
            "alice sees the server gone",
        )
        after = exchange(alice, bob, "no server")
        assert ids["bob"] in direct_ids(alice) and ids["alice"] in direct_ids(bob)
        print(
            f"[natlab] hole punching, two eim NATs: members connected (relayed) {connected:.2f} s "
            f"after they started, first message delivered at {first:.2f} s, direct at "
            f"{direct:.2f} s (the punch itself {upgrade_ms} ms, {initiator.name} initiated); "
            f"server stopped, messages both ways {time.monotonic() - gone:.2f} s later "
            f"(exchange {after:.2f} s)"
        )


@pytest.mark.timeout(180)  # a minute of watching for flapping
def test_members_behind_symmetric_nats_try_once_and_stay_relayed(tmp_path: Path) -> None:
    with NatLab(homes=("symmetric", "symmetric"), peer=False) as lab:
        server, members = natlab_community(lab, tmp_path)
        started = time.monotonic()
        alice, bob = members["alice"], members["bob"]
        ids = {name: peer_id(node) for name, node in members.items()}
        wait_for(
            lambda: plugin_stats(server, "relay").get("reservations") == 2,
            20,
            "both members reserved on the server",
        )
        for node in (alice, bob):
            client = plugin_stats(node, "relay-client")
            assert client["mode"] == "auto" and client["reserved"], client
            assert client["addr"] == f"/ip4/{SERVER}/tcp/7420/p2p/{peer_id(server)}/p2p-circuit"
        wait_for(lambda: ids["bob"] in relayed_ids(alice), 30, "alice relayed to bob")
        connected = time.monotonic() - started
        wait_for(
            lambda: punch_figures(alice, bob)["punch_failures"] == 1,
            15,
            "the hole-punch attempt failed",
        )
        failed = time.monotonic() - started
        quiet_until = time.monotonic() + QUIET_S
        before = punch_figures(alice, bob)
        assert before["punch_attempts"] == 1 and before["punch_successes"] == 0, before
        took = exchange(alice, bob, "relayed")
        since = relayed_since(alice, ids["bob"]), relayed_since(bob, ids["alice"])
        # No flapping: no new attempt, the same relayed connection, no direct one, and
        # messages both ways all along.
        rounds, next_exchange = 0, time.monotonic() + EXCHANGE_EVERY_S
        while time.monotonic() < quiet_until:
            assert ids["bob"] in relayed_ids(alice) and ids["alice"] in relayed_ids(bob)
            assert ids["bob"] not in direct_ids(alice)
            assert (relayed_since(alice, ids["bob"]), relayed_since(bob, ids["alice"])) == since
            if time.monotonic() >= next_exchange:
                rounds += 1
                exchange(alice, bob, f"still relayed {rounds}")
                next_exchange = time.monotonic() + EXCHANGE_EVERY_S
            time.sleep(2)
        assert punch_figures(alice, bob) == before
        exchange(alice, bob, "still relayed at the end")
        assert punch_figures(alice, bob) == before
        figures = plugin_stats(server, "relay")
        assert figures["circuits"] >= 1 and figures["bytes_relayed"] > 0, figures
        assert figures["refused"]["connect"] == {}, figures
        errors = [plugin_stats(n, "relay-client").get("punch_last_error") for n in (alice, bob)]
        print(
            f"[natlab] hole punching, two symmetric NATs: relayed {connected:.2f} s after the "
            f"start, the one attempt failed at {failed:.2f} s ({[e for e in errors if e]}); "
            f"messages both ways over the relay in {took:.2f} s; over the next {QUIET_S} s one "
            f"relayed connection each way, no new attempt, {rounds + 1} more exchanges"
        )
