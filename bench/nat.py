"""Members behind NAT, in the NAT lab: time to meet through the relay, time to the
direct upgrade, and hole-punch success over NAT combinations (issue 12).

Real `united run` processes in network namespaces (tests/natlab.py, as root; needs
`ip`, `nft`, `conntrack`): the server on the lab's internet (203.0.113.10, its
preset), alice and bob each behind a home router of the given kind ("eim":
endpoint-independent, port-preserving; "symmetric": a new port per flow). For each
combination and run: seconds from the members' start until they are connected
(through the relay), until alice's first message is at bob, and until a direct
connection replaces the relayed one (hole punching: when the initiator's attempt
ended, by its own clock, ``punch_last_at``), or the failed attempt; and the NAT kind
each member learnt from the server (AutoNAT's observation ports) and when.

Usage (root): python bench/nat.py [--runs 3] [--combos eim/eim,eim/symmetric,symmetric/symmetric]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "plugins" / "relay"))

from natlab import NatLab, natlab_community, natlab_unavailable  # noqa: E402
from netns import CHANNEL, connected_ids, peer_id, texts, wait_for  # noqa: E402
from test_holepunch_natlab import direct_ids, punch_figures  # noqa: E402


def punch_ended(node: Any) -> float | None:
    """When ``node``'s last hole-punch attempt ended (epoch seconds), if it made one."""
    plugins = (node.try_ctl("snapshot") or {}).get("plugins", {})
    at = plugins.get("relay-client", {}).get("punch_last_at")
    return float(at) if at is not None else None


def one_run(homes: tuple[str, str], base: Path) -> dict[str, Any]:
    with NatLab(homes=homes, peer=False) as lab:
        _server, members = natlab_community(lab, base)
        started, started_wall = time.monotonic(), time.time()
        alice, bob = members["alice"], members["bob"]
        ids = {name: peer_id(node) for name, node in members.items()}
        wait_for(lambda: ids["bob"] in connected_ids(alice.try_ctl("peers")), 30, "alice-bob")
        connected = time.monotonic() - started
        alice.ctl("send", CHANNEL, "first")
        wait_for(lambda: "first" in texts(bob, confirmed=False), 15, "first message at bob")
        first = time.monotonic() - started
        wait_for(
            lambda: (p := punch_figures(alice, bob))["punch_successes"] + p["punch_failures"] >= 1,
            20,
            "the hole-punch attempt to end",
        )
        kinds: dict[str, tuple[str, float]] = {}

        def kinds_known() -> bool:
            """Each member's kind, and when its probe concluded after the node was up."""
            for name, node in members.items():
                status = node.try_ctl("status") or {}
                up_since = time.time() - float(status.get("uptime_s") or 0)
                plugins = (node.try_ctl("snapshot") or {}).get("plugins", {})
                last = plugins.get("autonat-client", {}).get("last") or {}
                nat = status.get("nat")
                if name not in kinds and nat not in (None, "unknown") and last.get("at"):
                    done = float(last["at"]) + float(last.get("ms") or 0) / 1000
                    kinds[name] = (str(nat), done - up_since)
            return len(kinds) == len(members)

        figures = punch_figures(alice, bob)
        direct = None
        if figures["punch_successes"]:  # when the initiator's attempt ended (its clock)
            wait_for(lambda: ids["bob"] in direct_ids(alice), 10, "the direct connection")
            ended = [punch_ended(node) for node in (alice, bob)]
            direct = max(t for t in ended if t is not None) - started_wall
        wait_for(kinds_known, 20, "both members' NAT kinds")
        return {
            "connected": connected,
            "first": first,
            "direct": direct,
            "met_relayed": figures["relayed_out"] >= 1,
            "attempts": figures["punch_attempts"],
            "kinds": kinds,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--combos", default="eim/eim,eim/symmetric,symmetric/symmetric")
    args = parser.parse_args()
    reason = natlab_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    combos = [tuple(c.split("/")) for c in args.combos.split(",")]
    summary = []
    for homes in combos:
        results = []
        for run in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory() as tmp:
                r = one_run((homes[0], homes[1]), Path(tmp))
            results.append(r)
            direct = f"{r['direct']:.2f} s" if r["direct"] is not None else "stayed relayed"
            print(
                f"{homes[0]}/{homes[1]} run {run}/{args.runs}: connected {r['connected']:.2f} s "
                f"(through the relay: {r['met_relayed']}), first message {r['first']:.2f} s, "
                f"direct: {direct}, attempts {r['attempts']}; NAT kinds "
                + ", ".join(
                    f"{n} {k} (known {max(t, 0.0):.1f} s after its node was up)"
                    for n, (k, t) in r["kinds"].items()
                )
            )
        ok = [r["direct"] for r in results if r["direct"] is not None]
        summary.append(
            (
                f"{homes[0]}/{homes[1]}",
                statistics.median(r["connected"] for r in results),
                statistics.median(r["first"] for r in results),
                statistics.median(ok) if ok else None,
                f"{len(ok)}/{len(results)}",
                sum(r["attempts"] for r in results) / len(results),
            )
        )
    print(f"\nmedians over {args.runs} runs (seconds from the members' start):")
    print("  NATs                 connected  first msg  direct   punched  attempts/run")
    for name, conn, first, direct, punched, attempts in summary:
        d = f"{direct:6.2f}" if direct is not None else "     -"
        print(f"  {name:<20} {conn:9.2f}  {first:9.2f}  {d}   {punched:>7}  {attempts:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
