"""The NAT lab (tests/natlab.py) behaves like home routers (issue 12).

Plain Python sockets in lab hosts (tests/natlab.py's probes), no united nodes:

- a member behind either NAT reaches the server, which sees the router's address;
- unsolicited inbound traffic to a router is dropped silently (a timeout, no RST);
- "eim" keeps the member's port for every destination, "symmetric" does not, and a
  home's kind can be switched live: the lab classifies mapping behaviour;
- TCP simultaneous open (what DCUtR hole punching does) works between two eim homes
  and fails when either side is symmetric;
- pulling and plugging cables works, and the lab leaves nothing behind, even when the
  test fails, and changes nothing in the host's namespace.

Each test prints a ``[natlab] ...`` line with its timings.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from natlab import PEER, SERVER, NatLab, classify, dial, natlab_unavailable, punch, serve
from netns import wait_for

pytestmark = [pytest.mark.natlab, pytest.mark.timeout(30)]

PORT = 7000  # the probe servers' port (namespaces have their own ports: parallel-safe)


def seen(row: dict[str, Any]) -> tuple[str, int]:
    address, port = row["seen"].rsplit(":", 1)
    return address, int(port)


def test_members_reach_the_server_from_their_routers_address() -> None:
    started = time.monotonic()
    with NatLab(homes=("eim", "symmetric")) as lab:
        built = time.monotonic() - started
        serve(lab, "server", PORT)
        for home in ("home1", "home2"):
            [row] = dial(lab, home, f"{SERVER}:{PORT}")
            assert row["result"] == "ok" and row["echo"], row
            address, _ = seen(row)
            assert address == lab.wan(home) != lab.address(home), row
            assert not address.startswith("10."), row
        # Nothing routes out of the lab, nor from the internet into a home's LAN.
        [out] = dial(lab, "home1", "192.0.2.99:80", timeout=1)
        assert out["result"] != "ok", out
        [into] = dial(lab, "server", f"{lab.address('home2')}:{PORT}", timeout=1)
        assert into["result"] != "ok", into
        used = time.monotonic() - started
    print(f"[natlab] members reach the server via NAT: setup {built:.2f} s, total {used:.2f} s")


def test_unsolicited_inbound_traffic_is_dropped_silently() -> None:
    started = time.monotonic()
    with NatLab(homes=("eim", "symmetric")) as lab:
        for home in ("home1", "home2"):
            serve(lab, home, PORT)  # the members listen: a forwarded SYN would be answered
            [inside] = dial(lab, f"router{home[-1]}", f"{lab.address(home)}:{PORT}")
            assert inside["result"] == "ok", inside  # reachable from its own LAN
        # A mapping exists for home1's port 40001 (it dialled the server from it) ...
        serve(lab, "server", PORT)
        [out] = dial(lab, "home1", f"{SERVER}:{PORT}", local_port=40001)
        assert out["result"] == "ok", out
        probes = time.monotonic()
        for home in ("home1", "home2"):
            for port in (PORT, PORT + 1, 40001):  # ... yet a new flow to it is dropped too
                [row] = dial(lab, "server", f"{lab.wan(home)}:{port}", timeout=1)
                assert row["result"] == "timeout", (home, port, row)  # no RST, no ICMP
        waited = time.monotonic() - probes
        # A public host, by contrast, refuses a closed port at once.
        [refused] = dial(lab, "server", f"{PEER}:{PORT}", timeout=1)
        assert refused["result"] == "refused", refused
    used = time.monotonic() - started
    print(f"[natlab] inbound dropped: 6 probes timed out in {waited:.2f} s, total {used:.2f} s")


def test_eim_keeps_the_port_for_every_destination_symmetric_does_not() -> None:
    started = time.monotonic()
    with NatLab(homes=("eim", "symmetric")) as lab:
        serve(lab, "server", PORT)
        serve(lab, "peer", PORT)
        kind1, ports1 = classify(lab, "home1", 40001, PORT)
        kind2, ports2 = classify(lab, "home2", 40001, PORT)
        assert (kind1, ports1) == ("eim", [40001, 40001])  # endpoint-independent, preserved
        assert kind2 == "symmetric", ports2  # a new port per destination
        switch = time.monotonic()
        lab.set_nat("home1", "symmetric")
        lab.set_nat("home2", "eim")
        switched = time.monotonic() - switch
        assert "fully-random" in lab.ruleset("router1")
        assert "fully-random" not in lab.ruleset("router2")
        assert lab.nat == {"home1": "symmetric", "home2": "eim"}
        kind1, ports1 = classify(lab, "home1", 40002, PORT)
        kind2, ports2 = classify(lab, "home2", 40002, PORT)
        assert kind1 == "symmetric", ports1
        assert (kind2, ports2) == ("eim", [40002, 40002])
    used = time.monotonic() - started
    print(
        f"[natlab] mapping classified, kinds switched live in {switched:.2f} s; total {used:.2f} s"
    )


def test_tcp_simultaneous_open_works_between_eim_homes_only() -> None:
    started = time.monotonic()
    homes = ("eim", "eim", "symmetric", "symmetric", "eim", "symmetric")
    with NatLab(homes=homes, peer=False) as lab:
        pairs = [("home1", "home2"), ("home3", "home4"), ("home5", "home6")]
        eim, symmetric, mixed = punch(lab, *pairs, port=41000, tries=3, timeout=2, stagger=0.3)
    used = time.monotonic() - started
    assert [side["result"] for side in eim] == ["ok", "ok"], eim
    for pair in (symmetric, mixed):
        assert [side["result"] for side in pair] == ["timeout", "timeout"], pair
    print(
        f"[natlab] simultaneous open: eim/eim ok in {eim[0]['ms']} ms (tries {eim[0]['tries']}),"
        f" symmetric/symmetric and eim/symmetric failed after"
        f" {symmetric[0]['tries']} tries; total {used:.2f} s"
    )


def host_state() -> dict[str, Any]:
    """What the lab must not change in the host's namespace."""

    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout

    return {
        "links": sorted(
            line.split(":")[1].strip() for line in out("ip", "-o", "link").splitlines()
        ),
        "addrs": out("ip", "-o", "addr"),
        "routes": out("ip", "route"),
        "nft": out(shutil.which("nft") or "/usr/sbin/nft", "list", "ruleset"),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }


def test_cables_cut_and_restored_and_nothing_left_behind() -> None:
    if reason := natlab_unavailable():
        pytest.skip(reason)
    before = host_state()

    def reaches(home: str) -> bool:
        [row] = dial(lab, home, f"{SERVER}:{PORT}", timeout=1)
        return bool(row["result"] == "ok")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"), NatLab(homes=("eim", "eim")) as lab:
        names = lab.namespaces
        serve(lab, "server", PORT)
        assert reaches("home1") and reaches("home2")
        lab.cut("home1")
        assert not reaches("home1") and reaches("home2")
        lab.restore("home1")
        wait_for(lambda: reaches("home1"), 5, "home1 back")
        lab.cut("server")
        assert not reaches("home1") and not reaches("home2")
        lab.restore("server")
        wait_for(lambda: reaches("home1") and reaches("home2"), 5, "server back")
        raise RuntimeError("boom")  # cleanup happens on failure too
    used = time.monotonic() - started
    netns_after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not set(names) & {line.split()[0] for line in netns_after.splitlines() if line}
    assert host_state() == before
    print(f"[natlab] cables cut and restored, lab removed, host unchanged: {used:.2f} s")
