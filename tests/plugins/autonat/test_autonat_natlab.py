"""AutoNAT in the NAT lab (tests/natlab.py), with real ``united run`` processes.

The server (203.0.113.10) runs its preset, as a self-hoster does (``autonat``
included); carol is a member at home behind an endpoint-independent NAT (10.1.0.10
behind 203.0.113.11); pat is a member on a public address (the lab's "peer",
203.0.113.20). Both run the client preset (``autonat-client``), nothing configured.

- pat is ``public``: the server dialed him back;
- carol is ``private``: her addresses are not where the server sees her come from;
  her NAT is ``endpoint-independent`` (see below);
- carol claiming her router's address with her own port (what py-libp2p's AutoNAT
  reports public, as she is connected) is dialed on a fresh connection, the router
  drops it: a dial error, still ``private``, and her connection to the server stays.

NAT kinds (a second lab): carol behind an endpoint-independent router, dave behind a
symmetric one, pat on a public address. The server's preset observes on its default
ports (7422 and 7423, inside its namespace): carol's two observations of her listen
port come from her router's address with one port (``endpoint-independent``), dave's
with two (``symmetric``); pat is public, so ``none``. ``ctl status`` says so, and
presence carries it to the others.

Prints ``[natlab]`` lines with their timings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from natlab import SERVER, NatLab
from netns import CHANNEL, WS_PORT, NsNode, wait_for

from united_core.testing import add_to_table

pytestmark = [pytest.mark.natlab, pytest.mark.timeout(60)]  # about 15-20 s alone


def community(lab: NatLab, base: Path, members: dict[str, str]) -> tuple[NsNode, dict[str, NsNode]]:
    """The server in host "server" and ``members`` (lab host -> name), joined as users do."""
    assert (
        lab.united("server", "init", "--role", "server", "--dir", str(base / "server")).returncode
        == 0
    )
    config = base / "server" / "united.toml"
    add_to_table(config, "directory", f'public_url = "ws://{SERVER}:{WS_PORT}/ws"')
    server = lab.node("server", "server", config)
    server.start()
    server.ctl("channel-create", CHANNEL)
    nodes = {}
    for host, name in members.items():
        invite = server.ctl("invite")
        joined = lab.united(
            host, "join", invite["url"], invite["code"], "--dir", str(base / name), "--name", name
        )
        assert joined.returncode == 0, joined.stderr
        node = lab.node(host, name, base / name / "united.toml")
        node.start()
        nodes[name] = node
    return server, nodes


def reachability(node: NsNode) -> Any:
    status = node.try_ctl("status") or {}
    return status.get("reachability"), status.get("nat")


def test_a_member_behind_nat_is_private_one_on_a_public_address_public(tmp_path: Path) -> None:
    started = time.monotonic()
    with NatLab(homes=("eim",)) as lab:
        server, nodes = community(lab, tmp_path, {"home1": "carol", "peer": "pat"})
        carol, pat = nodes["carol"], nodes["pat"]
        up = time.monotonic() - started
        wait_for(lambda: reachability(pat) == ("public", "none"), 15, "pat public")
        carol_is = ("private", "endpoint-independent")  # her router keeps her port
        wait_for(lambda: reachability(carol) == carol_is, 15, "carol private")
        known = time.monotonic() - started

        shown = carol.ctl("reachability")["probe"]
        assert shown["observed"].startswith(f"/ip4/{lab.wan('home1')}/tcp/"), shown
        assert {r["code"] for r in shown["results"]} == {"other-ip"}, shown
        assert any(r["addr"].startswith("/ip4/10.1.0.10/") for r in shown["results"])
        pat_probe = pat.ctl("reachability")["probe"]
        assert any(
            r["status"] == "OK" and r["verified"] and r["addr"].startswith("/ip4/203.0.113.20/")
            for r in pat_probe["results"]
        ), pat_probe

        # carol claims her router's address with her own listen port.
        port = next(
            a.split("/tcp/")[1] for a in carol.ctl("status")["announce_addrs"] if "10.1.0.10" in a
        )
        claim = f"/ip4/{lab.wan('home1')}/tcp/{port}"
        server_id = server.ctl("status")["peer_id"]
        probe_started = time.monotonic()
        checked = carol.ctl("reachability", "probe", claim)["probe"]
        probe_took = time.monotonic() - probe_started
        [row] = checked["results"]
        assert row["status"] == "DIAL_ERROR" and not row["verified"], checked
        assert checked["verdict"] == "private", checked
        assert reachability(carol) == carol_is  # a check of an address changes nothing
        peers = carol.ctl("peers")
        assert any(p["peer_id"] == server_id and p.get("connected", True) for p in peers), peers
        figures = server.ctl("snapshot")["plugins"]["autonat"]
        assert figures["dials"].get("OK", 0) >= 1 and figures["dials"]["DIAL_ERROR"] >= 1
    used = time.monotonic() - started
    print(
        f"[natlab] autonat: community up in {up:.1f} s, verdicts known {known - up:.1f} s later;"
        f" router-address claim refused by the NAT in {probe_took:.1f} s; total {used:.1f} s"
    )


def test_members_learn_their_nat_kind_from_the_servers_observations(tmp_path: Path) -> None:
    started = time.monotonic()
    with NatLab(homes=("eim", "symmetric")) as lab:
        server, nodes = community(lab, tmp_path, {"home1": "carol", "home2": "dave", "peer": "pat"})
        carol, dave, pat = nodes["carol"], nodes["dave"], nodes["pat"]
        up = time.monotonic() - started
        status: dict[str, Any] = {}

        def kind(name: str) -> tuple[str | None, str | None]:
            status[name] = nodes[name].try_ctl("status") or {}
            return status[name].get("reachability"), status[name].get("nat")

        wait_for(lambda: kind("carol") == ("private", "endpoint-independent"), 15, "carol")
        wait_for(lambda: kind("dave") == ("private", "symmetric"), 15, "dave")
        wait_for(lambda: kind("pat") == ("public", "none"), 15, "pat")
        known = time.monotonic() - started

        # What each observation saw: carol's router keeps her port, dave's picks two.
        def observation(node: NsNode) -> dict[str, Any]:
            found: dict[str, Any] = node.ctl("reachability")["probe"]["observation"]
            return found

        carol_seen, dave_seen = observation(carol), observation(dave)
        carol_port = carol_seen["local"].rsplit(":", 1)[1]
        assert carol_seen["local"] == f"{lab.address('home1')}:{carol_port}", carol_seen
        assert carol_seen["seen"] == [f"{lab.wan('home1')}:{carol_port}"] * 2, carol_seen
        assert dave_seen["local"].startswith(f"{lab.address('home2')}:"), dave_seen
        [first, second] = dave_seen["seen"]
        assert first != second and first.startswith(f"{lab.wan('home2')}:"), dave_seen
        assert second.startswith(f"{lab.wan('home2')}:")
        assert carol_seen["ports"] == dave_seen["ports"] == [7422, 7423]
        assert "observation" not in pat.ctl("reachability")["probe"]  # public: nothing to ask
        figures = server.ctl("snapshot")["plugins"]["autonat"]["observe"]
        assert figures["ports"] == [7422, 7423] and figures["answered"] >= 4, figures

        # Presence in a channel carries each kind to the others (pat's panel shows them).
        for node in nodes.values():
            node.ctl("join", CHANNEL)

        def seen_by_pat() -> tuple[str | None, str | None]:
            snapshot = pat.try_ctl("snapshot") or {}
            peer_nat = snapshot.get("plugins", {}).get("discovery", {}).get("peer_nat", {})
            return peer_nat.get(status["carol"]["peer_id"]), peer_nat.get(status["dave"]["peer_id"])

        wait_for(lambda: seen_by_pat() == ("private eim", "private sym"), 10, "presence")
    used = time.monotonic() - started
    print(
        f"[natlab] autonat NAT kinds: community up in {up:.1f} s, eim/symmetric/public known"
        f" {known - up:.1f} s later; total {used:.1f} s"
    )
