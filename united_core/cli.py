"""The ``united`` command: init, run, id, plugins, ctl.

Exit status: 0 on success, 1 on a runtime failure (node unreachable, port in
use, command refused), 2 on a configuration or usage error. Expected failures
print one line to stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.resources
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .api import CliCommand, CLIError
from .config import ConfigError, ConfigSection, read_toml, render_section
from .identity import (
    Identity,
    IdentityError,
    create_private_file,
    load_key_file,
    make_private_dir,
    write_key_file,
)

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
ROLES = ("server", "client")

log = logging.getLogger("united")


class _Tools:
    """The :class:`~united_core.api.CliTools` a plugin's CLI command gets."""

    def call_node(self, config: Path, command: str, args: list[str] | None = None) -> Any:
        return call_running_node(config, command, args)

    def write_node_dir(
        self, directory: Path, role: str, overrides: dict[str, dict[str, Any]] | None = None
    ) -> tuple[Path, Identity]:
        return write_node_dir(directory, role, overrides, reuse_key=True)


def _run_plugin_command(command: CliCommand, args: argparse.Namespace) -> int:
    return command.run(args, _Tools())


def plugin_cli_commands() -> list[CliCommand]:
    """Commands of every installed plugin; a plugin that fails to import is skipped."""
    import pluggy

    from . import hookspecs
    from .plugins import available_plugins

    pm = pluggy.PluginManager("united")
    pm.add_hookspecs(hookspecs)
    for name, plugin in sorted(available_plugins().items()):
        try:
            pm.register(plugin.load(), name=name)
        except (ConfigError, ValueError):
            continue
    return [c for batch in pm.hook.united_register_cli_commands() for c in batch]


def _preset(role: str) -> dict[str, Any]:
    text = importlib.resources.files("united_presets").joinpath(f"{role}.toml").read_text()
    import tomllib

    return tomllib.loads(text)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "debug":
        # py-libp2p logs routine dial and handshake failures as warnings.
        logging.getLogger("libp2p").setLevel(logging.ERROR)


# ---- init ----------------------------------------------------------------------------


def render_config(role: str, overrides: dict[str, dict[str, Any]] | None = None) -> str:
    """A commented ``united.toml`` for ``role``'s preset plus ``overrides``."""
    from .node import declared_sections
    from .plugins import get_plugin_manager

    preset = _preset(role)
    for name, values in (overrides or {}).items():
        preset.setdefault(name, {}).update(values)
    pm = get_plugin_manager(preset["node"]["plugins"])
    parts = [
        f"# UNITED node configuration ({role}), written by `united`.\n"
        "# Keys shown commented out are at their default; uncomment to change them.\n"
        "# Reference: docs/configuration.md; `united plugins` lists the plugins.\n"
    ]
    for section in _ordered(declared_sections(pm)):
        parts.append(render_section(section, preset.get(section.name, {})))
    return "\n".join(parts)


def write_node_dir(
    directory: Path,
    role: str,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    reuse_key: bool = False,
) -> tuple[Path, Identity]:
    """Write ``united.toml`` and (unless ``reuse_key`` finds one) a new key; never overwrite."""
    config_path = directory / "united.toml"
    key_path = directory / "identity.key"
    if config_path.exists():
        raise CLIError(f"{config_path} already exists; refusing to overwrite it")
    text = render_config(role, overrides)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        if reuse_key and key_path.exists():
            identity = load_key_file(key_path)
        else:
            identity = Identity.generate()
            write_key_file(key_path, identity)
    except IdentityError as exc:
        raise CLIError(str(exc)) from None
    config_path.write_text(text)
    return config_path, identity


def cmd_init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    config_path, identity = write_node_dir(directory, args.role)
    print(f"wrote {config_path}")
    print(f"wrote {directory / 'identity.key'} (owner-only)")
    print(f"peer id: {identity.peer_id}")
    print(f"start it with: united run -c {config_path}")
    return EXIT_OK


def _ordered(sections: dict[str, ConfigSection]) -> list[ConfigSection]:
    core = [sections[n] for n in ("node", "p2p", "control") if n in sections]
    return core + [s for n, s in sorted(sections.items()) if n not in ("node", "p2p", "control")]


