"""Client commands: ``join``/``leave``/``channels``/``members``/``who`` on the control
API, and ``united join SERVER_URL CODE --dir DIR`` to register a new member."""

from __future__ import annotations

import argparse
import asyncio
import getpass
from pathlib import Path
from typing import Any

from united_core.api import CliCommand, CLIError, CliTools, CommandError, ControlCommand, NodeAPI
from united_core.identity import Identity, load_key_file

from ..protocol import FrameError, clean_display_name
from .rotation import add_rotate_args, render_rotation, rotate_key, run_rotate
from .service import DirectoryCache, DiscoveryService, NotConnected
from .session import DirectoryClient, DirectoryError


def _service(node: NodeAPI) -> DiscoveryService:
    return node.require(DiscoveryService)


def _one_arg(args: list[str], usage: str) -> str:
    if len(args) != 1:
        raise CommandError(f"usage: {usage}")
    return args[0]


async def _guarded(coro: Any) -> Any:
    try:
        return await coro
    except (NotConnected, DirectoryError) as exc:
        raise CommandError(str(exc)) from None


async def _join(node: NodeAPI, args: list[str]) -> list[str]:
    channels = await _guarded(_service(node).join(_one_arg(args, "join CHANNEL")))
    return [c.name for c in channels]


async def _leave(node: NodeAPI, args: list[str]) -> list[str]:
    channels = await _guarded(_service(node).leave(_one_arg(args, "leave CHANNEL")))
    return [c.name for c in channels]


async def _channels(node: NodeAPI, args: list[str]) -> list[dict[str, str]]:
    return [
        {"name": c.name, "channel_id": c.channel_id, "topic": c.topic}
        for c in _service(node).cache.joined
    ]


async def _members(node: NodeAPI, args: list[str]) -> list[dict[str, str]]:
    return [
        {"name": m.display_name, "member_id": m.member_id, "peer_id": m.peer_id}
        for m in _service(node).cache.members
    ]


async def _who(node: NodeAPI, args: list[str]) -> list[dict[str, Any]]:
    return await _guarded(_service(node).who(_one_arg(args, "who CHANNEL")))  # type: ignore[no-any-return]


def _rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    return "\n".join(
        "  ".join(str(v) if not isinstance(v, list) else " ".join(v) for v in r.values())
        for r in rows
    )


def control_commands() -> list[ControlCommand]:
    return [
        ControlCommand("join", _join, "Join a channel (name or id).", usage="CHANNEL"),
        ControlCommand("leave", _leave, "Leave a channel (name or id).", usage="CHANNEL"),
        ControlCommand("channels", _channels, "Joined channels.", render=_rows),
        ControlCommand("members", _members, "Members (from the cached list).", render=_rows),
        ControlCommand("who", _who, "Who is online in a channel.", usage="CHANNEL", render=_rows),
        ControlCommand(
            "rotate-key",
            rotate_key,
            "Replace this member's key with the server, keep the old one, restart.",
            usage="[--no-restart]",
            render=render_rotation,
        ),
    ]


# ---- `united join` -----------------------------------------------------------------


def _add_join_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server_url", help="the server's WebSocket URL, from the invite")
    parser.add_argument("code", help="the invite code ('-' when registration is open)")
    parser.add_argument("--dir", required=True, help="directory for the new client node")
    parser.add_argument("--name", help="display name (default: your login name)")


def _run_join(args: argparse.Namespace, tools: CliTools) -> int:
    directory = Path(args.dir)
    if (directory / "united.toml").exists():
        raise CLIError(f"{directory / 'united.toml'} already exists; refusing to overwrite it")
    if not args.server_url.startswith(("ws://", "wss://")):
        raise CLIError("SERVER_URL must start with ws:// or wss://", 2)
    try:
        name = clean_display_name(args.name or getpass.getuser())
    except FrameError as exc:
        raise CLIError(str(exc), 2) from None
    key_path = directory / "identity.key"
    identity = load_key_file(key_path) if key_path.exists() else Identity.generate()
    code = "" if args.code == "-" else args.code

    async def register() -> Any:
        try:
            client = await DirectoryClient.connect(args.server_url)
        except Exception as exc:
            raise CLIError(f"cannot reach {args.server_url}: {exc}") from None
        try:
            return await client.register(identity, name, code)
        except DirectoryError as exc:
            raise CLIError(f"registration refused: {exc}") from None
        finally:
            await client.close()

    welcome = asyncio.run(register())
    if not key_path.exists():
        from united_core.identity import write_key_file

        directory.mkdir(parents=True, exist_ok=True)
        write_key_file(key_path, identity)
    config_path, _ = tools.write_node_dir(
        directory,
        "client",
        {"discovery": {"server_url": args.server_url, "display_name": name}},
    )
    cache = DirectoryCache(directory / "data" / "directory-cache.json")
    cache.apply_welcome(welcome, args.server_url)
    cache.save()
    print(f"registered as {name} (member {welcome.you.member_id}) on server {welcome.server_id}")
    print(f"peer id: {identity.peer_id}")
    print(f"wrote {config_path}")
    print(f"start it with: united run -c {config_path}")
    return 0


def cli_commands() -> list[CliCommand]:
    return [
        CliCommand(
            "join",
            "register with a server using an invite; write a client node",
            _add_join_args,
            _run_join,
        ),
        CliCommand(
            "rotate-key",
            "make a new key, rotate it with the server, swap the key file, restart the node",
            add_rotate_args,
            run_rotate,
        ),
    ]
