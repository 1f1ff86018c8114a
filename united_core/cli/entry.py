"""The ``united`` entry point: the argument parser and :func:`main`.

Why a module of its own: it only wires sub-commands to the modules that do the
work (``init``, ``run``, ``info``, ``client``) and adds every installed
plugin's CLI commands (``united_register_cli_commands``); :func:`main` maps
expected failures to one line on stderr and an exit status.

Global options (``-c``, ``--log-level``, ``-v``, ``--log-format``) are accepted
before the sub-command and after it, for every sub-command, plugins' included;
``-c`` once. For ``ctl`` "after it" means before the control COMMAND (``united ctl
-c CONFIG status``): the words after COMMAND are the command's own, passed on as
they are (``united ctl send general use -c to compile`` sends that text).
Without ``-c`` the config is found by :func:`~.common.default_config`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..api import CliCommand, CLIError, printable
from ..config import ConfigError
from ..identity import Identity
from . import client, info, init, run
from .common import (
    CONFIG_OPTIONS,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    LOG_FORMATS,
    LOG_LEVELS,
    NO_CONFIG,
    default_config,
    setup_logging,
)


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


CONFIG_HELP = (
    "the node's united.toml (default: $UNITED_CONFIG, else ./united.toml, "
    "else $XDG_CONFIG_HOME/united/united.toml)"
)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head`
TWICE = "-c/--config given twice: give the node's united.toml once"


class _ConfigOption(argparse.Action):
    """``-c CONFIG``, at most once: stored as ``config``, and ``marker`` set to say
    where it was given (before the sub-command or after it; see :func:`_config_once`)."""

    def __init__(self, *args: Any, marker: str = "config_after", **kwargs: Any) -> None:
        self.marker = marker
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.marker, None) is not None:  # twice in one place
            raise CLIError(TWICE, EXIT_CONFIG)
        setattr(namespace, self.dest, values)
        setattr(namespace, self.marker, values)


def _config_once(args: argparse.Namespace) -> None:
    """``united -c A COMMAND -c B`` is an error (exit 2), not B silently: the
    sub-command's parser fills ``config`` over the main one's."""
    before = getattr(args, "config_before", None)
    if before is None:
        return
    if getattr(args, "config_after", None) is not None or args.config != before:
        raise CLIError(TWICE, EXIT_CONFIG)


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--log-level``, ``-v``, ``--log-format``: on the main parser (with defaults) and
    on each sub-command's (``SUPPRESS``: not given there, the main parser's value stays).
    An option string a plugin's command already uses is left to it."""
    taken = set(parser._option_string_actions)
    group = parser.add_argument_group("global options") if not top else parser
    sub_default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (
            ("--log-level",),
            {
                "choices": LOG_LEVELS,
                "metavar": "LEVEL",
                "help": "log level: debug, info, warning, error (overrides [node] log_level)",
            },
        ),
        (
            ("-v", "--verbose"),
            {
                "action": "count",
                "help": "-v: debug logs of UNITED; -vv: of every library too (py-libp2p)",
            },
        ),
        (
            ("--log-format",),
            {
                "choices": LOG_FORMATS,
                "help": "text (timestamped), journal (syslog priorities, no timestamps), "
                "auto (the default: journal when stderr is the journal)",
            },
        ),
    ]
    for flags, kwargs in options:
        if not taken & set(flags):
            group.add_argument(*flags, **kwargs, **sub_default)


def _add_config_option(parser: argparse.ArgumentParser, uses: str) -> None:
    """``-c CONFIG``, optional everywhere: :func:`main` finds the default, and
    ``uses`` (``required`` or ``optional``) says whether the command needs one."""
    parser.add_argument(
        *CONFIG_OPTIONS,
        action=_ConfigOption,
        metavar="CONFIG",
        default=argparse.SUPPRESS,
        help=CONFIG_HELP,
    )
    parser.set_defaults(config_use=uses)


def _adopt_config_option(parser: argparse.ArgumentParser) -> None:
    """A plugin's command declaring its own ``-c``/``--config``: make it optional
    (the default config applies) and not overwrite a ``-c`` given before the
    sub-command."""
    for flag in CONFIG_OPTIONS:
        action = parser._option_string_actions.get(flag)
        if action is not None and action.dest == "config":
            parser.set_defaults(config_use="required" if action.required else "optional")
            action.required = False
            action.default = argparse.SUPPRESS
            action.help = f"{action.help or 'the config'} (default: see `united --help`)"
            return


# The sub-commands of the core, which a plugin's command cannot take over.
BUILTIN_COMMANDS = frozenset({"init", "run", "id", "plugins", "console", "ctl"})


