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
import sys
from pathlib import Path
from typing import Any

from ..api import CLIError
from ..identity import create_private_file, make_private_dir
from .common import CONFIG_OPTIONS, EXIT_CONFIG, EXIT_OK

HELP_WORDS = ("--help", "-h")


def cmd_ctl(args: argparse.Namespace) -> int:
    from ..api import printable, render_value
    from ..builtin import command_help, render_command_help
    from ..containers import collect_commands
    from ..control import ControlClient, ControlClientError
    from ..node import load_settings

    words = list(args.words)
    # Words from `literal_from` on came after `--`: text, never options.
    literal_from = getattr(args, "literal_from", len(words))
    flags, literal = words[:literal_from], words[literal_from:]
    as_json = args.json or "--json" in flags
    asks_help = any(w in HELP_WORDS for w in flags[1:])
    words = [w for w in flags if w != "--json"] + literal
    if not words:
        raise CLIError("usage: united ctl -c CONFIG COMMAND [ARGS...] [--json]", EXIT_CONFIG)
    settings, pm, _ = load_settings(Path(args.config))
    commands = collect_commands(pm)
    command = commands.get(words[0])
    if asks_help:
        # `united ctl NAME --help`: described from the command itself, no node needed.
        if command is None:
            known = ", ".join(sorted(commands))
            raise CLIError(f"no command {words[0]!r}; commands: {known}", EXIT_CONFIG)
        print(render_command_help(command_help(command), "united ctl -c CONFIG", "[--json]"))
        return EXIT_OK
    if command is not None:
        _refuse_misplaced_config(command.name, command.usage, flags[1:])
    socket_path = settings.resolve(settings["control"].socket)

    def show(value: Any) -> None:
        if as_json:  # exact: JSON escapes every control character
            print(json.dumps(value), flush=True)
            return
        render = command.render if command is not None and command.render else render_value
        # Text for people: what peers and the server wrote cannot drive the terminal.
        print(printable(render(value), multiline=True), flush=True)

    async def main() -> str:
        client = await ControlClient.connect(socket_path)
        try:
            async for item in client.stream(words[0], words[1:]):
                show(item)
        finally:
            await client.close()
        return client.end_reason

    try:
        ended = asyncio.run(main())
    except ControlClientError as exc:
        if as_json:  # scripts get the codes; people get the message (on stderr)
            print(json.dumps(exc.as_json()), flush=True)
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        return EXIT_OK
    if ended:
        print(f"united: the stream ended: {printable(ended)}", file=sys.stderr)
    return EXIT_OK


def _refuse_misplaced_config(name: str, usage: str, words: list[str]) -> None:
    """``united ctl stop -c B.toml`` run where ./united.toml is A's: ``-c`` after
    COMMAND is one of the command's words, not the config, so ``stop`` would stop A.
    A command without arguments (nothing but ``--options`` in its usage) has no
    use for such a word: refused (exit 2) instead of run on the other node.
    Commands that take arguments get their words as they are (``send general use
    -c to compile`` sends that text) and refuse what they cannot use themselves."""
    from ..builtin import usage_slots

    positionals, options = usage_slots(usage)
    if positionals:
        return
    for word in words:
        option = word.split("=", 1)[0] if word.startswith("--config=") else word
        if option in CONFIG_OPTIONS and option not in options:
            raise CLIError(
                f"`{name}` takes no {option}: -c/--config goes before the command "
                f"(united ctl -c CONFIG {name})",
                EXIT_CONFIG,
            )


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
