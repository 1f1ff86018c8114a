"""Client commands: ``join``/``leave``/``channels``/``members``/``who`` on the control
API, and ``united join SERVER_URL CODE --dir DIR`` to register a new member."""

from __future__ import annotations

import argparse
import asyncio
import getpass
from pathlib import Path
from typing import Any

from united_core.api import (
    CliCommand,
    CLIError,
    CliTools,
    CommandError,
    ControlCommand,
    NodeAPI,
    render_table,
)
from united_core.identity import Identity, load_key_file, write_key_file
from united_core.wire import frames_pb2 as pb

from ..protocol import FrameError, clean_display_name
from ..tls import FingerprintError, normalize_fingerprint
from .rotation import add_rotate_args, render_rotation, rotate_key, run_rotate
from .service import DirectoryCache, DiscoveryService, NotConnected
from .session import DirectoryClient, DirectoryError, Unreachable


def _service(node: NodeAPI) -> DiscoveryService:
    return node.require(DiscoveryService)


def _one_arg(args: list[str], usage: str) -> str:
    if len(args) != 1:
        raise CommandError(f"usage: {usage}")
    return args[0]


async def _guarded(coro: Any) -> Any:
    try:
        return await coro
    except NotConnected as exc:
        raise CommandError(str(exc)) from None
    except DirectoryError as exc:  # the server's message; its code only for --json
        raise CommandError(exc.message, detail=exc.code_name) from None


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


async def _complete_join(node: NodeAPI, words: list[str]) -> list[tuple[str, str]]:
    """``join``'s CHANNEL: the server's channels (asked now), those not joined first."""
    if words:
        return []
    service = _service(node)
    joined = {c.channel_id for c in service.cache.joined}
    try:
        async with asyncio.timeout(3):
            reply = await service.request(pb.ClientFrame(list_channels=pb.ListChannels()))
    except (NotConnected, DirectoryError, TimeoutError):
        return []
    channels = sorted(reply.channel_list.channels, key=lambda c: (c.channel_id in joined, c.name))
    return [
        (c.name, "channel, joined already" if c.channel_id in joined else "channel, not joined")
        for c in channels
    ]


def _render_joined(names: list[str]) -> str:
    return "joined: " + ", ".join(f"#{n}" for n in names) if names else "joined: no channel"


def _table(*columns: str, empty: str = "(none)") -> Any:
    def render(rows: list[dict[str, Any]]) -> str:
        return render_table(rows, columns, empty=empty)

    return render


def control_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "join",
            _join,
            "Join a channel (name or id).",
            usage="CHANNEL",
            render=_render_joined,
            description="CHANNEL: a channel of the server, by name or id "
            "(Tab in the console lists them). Prints the channels joined now.",
            complete=_complete_join,
        ),
        ControlCommand(
            "leave",
            _leave,
            "Leave a channel (name or id).",
            usage="CHANNEL",
            render=_render_joined,
            description="CHANNEL: a joined channel, by name or id. "
            "Prints the channels still joined.",
        ),
        ControlCommand(
            "channels",
            _channels,
            "Joined channels.",
            render=_table("name", "channel_id", "topic", empty="no channel joined"),
        ),
        ControlCommand(
            "members",
            _members,
            "Members (from the cached list).",
            render=_table("name", "member_id", "peer_id", empty="no members known"),
        ),
        ControlCommand(
            "who",
            _who,
            "Who is online in a channel.",
            usage="CHANNEL",
            render=_table("name", "peer_id", "addrs", empty="nobody online"),
            description="CHANNEL: a joined channel. Asks the server who is online there, "
            "with the addresses they announced.",
        ),
        ControlCommand(
            "rotate-key",
            rotate_key,
            "Replace this member's key with the server, keep the old one, restart.",
            usage="[--no-restart]",
            render=render_rotation,
            description="--no-restart: keep running under the old key until the next "
            "restart. Otherwise the node stops to come back under its new PeerId "
            "(the console reconnects when it is back).",
        ),
    ]


