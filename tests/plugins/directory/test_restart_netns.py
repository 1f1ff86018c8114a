"""A server restart strands nobody, on distinct addresses (issue 11, deliverables 2-3).

Real `united run` processes in network namespaces (tests/netns.py): the server on
198.51.100.1 listening on 0.0.0.0 as a self-hoster runs it, members on .2 and .3.
On loopback a node announcing ``0.0.0.0`` happens to work; here it does not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from netns import Lab, community, connected_ids, texts, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(150)]


def test_no_wildcard_is_announced_or_dialled(tmp_path: Path) -> None:
    with Lab(hosts=3) as lab:
        server, members = community(lab, tmp_path)
        server_id = server.ctl("status")["peer_id"]
        for member in members:
            wait_for(lambda m=member: server_id in connected_ids(m.try_ctl("peers")), 10, "dial")
        online = wait_for(
            lambda: (w := members[0].try_ctl("who", "general")) and len(w) == 2 and w, 10, "who"
        )
        addrs = [a for m in online for a in m["addrs"]]
        assert addrs and not any("0.0.0.0" in a for a in addrs), addrs
        assert {a.split("/")[2] for a in addrs} == {lab.host(2).address, lab.host(3).address}
        # The server's addresses, as the member stored them: concrete, the server's.
        cache = json.loads((tmp_path / "alice" / "data" / "directory-cache.json").read_text())
        assert cache["server_addrs"] and not any("0.0.0.0" in a for a in cache["server_addrs"])
        assert all(f"/ip4/{lab.host(1).address}/" in a for a in cache["server_addrs"])


def test_server_restart_every_member_back_within_10_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    with Lab(hosts=3) as lab:
        server, members = community(lab, tmp_path)
        server_id = server.ctl("status")["peer_id"]
        for member in members:
            wait_for(lambda m=member: server_id in connected_ids(m.try_ctl("peers")), 10, "dial")

        assert server.stop() == 0
        for member in members:  # the connection really went away
            wait_for(
                lambda m=member: server_id not in connected_ids(m.try_ctl("peers")), 10, "down"
            )

        launched = time.monotonic()
        server.start()  # returns once `ctl status` answers: the host listens
        listening = time.monotonic()
        back: dict[str, float] = {}

        def all_back() -> bool:
            for member in members:
                if member.name not in back and server_id in connected_ids(member.try_ctl("peers")):
                    back[member.name] = time.monotonic() - listening
            return len(back) == len(members)

        wait_for(all_back, 10, f"every member reconnected to the server (so far {back})")

        text = f"after the restart {time.time_ns()}"
        members[0].ctl("send", "general", text)
        wait_for(lambda: text in texts(members[1], confirmed=False), 10, "delivery")
        delivered = time.monotonic() - listening
        with capsys.disabled():
            print(
                f"\n[issue 11] server restart: start-up {listening - launched:.2f} s; members "
                f"reconnected "
                + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(back.items()))
                + f" after it listened; alice->bob message in {delivered:.2f} s; "
                f"whole test {time.monotonic() - started:.1f} s"
            )
        assert max(back.values()) <= 10
