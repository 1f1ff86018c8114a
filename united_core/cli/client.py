"""``united ctl`` and ``united console``: talk to a running node over its control socket.

Why a module of its own: these commands never start a node; they find its
control socket from the config, send commands, and print results (text
rendered by the command's ``render``, or JSON with ``--json``).
:func:`call_running_node` is the same, for plugins' CLI commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from ..api import CLIError
from ..identity import create_private_file, make_private_dir
from .common import EXIT_CONFIG, EXIT_OK


def cmd_ctl(args: argparse.Namespace) -> int:
    from ..containers import collect_commands
    from ..control import ControlClient, ControlClientError
    from ..node import load_settings

    words = list(args.words)
    as_json = args.json or "--json" in words
    words = [w for w in words if w != "--json"]
    if not words:
        raise CLIError("usage: united ctl -c CONFIG COMMAND [ARGS...] [--json]", EXIT_CONFIG)
    settings, pm, _ = load_settings(Path(args.config))
    commands = collect_commands(pm)
    command = commands.get(words[0])
    socket_path = settings.resolve(settings["control"].socket)

    def show(value: Any) -> None:
        if as_json:
            print(json.dumps(value), flush=True)
        elif command is not None and command.render is not None:
            print(command.render(value), flush=True)
        elif isinstance(value, dict):
            for key, item in value.items():
                shown = " ".join(map(str, item)) if isinstance(item, list) else item
                print(f"{key}: {shown}", flush=True)
        elif isinstance(value, list):
            for item in value:
                print(json.dumps(item) if isinstance(item, dict) else item, flush=True)
        else:
            print(value, flush=True)

    async def main() -> None:
        client = await ControlClient.connect(socket_path)
        try:
            async for item in client.stream(words[0], words[1:]):
                show(item)
        finally:
            await client.close()

    try:
        asyncio.run(main())
    except ControlClientError as exc:
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def call_running_node(config: Path, command: str, args: list[str] | None = None) -> Any:
    """Run one control command on the node of ``config``; CLIError if it fails."""
    from ..control import ControlClient, ControlClientError
    from ..node import load_settings

    settings, _, _ = load_settings(config)
    path = settings.resolve(settings["control"].socket)

    async def main() -> Any:
        client = await ControlClient.connect(path)
        try:
            return await client.call(command, args or [])
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except ControlClientError as exc:
        raise CLIError(str(exc)) from None


def cmd_console(args: argparse.Namespace) -> int:
    from ..console import Console, panel_sections
    from ..containers import collect_commands
    from ..control import ControlClientError
    from ..node import load_settings

    settings, pm, _ = load_settings(Path(args.config))
    data_dir = make_private_dir(settings.resolve(settings["node"].data_dir))
    history_path = data_dir / "console-history"
    create_private_file(history_path)  # prompt_toolkit appends to it, keeping its mode
    console = Console(
        settings.resolve(settings["control"].socket),
        collect_commands(pm),
        history_path=history_path,
        sections=panel_sections(pm),
    )
    try:
        asyncio.run(console.run())
    except ControlClientError as exc:
        raise CLIError(str(exc)) from None
    return EXIT_OK
