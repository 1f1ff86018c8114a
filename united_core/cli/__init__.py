"""The ``united`` command: init, run, id, plugins, ctl, console, and plugins' commands.

One module per job:

- :mod:`.init`: ``united init``, writing a node directory (config and key);
- :mod:`.run`: ``united run``, a node in the foreground;
- :mod:`.info`: ``united id`` and ``united plugins``, read without starting a node;
- :mod:`.client`: ``united ctl`` and ``united console``, talking to a running node;
- :mod:`.entry`: the parser (with plugins' commands) and :func:`main`;
- :mod:`.common`: exit statuses and logging set-up.

Exit status: 0 on success, 1 on a runtime failure (node unreachable, port in
use, command refused), 2 on a configuration or usage error. Expected failures
print one line to stderr, never a traceback.

``main`` is the console-script entry point (``united_core.cli:main``).
"""

from __future__ import annotations

from ..api import CliCommand, CLIError
from .client import call_running_node
from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ROLES
from .entry import build_parser, main, plugin_cli_commands
from .init import render_config, write_node_dir

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "ROLES",
    "CLIError",
    "CliCommand",
    "build_parser",
    "call_running_node",
    "main",
    "plugin_cli_commands",
    "render_config",
    "write_node_dir",
]