# ---- `united join` -----------------------------------------------------------------


JOIN_TIMEOUT = 10.0  # seconds `united join` waits for the server, connection to welcome
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _add_join_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server_url", help="the server's WebSocket URL, from the invite")
    parser.add_argument("code", help="the invite code ('-' when registration is open)")
    parser.add_argument("--dir", required=True, help="directory for the new client node")
    parser.add_argument("--name", help="display name (default: your login name)")
    parser.add_argument(
        "--timeout",
        type=_join_timeout,
        default=JOIN_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when the server has not welcomed us within this long "
        f"(default {JOIN_TIMEOUT:g}; 1 to 300)",
    )
    parser.add_argument(
        "--tls-fingerprint",
        metavar="sha256:HEX",
        help="the server certificate's fingerprint, from the invite (a self-signed "
        "server): only that certificate is accepted, and it is kept in united.toml",
    )


def _join_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 1 <= value <= 300:
        raise argparse.ArgumentTypeError("between 1 and 300 seconds")
    return value


def _run_join(args: argparse.Namespace, tools: CliTools) -> int:
    try:
        return _join_server(args, tools)
    except KeyboardInterrupt:
        raise CLIError("join interrupted", EXIT_INTERRUPTED) from None


def _join_server(args: argparse.Namespace, tools: CliTools) -> int:
    directory = Path(args.dir)
    url = args.server_url
    if (directory / "united.toml").exists():
        raise CLIError(f"{directory / 'united.toml'} already exists; refusing to overwrite it")
    if not url.startswith(("ws://", "wss://")):
        raise CLIError("SERVER_URL must start with ws:// or wss://", 2)
    fingerprint = ""
    if args.tls_fingerprint:
        try:
            fingerprint = normalize_fingerprint(args.tls_fingerprint)
        except FingerprintError as exc:
            raise CLIError(f"--tls-fingerprint: {exc}", 2) from None
        if not url.startswith("wss://"):
            raise CLIError("--tls-fingerprint pins a certificate: SERVER_URL must be wss://", 2)
    try:
        name = clean_display_name(args.name or getpass.getuser())
    except FrameError as exc:
        raise CLIError(str(exc), 2) from None
    key_path = directory / "identity.key"
    if key_path.exists():
        identity = load_key_file(key_path)
    else:  # written first: a registration that succeeds never loses its key
        identity = Identity.generate()
        write_key_file(key_path, identity)
    code = "" if args.code == "-" else args.code

    async def register() -> Any:
        try:
            client = await DirectoryClient.connect(
                url,
                request_timeout=args.timeout,
                connect_timeout=args.timeout,
                tls_fingerprint=fingerprint,
            )
        except Unreachable as exc:
            raise CLIError(f"cannot join: {exc}") from None
        try:
            async with asyncio.timeout(args.timeout):
                return await client.register(identity, name, code)
        except TimeoutError:
            raise CLIError(
                f"cannot join: {url} opened a session but did not complete the "
                f"registration within {args.timeout:g} s"
            ) from None
        except DirectoryError as exc:
            if exc.code == pb.ERROR_CODE_NAME_TAKEN:
                raise CLIError(
                    f"registration refused: {exc.message}; choose another with --name "
                    "(the invite is still valid)"
                ) from None
            raise CLIError(f"registration refused: {exc}") from None
        finally:
            await client.close()

    welcome = asyncio.run(register())
    discovery: dict[str, Any] = {"server_url": url, "display_name": name}
    if fingerprint:
        discovery["tls_fingerprint"] = fingerprint
    config_path, _ = tools.write_node_dir(directory, "client", {"discovery": discovery})
    cache = DirectoryCache(directory / "data" / "directory-cache.json")
    cache.apply_welcome(welcome, url)
    cache.save()
    print(f"registered as {name} (member {welcome.you.member_id}) on server {welcome.server_id}")
    print(f"peer id: {identity.peer_id}")
    if fingerprint:
        print(f"pinned the server's certificate {fingerprint}")
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
