"""``united init``: write a node directory (a commented ``united.toml`` and a key).

Why a module of its own: turning a preset, a plugin set and overrides into a
configuration file is the one job here. The file has a commented section for
every plugin that is enabled (the preset's, or the ones chosen with
``--plugins`` / ``--with``, third-party plugins included): their schemas come
from a plugin manager built for exactly that plugin list. Plugins add options
of their own (``united_register_init_options``: the directory's public address
and TLS); the core only routes them to the plugins the new node enables.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from ..api import CLIError, InitContext, InitOptions
from ..config import ConfigError, ConfigSection, render_section
from ..identity import Identity, IdentityError, load_key_file, write_key_file
from .common import EXIT_CONFIG, EXIT_OK, ROLES

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

CORE_SECTIONS = ("node", "p2p", "control")


def preset(role: str) -> dict[str, Any]:
    """The shipped preset of ``role`` (``config/<role>.toml``), parsed."""
    text = importlib.resources.files("united_presets").joinpath(f"{role}.toml").read_text()
    return tomllib.loads(text)


def render_config(
    role: str,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    plugins: Sequence[str] | None = None,
) -> str:
    """A commented ``united.toml`` for ``role``'s preset plus ``overrides``.

    ``plugins`` replaces the preset's plugin list. Every enabled plugin's
    declared sections are rendered (keys at their default commented out).
    """
    from ..node import declared_sections
    from ..plugins import get_plugin_manager

    values = preset(role)
    for name, table in (overrides or {}).items():
        values.setdefault(name, {}).update(table)
    if plugins is not None:
        values.setdefault("node", {})["plugins"] = list(plugins)
    pm = get_plugin_manager(values.get("node", {}).get("plugins", []))
    parts = [
        f"# UNITED node configuration ({role}), written by `united`.\n"
        "# Keys shown commented out are at their default; uncomment to change them.\n"
        "# Reference: docs/configuration.md; `united plugins` lists the plugins.\n"
    ]
    for section in _ordered(declared_sections(pm)):
        parts.append(render_section(section, values.get(section.name, {})))
    return "\n".join(parts)


def _ordered(sections: dict[str, ConfigSection]) -> list[ConfigSection]:
    core = [sections[n] for n in CORE_SECTIONS if n in sections]
    return core + [s for n, s in sorted(sections.items()) if n not in CORE_SECTIONS]


def write_node_dir(
    directory: Path,
    role: str,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    reuse_key: bool = False,
    plugins: Sequence[str] | None = None,
) -> tuple[Path, Identity]:
    """Write ``united.toml`` and (unless ``reuse_key`` finds one) a new key; never overwrite.

    ``plugins`` replaces the preset's plugin list (see :func:`render_config`).
    """
    config_path = directory / "united.toml"
    key_path = directory / "identity.key"
    if config_path.exists():
        raise CLIError(f"{config_path} already exists; refusing to overwrite it")
    text = render_config(role, overrides, plugins=plugins)
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


def chosen_plugins(role: str, plugins: str | None, added: Sequence[str]) -> list[str] | None:
    """The plugin list of ``--plugins a,b`` and ``--with NAME``; None keeps the preset's."""
    if plugins is None and not added:
        return None
    if plugins is not None:
        names = [p.strip() for p in plugins.split(",") if p.strip()]
    else:
        names = list(preset(role).get("node", {}).get("plugins", []))
    return names + [n for n in dict.fromkeys(added) if n not in names]


def installed_init_options() -> list[tuple[str, InitOptions]]:
    """(plugin name, options) of every installed plugin's ``united_register_init_options``;
    a plugin that fails to load is skipped (as for its CLI commands)."""
    import pluggy

    from .. import hookspecs
    from ..plugins import available_plugins

    pm = pluggy.PluginManager("united")
    pm.add_hookspecs(hookspecs)
    for name, plugin in sorted(available_plugins().items()):
        try:
            pm.register(plugin.load(), name=name)
        except (ConfigError, ValueError, ImportError):
            continue
    found: list[tuple[str, InitOptions]] = []
    for impl in pm.hook.united_register_init_options.get_hookimpls():
        declared = cast(list[InitOptions], impl.function())
        found += [(str(impl.plugin_name), options) for options in declared]
    return found


def _add_plugin_options(parser: argparse.ArgumentParser) -> None:
    """Each installed plugin's ``united init`` options, in a group of its own; which
    arguments are whose is kept for :func:`apply_plugin_options`."""
    declared: list[tuple[str, InitOptions, list[argparse.Action]]] = []
    for plugin, options in installed_init_options():
        group = parser.add_argument_group(f"options of the {plugin} plugin")
        before = len(group._group_actions)
        try:
            options.add_arguments(group)
        except argparse.ArgumentError:  # an option another plugin declared: skip it
            continue
        declared.append((plugin, options, group._group_actions[before:]))
    parser.set_defaults(plugin_init_options=declared)


def apply_plugin_options(
    args: argparse.Namespace, enabled: Sequence[str], context: InitContext
) -> dict[str, dict[str, Any]]:
    """The settings enabled plugins' ``united init`` options write; an option of a
    plugin that is not enabled is a usage error."""
    overrides: dict[str, dict[str, Any]] = {}
    for plugin, options, actions in getattr(args, "plugin_init_options", []):
        if plugin not in enabled:
            given = [a for a in actions if getattr(args, a.dest, a.default) != a.default]
            if given:
                raise CLIError(
                    f"{given[0].option_strings[0]} is an option of the {plugin} plugin, "
                    f"which this node does not enable",
                    EXIT_CONFIG,
                )
            continue
        for section, table in options.apply(args, context).items():
            overrides.setdefault(section, {}).update(table)
    return overrides


def _ask(question: str) -> str:
    try:
        return input(question).strip()
    except EOFError:
        return ""


def add_arguments(parser: argparse.ArgumentParser, *, plugin_options: bool = True) -> None:
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--dir", required=True, help="directory for united.toml and the key")
    parser.add_argument(
        "--plugins",
        metavar="A,B,C",
        help="enable exactly these plugins instead of the preset's (comma-separated)",
    )
    parser.add_argument(
        "--with",
        dest="with_plugins",
        action="append",
        default=[],
        metavar="NAME",
        help="also enable plugin NAME (repeatable); its section is written too",
    )
    if plugin_options:
        _add_plugin_options(parser)


def cmd_init(args: argparse.Namespace) -> int:
    try:
        return _init(args)
    except KeyboardInterrupt:  # at a question
        raise CLIError("interrupted", EXIT_INTERRUPTED) from None


def _init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    plugins = chosen_plugins(args.role, args.plugins, args.with_plugins)
    enabled = plugins if plugins is not None else preset(args.role)["node"]["plugins"]
    for existing in (directory / "united.toml", directory / "identity.key"):
        if existing.exists():  # checked before a plugin writes files of its own
            raise CLIError(f"{existing} already exists; refusing to overwrite it")
    interactive = (
        sys.stdin.isatty()
        and sys.stdout.isatty()
        and os.environ.get("UNITED_NONINTERACTIVE", "") in ("", "0")
    )
    context = InitContext(directory, args.role, _ask if interactive else None)
    overrides = apply_plugin_options(args, enabled, context)
    config_path, identity = write_node_dir(directory, args.role, overrides, plugins=plugins)
    print(f"wrote {config_path}")
    print(f"wrote {directory / 'identity.key'} (owner-only)")
    print(f"peer id: {identity.peer_id}")
    print(f"start it with: united run -c {config_path}")
    return EXIT_OK
