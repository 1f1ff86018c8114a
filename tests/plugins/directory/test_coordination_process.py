"""A server and members as a self-hoster runs them: real `united` processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from conftest import run_cli, united_cmd
from support import free_port, serving_node

from united_core.testing import on_loopback, poll


def server_dir(tmp_path: Path) -> Path:
    assert run_cli("init", "--role", "server", "--dir", str(tmp_path / "server")).returncode == 0
    config = tmp_path / "server" / "united.toml"
    text = config.read_text().replace('"/ip4/0.0.0.0/tcp/7420"', '"/ip4/127.0.0.1/tcp/0"')
    text = text.replace(
        "[directory]\n", f'[directory]\nlisten_host = "127.0.0.1"\nlisten_port = {free_port()}\n', 1
    )
    config.write_text(text)
    return config


def who(config: Path, channel: str) -> list[dict[str, Any]] | None:
    result = run_cli("ctl", "-c", str(config), "who", channel, "--json")
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_members_join_by_invite_and_sessions_survive_a_server_restart(tmp_path: Path) -> None:
    server = server_dir(tmp_path)
    with serving_node(server) as server_proc:
        created = run_cli("channel", "create", "general", "-c", str(server))
        assert created.returncode == 0 and "general" in created.stdout
        members = []
        for name in ("alice", "bob"):
            invite = run_cli("invite", "-c", str(server))
            assert invite.returncode == 0
            join_line = invite.stdout.strip().splitlines()[-1]
            assert re.fullmatch(
                r"united join ws://127\.0\.0\.1:\d+/ws \S+ --name NAME --dir \S+", join_line
            )
            _, _, url, code, *_ = join_line.split()
            joined = run_cli("join", url, code, "--dir", str(tmp_path / name), "--name", name)
            assert joined.returncode == 0, joined.stderr
            members.append(tmp_path / name / "united.toml")
            on_loopback(members[-1])  # the only edit: tests talk to loopback only
        # A used invite is refused, with one line and exit 1.
        again = run_cli("join", url, code, "--dir", str(tmp_path / "eve"), "--name", "eve")
        assert again.returncode == 1 and "INVITE_INVALID" in again.stderr
        assert "Traceback" not in again.stderr

        # Both clients run side by side, unedited (ephemeral ports, own sockets and data).
        with serving_node(members[0]), serving_node(members[1]):
            for config in members:
                result = run_cli("ctl", "-c", str(config), "join", "general")
                assert result.returncode == 0 and "general" in result.stdout
            online = poll(lambda: (w := who(members[0], "general")) and len(w) == 2 and w)
            assert {m["name"] for m in online} == {"alice", "bob"}
            assert all(m["addrs"] for m in online)

            # Restart the server process; both sessions come back by themselves.
            server_proc.send_signal(signal.SIGTERM)
            assert server_proc.wait(timeout=10) == 0
            assert who(members[0], "general") is None  # the server is unreachable
            # Its output to a file: an unread pipe fills up and blocks the server.
            log = (tmp_path / "restarted-server.log").open("w")
            restarted = subprocess.Popen(
                united_cmd("run", "-c", str(server)), stdout=log, stderr=subprocess.STDOUT
            )
            try:
                online = poll(
                    lambda: (w := who(members[1], "general")) and len(w) == 2 and w, timeout=40
                )
                assert {m["name"] for m in online} == {"alice", "bob"}
                left = run_cli("ctl", "-c", str(members[1]), "leave", "general", "--json")
                assert left.returncode == 0 and json.loads(left.stdout) == []
                unknown = run_cli("ctl", "-c", str(members[1]), "join", "no-such-channel")
                assert unknown.returncode == 1
                assert unknown.stderr == "united: no channel 'no-such-channel'\n", unknown.stderr
            finally:
                restarted.send_signal(signal.SIGTERM)
                assert restarted.wait(timeout=10) == 0
                log.close()