def build_parser(*, plugins: bool = True) -> argparse.ArgumentParser:
    """The ``united`` parser. Without ``plugins``, only the core's sub-commands and
    without the options plugins add to ``init``: neither imports a plugin (building
    them imports every installed one)."""
    parser = argparse.ArgumentParser(
        prog="united",
        description="UNITED peer-to-peer chat node.",
        epilog="Without -c, the config is $UNITED_CONFIG, else ./united.toml, else "
        "$XDG_CONFIG_HOME/united/united.toml (~/.config/united/). -c (once) and the "
        "log options go before or after COMMAND; for ctl, before the control command.",
    )
    parser.add_argument("--version", action="version", version=f"united {__version__}")
    parser.add_argument(
        *CONFIG_OPTIONS,
        action=_ConfigOption,
        marker="config_before",
        metavar="CONFIG",
        help=CONFIG_HELP,
    )
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="write a commented united.toml and a new identity key")
    init.add_arguments(p, plugin_options=plugins)
    p.set_defaults(func=init.cmd_init)

    p = sub.add_parser(
        "run",
        help="run a node until SIGINT/SIGTERM or `united ctl stop` (SIGHUP: reload)",
        description="Run a node in the foreground until SIGINT, SIGTERM or `united ctl "
        "stop` (exit 0). SIGHUP reads the config again: [node] log_level applies at "
        "once; other changes are named in the log and apply at the next start. Under "
        "systemd (Type=notify) it sends READY=1, WATCHDOG=1 and STOPPING=1.",
    )
    _add_config_option(p, "required")
    p.set_defaults(func=run.cmd_run)

    p = sub.add_parser("id", help="print the node's public key and PeerId")
    _add_config_option(p, "required")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=info.cmd_id)

    p = sub.add_parser("plugins", help="list installed plugins and which are enabled")
    _add_config_option(p, "optional")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=info.cmd_plugins)

    p = sub.add_parser("console", help="the developer console of a running node (F2: live panel)")
    _add_config_option(p, "required")
    p.set_defaults(func=client.cmd_console)

    p = sub.add_parser(
        "ctl",
        help="send one command to a running node",
        description="Send COMMAND to the running node (`united ctl help` lists them). "
        "-c CONFIG comes before COMMAND (`united ctl -c CONFIG status`): the words after "
        "COMMAND are its own. --json may come anywhere; words after -- are passed as "
        "they are.",
    )
    _add_config_option(p, "required")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]")
    p.set_defaults(func=client.cmd_ctl, prepare=_split_ctl_words)

    builtin = set(sub.choices)
    for command in plugin_cli_commands() if plugins else []:
        if command.name in builtin:
            continue
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        _adopt_config_option(p)
        p.set_defaults(func=functools.partial(_run_plugin_command, command))
        builtin.add(command.name)
    for p in sub.choices.values():
        _add_global_options(p)
    return parser


def _split_ctl_words(args: argparse.Namespace) -> None:
    """``ctl``'s words: COMMAND and its own words (``-c`` is not among them: the
    parser took it before COMMAND). The first ``--`` is dropped, and the words
    after it are marked literal (``literal_from``): ``--json``, ``--help`` there
    are text."""
    words: list[str] = list(args.words)
    end = words.index("--") if "--" in words else len(words)
    args.words = words[:end] + words[end + 1 :]
    args.literal_from = end


def _resolve_config(args: argparse.Namespace) -> None:
    """``args.config``: as given, else :func:`default_config` for a command that
    uses one (``CLIError``, exit 2, if it needs one and there is none)."""
    uses = getattr(args, "config_use", None)
    if getattr(args, "config", None) is not None or uses is None:
        return
    found = default_config()
    if found is None and uses == "required":
        raise CLIError(NO_CONFIG, EXIT_CONFIG)
    args.config = str(found) if found is not None else None


class _ProbeError(Exception):
    pass


class _Probe(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ProbeError(message)


def _core_command(argv: Sequence[str]) -> str | None:
    """The core's sub-command (``run``, ``ctl``...) ``argv`` runs, read with the main
    parser's own options; None for anything else (no command, ``-h`` before it, a
    plugin's command, an error), which gets the whole parser. For the others but
    ``init``, :func:`main` leaves the plugins out of the parser: importing every
    installed plugin only to build it would cost ``united run`` the memory of the
    plugins its node does not enable (a member's node would hold the server's)."""
    probe = _Probe(add_help=False)
    probe.add_argument(*CONFIG_OPTIONS)
    _add_global_options(probe, top=True)
    probe.add_argument("command", nargs="?")
    probe.add_argument("words", nargs=argparse.REMAINDER)
    try:
        args, unknown = probe.parse_known_args(argv)
    except _ProbeError:
        return None
    return args.command if not unknown and args.command in BUILTIN_COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        command = _core_command(argv)
        args = build_parser(plugins=command in (None, "init")).parse_args(argv)
        _config_once(args)
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            prepare(args)
        _resolve_config(args)
        if args.command != "run":  # `run` sets up logging itself, with the config's level
            options = run.log_options(args)
            if options.overrides_config:
                level, libraries = options.resolve("warning")
                setup_logging(level, libraries=libraries, fmt=options.format)
        status: int = args.func(args)
    except ConfigError as exc:
        print(f"united: {printable(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except CLIError as exc:  # one line; its text may be the server's or a peer's
        print(f"united: {printable(str(exc))}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:  # Ctrl-C while loading plugins or reading a config
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `united ctl peers | head -1`: the reader left; so do we
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return EXIT_BROKEN_PIPE
    return status
