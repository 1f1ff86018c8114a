"""``united init``: write a node directory (a commented ``united.toml`` and a key).

Why a module of its own: turning a preset, a plugin set and overrides into a
configuration file is the one job here. The file has a commented section for
every plugin that is enabled (the preset's, or the ones chosen with
``--plugins`` / ``--with``, third-party plugins included): their schemas come
from a plugin manager built for exactly that plugin list.
"""

from __future__ import annotations

import argparse
import importlib.resources
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..api import CLIError
from ..config import ConfigSection, render_section
from ..identity import Identity, IdentityError, load_key_file, write_key_file
from .common import EXIT_OK, ROLES

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def cmd_init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    plugins = chosen_plugins(args.role, args.plugins, args.with_plugins)
    config_path, identity = write_node_dir(directory, args.role, plugins=plugins)
    print(f"wrote {config_path}")
    print(f"wrote {directory / 'identity.key'} (owner-only)")
    print(f"peer id: {identity.peer_id}")
    print(f"start it with: united run -c {config_path}")
    return EXIT_OK
