"""``united id`` and ``united plugins``: what a node is, read without starting it.

Why a module of its own: these commands read a config file (or the installed
plugins) and load no plugin set, so they work on a node that cannot start.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..api import CLIError
from ..config import ConfigError, read_toml
from ..identity import IdentityError, load_key_file
from .common import EXIT_CONFIG, EXIT_OK


def raw_node_value(path: Path, key: str, default: Any) -> Any:
    """``[node] key`` of the file, unvalidated (for commands that load no plugins)."""
    node = read_toml(path).get("node", {})
    if not isinstance(node, dict):
        raise ConfigError("must be a table", file=path, section="node")
    return node.get(key, default)


def cmd_id(args: argparse.Namespace) -> int:
    path = Path(args.config)
    key_name = raw_node_value(path, "identity_key", "identity.key")
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


def cmd_plugins(args: argparse.Namespace) -> int:
    from ..plugins import available_plugins

    enabled: set[str] = set()
    if args.config:
        plugins = raw_node_value(Path(args.config), "plugins", [])
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
