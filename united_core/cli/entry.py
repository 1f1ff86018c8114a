"""The ``united`` entry point: the argument parser and :func:`main`.

Why a module of its own: it only wires sub-commands to the modules that do the
work (``init``, ``run``, ``info``, ``client``) and adds every installed
plugin's CLI commands (``united_register_cli_commands``); :func:`main` maps
expected failures to one line on stderr and an exit status.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..api import CliCommand, CLIError
from ..config import ConfigError
from ..identity import Identity
from . import client, info, init, run
from .common import EXIT_CONFIG


class _Tools:
    """The :class:`~united_core.api.CliTools` a plugin's CLI command gets."""

    def call_node(self, config: Path, command: str, args: list[str] | None = None) -> Any:
        return client.call_running_node(config, command, args)

    def write_node_dir(
        self, directory: Path, role: str, overrides: dict[str, dict[str, Any]] | None = None
    ) -> tuple[Path, Identity]:
        return init.write_node_dir(directory, role, overrides, reuse_key=True)


def _run_plugin_command(command: CliCommand, args: argparse.Namespace) -> int:
    """A plugin's command; its unexpected failure is one line naming it, not a traceback."""
    try:
        return command.run(args, _Tools())
    except (CLIError, ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise CLIError(f"`united {command.name}` failed: {type(exc).__name__}: {exc}") from exc


def plugin_cli_commands() -> list[CliCommand]:
    """Commands of every installed plugin; a plugin that fails to import is skipped."""
    import pluggy

    from .. import hookspecs
    from ..plugins import available_plugins

    pm = pluggy.PluginManager("united")
    pm.add_hookspecs(hookspecs)
    for name, plugin in sorted(available_plugins().items()):
        try:
            pm.register(plugin.load(), name=name)
        except (ConfigError, ValueError):
            continue
    return [c for batch in pm.hook.united_register_cli_commands() for c in batch]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="united", description="UNITED peer-to-peer chat node.")
    parser.add_argument("--version", action="version", version=f"united {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="write a commented united.toml and a new identity key")
    init.add_arguments(p)
    p.set_defaults(func=init.cmd_init)

    p = sub.add_parser("run", help="run a node until SIGINT/SIGTERM or `united ctl stop`")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=run.cmd_run)

    p = sub.add_parser("id", help="print the node's public key and PeerId")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=info.cmd_id)

    p = sub.add_parser("plugins", help="list installed plugins and which are enabled")
    p.add_argument("-c", "--config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=info.cmd_plugins)

    p = sub.add_parser("console", help="the developer console of a running node (F2: live panel)")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=client.cmd_console)

    p = sub.add_parser("ctl", help="send one command to a running node")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]")
    p.set_defaults(func=client.cmd_ctl)

    builtin = set(sub.choices)
    for command in plugin_cli_commands():
        if command.name in builtin:
            continue
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(func=functools.partial(_run_plugin_command, command))
        builtin.add(command.name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except ConfigError as exc:
        print(f"united: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CLIError as exc:
        print(f"united: {exc}", file=sys.stderr)
        return exc.status
    return status
