"""docs/operator.md followed literally on a "VPS" with members on other addresses.

Network namespaces (tests/netns.py): the server on 198.51.100.1 set up with the
guide's commands (`united init --role server --public-host ADDR --self-signed`,
its preset otherwise unchanged: libp2p and the WebSocket on every interface),
members on .2 and .3 running the join command the invite printed, as printed,
from their own directories. The community works over wss:// with the pinned
self-signed certificate.
"""

from __future__ import annotations

import shlex
import sys
import time
import tomllib
from pathlib import Path

import pytest
from netns import Lab, texts, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(150)]


def test_the_operator_guide_gives_a_working_tls_community(tmp_path: Path) -> None:
    with Lab(hosts=3) as lab:
        address = lab.address(1)
        made = lab.united(
            1, "init", "--role", "server", "--dir", str(tmp_path / "server"),
            "--public-host", address, "--self-signed",
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        config = tmp_path / "server" / "united.toml"
        assert tomllib.loads(config.read_text())["directory"]["public_url"] == (
            f"wss://{address}:7421/ws"
        )
        server = lab.node(1, "server", config)
        server.start()
        assert "[directory] public_url" not in server.log.read_text()  # no warning: usable
        created = lab.united(1, "channel", "create", "general", "-c", str(config))
        assert created.returncode == 0, created.stderr

        members = []
        for index, name in enumerate(("alice", "bob"), start=2):
            invite = lab.united(1, "invite", "-c", str(config), "--name", name)
            assert invite.returncode == 0 and invite.stderr == "", invite.stderr
            words = shlex.split(invite.stdout.strip().splitlines()[-1])
            assert words[:3] == ["united", "join", f"wss://{address}:7421/ws"]
            assert "--tls-fingerprint" in words
            home = tmp_path / f"{name}-home"
            home.mkdir()
            # The printed line, run as printed from the member's own directory.
            joined = lab.run(index, "env", "-C", str(home), sys.executable, "-m", "united_core",
                             *words[1:])  # fmt: skip
            assert joined.returncode == 0, joined.stderr
            member = lab.node(index, name, home / "united-member" / "united.toml")
            member.start()
            member.ctl("join", "general")
            members.append(member)

        wait_for(lambda: (w := members[0].try_ctl("who", "general")) and len(w) == 2, 20, "who")
        text = f"hello from {lab.address(2)} {time.time_ns()}"
        members[0].ctl("send", "general", text)
        wait_for(lambda: text in texts(members[1]), 20, "bob got alice's message, confirmed")
        status = members[1].ctl("status")
        assert f"wss://{address}:7421/ws" in str(status)
