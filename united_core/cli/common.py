"""What every ``united`` sub-command shares: exit statuses, roles, logging set-up, and
where the config is when ``-c`` is not given.

Why a module of its own: the sub-command modules import it and not one another.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..api import printable

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C before the node handles it
# The node stopped to be started again (a key rotation): sysexits' EX_TEMPFAIL;
# the systemd unit restarts on it (RestartForceExitStatus=75).
EXIT_RESTART = 75
ROLES = ("server", "client")

log = logging.getLogger("united")

# ---- the config file ---------------------------------------------------------------

CONFIG_OPTIONS = ("-c", "--config")
CONFIG_ENV = "UNITED_CONFIG"
CONFIG_NAME = "united.toml"
NO_CONFIG = (
    f"no config: pass -c CONFIG, set {CONFIG_ENV}, or put {CONFIG_NAME} in the current "
    f"directory or in $XDG_CONFIG_HOME/united/ (~/.config/united/)"
)


def default_config(environ: Mapping[str, str] | None = None) -> Path | None:
    """The config used when ``-c`` is not given, first found of: ``$UNITED_CONFIG``
    (used as given, even if missing: the error then names it), ``./united.toml``,
    ``$XDG_CONFIG_HOME/united/united.toml`` (``~/.config/united/united.toml``).
    ``None`` if there is none. The path is absolute: the node's relative paths
    (data, socket, key) are relative to the config file, wherever it was found."""
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser().absolute()
    here = Path(CONFIG_NAME)
    if here.is_file():
        return here.absolute()
    xdg = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(xdg):  # the XDG spec: a relative value is ignored
        home = env.get("HOME") or os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        xdg = os.path.join(home, ".config")
    candidate = Path(xdg) / "united" / CONFIG_NAME
    return candidate if candidate.is_file() else None


# ---- logging -----------------------------------------------------------------------

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "text", "journal")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Libraries whose own logs are noise unless asked for (`-vv`, or the level `debug`):
# py-libp2p logs routine dial and handshake failures as warnings, aiosqlite every
# statement at debug.
QUIET_LIBRARIES = {
    "libp2p": logging.ERROR,
    "aiosqlite": logging.WARNING,
    "multiaddr": logging.WARNING,
    "trio-websocket": logging.WARNING,
}
# syslog priorities (sd-daemon(3)), which journald reads from a "<N>" line prefix.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


@dataclass(frozen=True)
class LogOptions:
    """The command line's say on logging: ``--log-level``, ``-v``/``-vv``, ``--log-format``.

    The level is ``--log-level`` if given, else ``debug`` for ``-v`` (UNITED's own
    modules; libraries stay quiet) and ``-vv`` (everything, py-libp2p included),
    else ``[node] log_level``. ``debug`` given by name (``--log-level`` or the
    config) shows the libraries too, as ``-vv`` does.
    """

    level: str | None = None
    verbose: int = 0
    format: str = "auto"

    @property
    def overrides_config(self) -> bool:
        return self.level is not None or self.verbose > 0

    def resolve(self, configured: str) -> tuple[str, bool]:
        """(level, whether libraries log at it too) given the config's ``log_level``."""
        if self.level is not None:
            return self.level, self.level == "debug"
        if self.verbose >= 2:
            return "debug", True
        if self.verbose == 1:
            return "debug", False
        return configured, configured == "debug"


def under_journald(stream: TextIO | None = None) -> bool:
    """True if ``stream`` (stderr) is connected to the journal: systemd sets
    ``JOURNAL_STREAM=<device>:<inode>`` of the stream it gave the service, and the
    service checks that its stderr is still that stream (systemd.exec(5))."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class PrintableFormatter(logging.Formatter):
    """Log lines with what peers wrote in them (a server's error message, a display
    name) made :func:`~united_core.api.printable`: a log read on a terminal cannot be
    retitled or cleared by it. Line breaks stay (tracebacks)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), multiline=True)


class JournalFormatter(PrintableFormatter):
    """``<priority>logger: message`` for journald: no timestamp (the journal has its
    own), the level as a syslog priority on every line (a traceback's lines too)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{_PRIORITY.get(record.levelno, 6 if record.levelno < 30 else 3)}>"
        return "\n".join(prefix + line for line in text.splitlines())


_handler: logging.Handler | None = None


def setup_logging(level: str, *, libraries: bool | None = None, fmt: str = "auto") -> str:
    """Log to stderr at ``level``; the format used (``text`` or ``journal``).

    ``fmt`` ``auto`` picks ``journal`` when stderr is the journal
    (:func:`under_journald`), else ``text`` (with timestamps). Called again, it
    replaces its handler (``united run`` logs through one handler).
    """
    global _handler
    if fmt == "auto":
        fmt = "journal" if under_journald() else "text"
    handler = logging.StreamHandler(sys.stderr)
    formatter = JournalFormatter() if fmt == "journal" else PrintableFormatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    _handler = handler
    set_log_level(level, libraries=level == "debug" if libraries is None else libraries)
    return fmt


def set_log_level(level: str, *, libraries: bool) -> None:
    """Set the level (again: SIGHUP); libraries quiet unless ``libraries``."""
    logging.getLogger().setLevel(getattr(logging, level.upper()))
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(logging.NOTSET if libraries else quiet)
