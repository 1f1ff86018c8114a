"""Time to heal, on distinct addresses (issue 11): median over several runs per case.

Real `united run` processes in network namespaces (tests/netns.py's Lab, as root):
a server on 198.51.100.1, members alice (.2) and bob (.3), one channel.

- server restart: the server stops and starts again; time from it listening until
  every member's `ctl peers` shows it connected again;
- member restart: alice stops and starts again; time from her listening until the
  server and bob show her connected again;
- link cut 20 s: bob's cable is pulled for 20 s while alice sends a message every
  2 s, then plugged back; time from the restore until bob is connected again, and
  until every message sent meanwhile is confirmed in his `ctl history`;
- missed while connected: bob's libp2p traffic is dropped, his WebSocket works;
  time from the archive holding alice's messages until bob has them confirmed
  (the channel-head push);
- restart during an outage: the server is down, bob restarts; time from his
  start until alice is connected to him again, and from the server listening
  again until bob has every message confirmed;
- key rotation: alice rotates her key; time from her listening under the new
  PeerId until bob is connected to it.

Usage (root, Linux, `ip`): python bench/heal.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "plugins" / "reconnect"))

from netns import Lab, community, connected_ids, netns_unavailable, peer_id, wait_for  # noqa: E402
from test_heal_netns import link_cut, member_restart  # noqa: E402
from test_outage_netns import (  # noqa: E402
    missed_while_connected,
    restart_during_outage,
    rotate_while_meshed,
)


def server_restart(lab: Lab, base: Path) -> dict[str, float]:
    server, members = community(lab, base)
    server_id = peer_id(server)
    for member in members:
        wait_for(lambda m=member: server_id in connected_ids(m.try_ctl("peers")), 15, "dial")
    assert server.stop() == 0
    for member in members:
        wait_for(lambda m=member: server_id not in connected_ids(m.try_ctl("peers")), 10, "down")
    server.start()
    listening = time.monotonic()
    back: dict[str, float] = {}

    def all_back() -> bool:
        for member in members:
            if member.name not in back and server_id in connected_ids(member.try_ctl("peers")):
                back[member.name] = time.monotonic() - listening
        return len(back) == len(members)

    wait_for(all_back, 30, f"every member reconnected to the server (so far {back})")
    return back


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    reason = netns_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    samples: dict[str, list[float]] = {
        "server restart: all members reconnected": [],
        "member restart: server and member reconnected": [],
        "link cut 20 s: reconnected after restore": [],
        "link cut 20 s: every missed message confirmed": [],
        "missed while connected: confirmed after the head moved": [],
        "restart during an outage: redialed by alice": [],
        "restart during an outage: all confirmed once the server is back": [],
        "key rotation: bob connected to the new PeerId": [],
    }
    keys = list(samples)
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            with Lab(hosts=3) as lab:
                samples[keys[0]].append(max(server_restart(lab, Path(tmp) / "s").values()))
            with Lab(hosts=3) as lab:
                samples[keys[1]].append(max(member_restart(lab, Path(tmp) / "m").values()))
            with Lab(hosts=3) as lab:
                healed = link_cut(lab, Path(tmp) / "c")
                samples[keys[2]].append(healed["connected"])
                samples[keys[3]].append(healed["history"])
            with Lab(hosts=3) as lab:
                samples[keys[4]].append(missed_while_connected(lab, Path(tmp) / "h")["took"])
            with Lab(hosts=3) as lab:
                outage = restart_during_outage(lab, Path(tmp) / "o")
                samples[keys[5]].append(outage["reconnected"])
                samples[keys[6]].append(outage["bob"])
            with Lab(hosts=3) as lab:
                samples[keys[7]].append(rotate_while_meshed(lab, Path(tmp) / "r")["took"]["bob"])
        print(f"run {run}/{args.runs}: " + ", ".join(f"{v[-1]:.2f} s" for v in samples.values()))

    print(f"\nmedian time to heal over {args.runs} runs (seconds):")
    width = max(map(len, samples))
    for case, values in samples.items():
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {case:<{width}}  {statistics.median(values):6.2f}   ({spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