# ---- run -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .control import ControlSocketBusy
    from .node import Node, P2PRuntimeDied, load_settings

    settings, pm, warnings = load_settings(Path(args.config))
    _setup_logging(settings["node"].log_level)
    for warning in warnings:
        log.warning("%s", warning)

    async def main() -> None:
        node = Node(settings, pm)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.request_stop)
        await node.run()

    try:
        asyncio.run(main())
    except Exception as exc:
        cause = _leaf(exc)
        if isinstance(cause, IdentityError):
            raise CLIError(str(cause), EXIT_CONFIG) from None
        if isinstance(cause, OSError | ControlSocketBusy):
            raise CLIError(f"cannot start: {cause}") from None
        if isinstance(cause, P2PRuntimeDied):
            raise CLIError(str(cause)) from None
        raise
    return EXIT_OK


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


# ---- id ------------------------------------------------------------------------------


def _raw_node_value(path: Path, key: str, default: Any) -> Any:
    """``[node] key`` of the file, unvalidated (for commands that load no plugins)."""
    node = read_toml(path).get("node", {})
    if not isinstance(node, dict):
        raise ConfigError("must be a table", file=path, section="node")
    return node.get(key, default)


def cmd_id(args: argparse.Namespace) -> int:
    path = Path(args.config)
    key_name = _raw_node_value(path, "identity_key", "identity.key")
    if not isinstance(key_name, str) or "\0" in key_name:
        raise ConfigError(
            "must be a string without NUL characters",
            file=path,
            section="node",
            key="identity_key",
        )
    key_path = Path(key_name) if Path(key_name).is_absolute() else path.parent / key_name
    try:
        identity = load_key_file(key_path)
    except IdentityError as exc:
        raise CLIError(str(exc), EXIT_CONFIG) from None
    if args.json:
        print(json.dumps({"public_key": identity.public_key.hex(), "peer_id": identity.peer_id}))
    else:
        print(f"public key: {identity.public_key.hex()}")
        print(f"peer id:    {identity.peer_id}")
    return EXIT_OK


# ---- plugins -------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import available_plugins

    enabled: set[str] = set()
    if args.config:
        plugins = _raw_node_value(Path(args.config), "plugins", [])
        enabled = {p for p in plugins if isinstance(p, str)} if isinstance(plugins, list) else set()
    available = available_plugins()
    rows = [
        (name, "yes" if name in enabled else "no", p.distribution, p.description())
        for name, p in sorted(available.items())
    ]
    if args.json:
        print(
            json.dumps(
                [
                    dict(zip(("name", "enabled", "distribution", "description"), r, strict=True))
                    for r in rows
                ]
            )
        )
        return EXIT_OK
    if not rows:
        print("no plugins installed")
        return EXIT_OK
    widths = [
        max(len(r[i]) for r in [("NAME", "ENABLED", "DISTRIBUTION", ""), *rows]) for i in range(3)
    ]
    header = ("NAME", "ENABLED", "DISTRIBUTION", "DESCRIPTION")
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)),
            row[3],
        )
    if not args.config:
        print("(pass -c CONFIG to see which are enabled for a node)")
    return EXIT_OK


# ---- ctl -----------------------------------------------------------------------------


def cmd_ctl(args: argparse.Namespace) -> int:
    from .containers import collect_commands
    from .control import ControlClient, ControlClientError
    from .node import load_settings

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
    from .control import ControlClient, ControlClientError
    from .node import load_settings

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
    from .console import Console, panel_sections
    from .containers import collect_commands
    from .control import ControlClientError
    from .node import load_settings

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


# ---- entry point ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="united", description="UNITED peer-to-peer chat node.")
    parser.add_argument("--version", action="version", version=f"united {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="write a commented united.toml and a new identity key")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--dir", required=True, help="directory for united.toml and the key")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run a node until SIGINT/SIGTERM or `united ctl stop`")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("id", help="print the node's public key and PeerId")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser("plugins", help="list installed plugins and which are enabled")
    p.add_argument("-c", "--config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("console", help="the developer console of a running node (F2: live panel)")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("ctl", help="send one command to a running node")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]")
    p.set_defaults(func=cmd_ctl)

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
