"""Admin commands: on the control API (``united ctl``) and as ``united invite`` /
``united channel``, which call the running server's control API."""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from united_core.api import CliCommand, CLIError, CliTools, CommandError, ControlCommand, NodeAPI

from .registry import RegistryError
from .service import DirectoryService

JOIN_DIR = "./united-member"
NAME_PLACEHOLDER = "NAME"


def _service(node: NodeAPI) -> DirectoryService:
    return node.require(DirectoryService)


async def _invite(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    if len(args) > 1:
        raise CommandError("usage: invite [NAME]")
    try:
        invite = await _service(node).create_invite(args[0] if args else None)
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    invite["join_command"] = join_command(invite)
    return invite


def join_command(invite: dict[str, Any]) -> str:
    """The exact ``united join`` line a new member runs (``NAME`` when the invite
    names nobody: the member writes their display name there)."""
    words = ["united", "join", invite["url"], invite["code"]]
    name = invite.get("name")
    if name is None:
        words += ["--name", NAME_PLACEHOLDER]
    elif name.startswith("-"):  # an option's look-alike: glued to its option
        words.append(shlex.quote(f"--name={name}"))
    else:
        words += ["--name", shlex.quote(name)]
    words += ["--dir", JOIN_DIR]
    if invite.get("tls_fingerprint"):
        words += ["--tls-fingerprint", invite["tls_fingerprint"]]
    return " ".join(words)


def render_invite(result: dict[str, Any]) -> str:
    expires = datetime.datetime.fromtimestamp(result["expires_at"], datetime.UTC)
    lines = [f"warning: {result['warning']}"] if result.get("warning") else []
    lines.append(
        f"invite code: {result['code']} (single use, expires {expires:%Y-%m-%d %H:%M} UTC)"
    )
    if result.get("tls_fingerprint"):
        lines.append(f"server certificate (pinned by the member): {result['tls_fingerprint']}")
    if "name" in result:
        lines.append("a new member runs:")
    else:
        lines.append(f"a new member runs (with their display name for {NAME_PLACEHOLDER}):")
    lines.append(result["join_command"])
    return "\n".join(lines)


async def _channel_create(node: NodeAPI, args: list[str]) -> dict[str, str]:
    if len(args) != 1:
        raise CommandError("usage: channel-create NAME")
    try:
        channel = await _service(node).create_channel(args[0])
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    return {"channel_id": channel.channel_id, "name": channel.name, "topic": channel.topic}


async def _channels(node: NodeAPI, args: list[str]) -> list[dict[str, str]]:
    return [
        {"channel_id": c.channel_id, "name": c.name, "topic": c.topic}
        for c in _service(node).channels()
    ]


async def _members(node: NodeAPI, args: list[str]) -> list[dict[str, Any]]:
    service = _service(node)
    return [
        {
            "member_id": m.member_id,
            "name": m.display_name,
            "peer_id": m.peer_id,
            "online": m.member_id in service._online,
        }
        for m in service.member_set().members
    ]


async def _member_remove(node: NodeAPI, args: list[str]) -> dict[str, str]:
    if len(args) != 1:
        raise CommandError("usage: member-remove MEMBER (id, PeerId or name)")
    try:
        member = await _service(node).remove_member(args[0])
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    return {"removed": member.member_id, "name": member.display_name}


def _render_rows(key: str) -> Any:
    def render(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return f"no {key}"
        return "\n".join("  ".join(str(v) for v in row.values()) for row in rows)

    return render


def control_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "invite",
            _invite,
            "Create a single-use invite (its join command proposes NAME).",
            usage="[NAME]",
            render=render_invite,
        ),
        ControlCommand("channel-create", _channel_create, "Create a channel.", usage="NAME"),
        ControlCommand("channels", _channels, "All channels.", render=_render_rows("channels")),
        ControlCommand("members", _members, "Registered members.", render=_render_rows("members")),
        ControlCommand(
            "member-remove",
            _member_remove,
            "Remove a member (closes their connections).",
            usage="MEMBER",
        ),
    ]


# ---- `united invite`, `united channel` ----------------------------------------------


def _add_invite_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="the server's united.toml")
    parser.add_argument(
        "--name", help="the new member's display name, written into the join command"
    )
    parser.add_argument("--json", action="store_true")


def _run_invite(args: argparse.Namespace, tools: CliTools) -> int:
    result = tools.call_node(Path(args.config), "invite", [args.name] if args.name else [])
    if args.json:
        print(json.dumps(result))
        return 0
    if result.get("warning"):  # on stderr: stdout's last line stays the join command
        print(f"united: warning: {result['warning']}", file=sys.stderr)
        result = {k: v for k, v in result.items() if k != "warning"}
    print(render_invite(result))
    return 0


def _add_channel_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("create", "list"))
    parser.add_argument("name", nargs="?")
    parser.add_argument("-c", "--config", required=True, help="the server's united.toml")
    parser.add_argument("--json", action="store_true")


def _run_channel(args: argparse.Namespace, tools: CliTools) -> int:
    if args.action == "create":
        if not args.name:
            raise CLIError("usage: united channel create NAME -c CONFIG", 2)
        result: Any = tools.call_node(Path(args.config), "channel-create", [args.name])
        print(
            json.dumps(result)
            if args.json
            else f"created #{result['name']} ({result['channel_id']})"
        )
    else:
        result = tools.call_node(Path(args.config), "channels")
        print(json.dumps(result) if args.json else _render_rows("channels")(result))
    return 0


def cli_commands() -> list[CliCommand]:
    return [
        CliCommand(
            "invite",
            "create a single-use invite on a running server",
            _add_invite_args,
            _run_invite,
        ),
        CliCommand(
            "channel",
            "create or list channels on a running server",
            _add_channel_args,
            _run_channel,
        ),
    ]
