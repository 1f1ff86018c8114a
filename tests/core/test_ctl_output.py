"""`united ctl` for people and for scripts, against real nodes: text without Python
reprs, `--json` for everything (errors too, with their codes), a human line and
exit 1 for an error, `--help` describing every command, and a `ctl tail` that
ends cleanly when its node stops."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from united_core.api import render_value
from united_core.cli import main as cli_main
from united_core.containers import collect_commands
from united_core.control import ControlClientError
from united_core.node import Node
from united_core.testing import (
    SERVER_LOOPBACK,
    NodeProcess,
    call,
    make_node_dir,
    poll,
    running_community,
)

# What a Python dict, list or string repr looks like in text meant for people.
REPR = re.compile(r"[{}]|\['|'\]|': |\": ")
# Commands not run here: they stop the node, change its key or need a test setting.
SIDE_EFFECTS = {"stop", "rotate-key", "member-remove", "send-invalid", "connect"}
# A member's commands with arguments describe them (`help NAME`), but for these,
# whose usage line alone explains them so far; every command shows its one-line help.
ARGUMENTS_UNDESCRIBED = {"reachability"}


def _args(command: str, c: Any) -> list[str]:
    bob = c.members["bob"].identity.peer_id
    return {
        "ping": [bob],
        "who": ["general"],
        "history": ["general"],
        "send": ["general", "hello from the test"],
        "send-test": ["general"],
        "join": ["general"],
        "leave": ["random"],
        "help": [],
        "complete": ["join"],
        "channel-create": ["fresh"],
        "reconnect": [],
    }.get(command, [])


async def _texts(node: Node, c: Any) -> dict[str, str]:
    """Each command's real result on ``node``, rendered as `ctl` renders it."""
    shown = {}
    for name, command in sorted(collect_commands(node.pm).items()):
        if name in SIDE_EFFECTS or command.streaming:
            continue
        try:
            result = await call(node, name, *_args(name, c))
        except ControlClientError:
            continue  # a refusal is an error line, tested below
        shown[name] = command.render(result) if command.render else render_value(result)
    return shown


def test_ctl_text_has_no_reprs_and_errors_are_one_human_line(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_community(
            tmp_path, ("alice", "bob"), channels=("general", "random")
        ) as c:
            await call(c.members["bob"], "send", "general", "hi alice")
            # Every command of a member and of the server, rendered from its real result.
            for node in (c.members["alice"], c.server):
                for name, text in (await _texts(node, c)).items():
                    assert text.strip(), name
                    assert not REPR.search(text), f"{name}:\n{text}"
            member = await _texts(c.members["alice"], c)
            assert {"topics", "snapshot", "scores", "status", "channels", "who"} <= set(member)
            # And through `united ctl`, as people run it.
            topics = await c.ctl("alice", "topics")
            assert topics.returncode == 0 and "#general" in topics.stdout, topics
            assert topics.stdout.splitlines()[0].split()[:3] == ["CHANNEL", "MESH", "PEERS"]
            for command in ("topics", "snapshot", "scores", "status", "members"):
                shown = await c.ctl("alice", command)
                assert shown.returncode == 0, shown.stderr
                assert not REPR.search(shown.stdout), f"{command}:\n{shown.stdout}"
            snapshot = await c.ctl("alice", "snapshot")
            assert "plugins:" in snapshot.stdout and "mesh:" in snapshot.stdout
            # An error: one line for people, exit 1, no internal code ...
            refused = await c.ctl("alice", "join", "no-such-channel")
            assert refused.returncode == 1 and refused.stdout == ""
            assert refused.stderr == "united: no channel 'no-such-channel'\n", refused.stderr
            # ... which --json keeps, for scripts.
            as_json = await c.ctl("alice", "join", "no-such-channel", "--json")
            assert as_json.returncode == 1
            assert as_json.json() == {
                "error": {
                    "code": "bad_request",
                    "message": "no channel 'no-such-channel'",
                    "detail": "ERROR_CODE_UNKNOWN_CHANNEL",
                }
            }
            unknown = await c.ctl("alice", "nonsense", "--json")
            assert unknown.returncode == 1 and unknown.json()["error"]["code"] == "unknown_command"

    asyncio.run(scenario())


@pytest.mark.parametrize("role", ["client", "server"])
def test_every_ctl_command_has_a_described_help(
    tmp_path: Path, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`united ctl NAME --help` describes NAME, no node needed (none runs here)."""
    # A member's config names its server (none runs: `--help` needs no node).
    extra = '[discovery]\nserver_url = "ws://127.0.0.1:9/ws"\n' if role == "client" else ""
    config = make_node_dir(tmp_path, role=role, plugins=None, extra=extra)
    capsys.readouterr()
    from united_core.node import load_settings

    commands = collect_commands(load_settings(config)[1])
    assert len(commands) > 10
    for name, command in commands.items():
        assert cli_main(["ctl", "-c", str(config), name, "--help"]) == 0, name
        out = capsys.readouterr().out
        assert out.startswith(f"usage: united ctl -c CONFIG {name}"), out
        assert command.help and command.help in out, out
        if command.usage:
            assert command.usage in out.splitlines()[0], out
            if role == "client" and name not in ARGUMENTS_UNDESCRIBED:
                assert command.description, f"{name} takes arguments: describe them"
        if command.description:
            assert command.description in out, out


def test_stopping_a_node_with_ctl_tail_attached_logs_no_traceback(tmp_path: Path) -> None:
    config = make_node_dir(tmp_path, "server", "server", plugins=None, extra=SERVER_LOOPBACK)
    node = NodeProcess("server", config)
    node.start()
    try:
        tail = subprocess.Popen(
            node.command("ctl", "-c", str(config), "tail"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Attached: the node's stream is open (the mesh counts the tail).
        poll(lambda: _tails(node) >= 1, timeout=15)
        assert node.ctl("stop") == "stopping"
        assert node.proc is not None and node.proc.wait(timeout=10) == 0
        _, err = tail.communicate(timeout=10)
        assert tail.returncode == 0, err
        assert err == "united: the stream ended: the node is stopping\n", err
    finally:
        node.stop()
    log = node.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log, log


def _tails(node: NodeProcess) -> int:
    snapshot = node.try_ctl("snapshot") or {}
    return int(snapshot.get("plugins", {}).get("mesh", {}).get("tails", 0))
