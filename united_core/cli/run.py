"""``united run``: run a node in the foreground until SIGINT, SIGTERM or ``ctl stop``.

Why a module of its own: it is the only sub-command that starts a node, and
the one that maps start-up failures (key, port, database, runtime) to exit
statuses, speaks to the service manager (:mod:`.sdnotify`: ``READY=1`` once
the node is up, ``WATCHDOG=1`` while its loops answer, ``STOPPING=1``) and
handles SIGHUP (the config is read again: ``[node] log_level`` applies at
once, anything else changed is named in one line saying a restart applies it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api import CLIError
from ..config import ConfigError
from ..identity import IdentityError
from .common import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RESTART,
    LogOptions,
    log,
    set_log_level,
    setup_logging,
)
from .sdnotify import Notifier

if TYPE_CHECKING:
    from ..api import Settings
    from ..node import Node

# STATUS= is refreshed this often when systemd asks for no watchdog.
STATUS_INTERVAL = 30.0


def log_options(args: argparse.Namespace) -> LogOptions:
    return LogOptions(
        level=getattr(args, "log_level", None),
        verbose=getattr(args, "verbose", 0) or 0,
        format=getattr(args, "log_format", None) or "auto",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from ..control import ControlSocketBusy
    from ..node import Node, NodeAlreadyRunning, P2PRuntimeDied, load_settings
    from ..sqlite import DatabaseUnusable

    # A SIGHUP before the event loop handles it (while plugins load) must not kill
    # the node (exit 129): remember it, and reload once the node runs.
    hup_early: list[bool] = []
    previous_hup = signal.signal(signal.SIGHUP, lambda *_: hup_early.append(True))
    try:
        config = Path(args.config)
        settings, pm, warnings = load_settings(config)
        options = log_options(args)
        level, libraries = options.resolve(settings["node"].log_level)
        setup_logging(level, libraries=libraries, fmt=options.format)
        for warning in warnings:
            log.warning("%s", warning)
        notifier = Notifier()
        restart: list[bool] = []

        async def main() -> None:
            node = Node(settings, pm)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, node.request_stop)
            reloader = Reloader(config, settings, options, notifier, node)
            loop.add_signal_handler(signal.SIGHUP, reloader.reload)
            if hup_early:
                loop.call_soon(reloader.reload)
            ready = asyncio.Event()
            manager = asyncio.create_task(service_manager(node, ready, notifier))
            try:
                await node.run(ready)
            finally:
                manager.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await manager
            if node.restart_requested:
                restart.append(True)

        try:
            asyncio.run(main())
        except Exception as exc:
            cause = leaf(exc)
            log.debug("the node failed", exc_info=exc)  # the traceback, for -v
            if isinstance(cause, IdentityError | ConfigError):
                raise CLIError(str(cause), EXIT_CONFIG) from None
            if isinstance(
                cause, OSError | ControlSocketBusy | NodeAlreadyRunning | DatabaseUnusable
            ):
                raise CLIError(f"cannot start: {cause}") from None
            if isinstance(cause, P2PRuntimeDied):
                raise CLIError(str(cause)) from None
            raise
        finally:
            notifier.close()
    except KeyboardInterrupt:  # Ctrl-C before the node handles SIGINT (loading plugins)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGHUP, previous_hup)
    if restart:
        log.info("stopped to be started again (exit status %d)", EXIT_RESTART)
        return EXIT_RESTART
    return EXIT_OK


def leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


# ---- the service manager (systemd) ---------------------------------------------------------


async def _answers(node: Node, within: float) -> int | None:
    """How many peers are connected, asked of the P2P runtime (a round trip through
    the asyncio loop and the trio thread); ``None`` if it does not answer in time."""
    try:
        async with asyncio.timeout(within):
            return len(await node.p2p.peers())
    except Exception:
        return None


async def service_manager(node: Node, ready: asyncio.Event, notifier: Notifier) -> None:
    """``READY=1`` once the node is up, ``WATCHDOG=1`` every watchdog interval while
    the asyncio loop runs and the P2P runtime answers, ``STOPPING=1`` when asked to
    stop. Does nothing without ``$NOTIFY_SOCKET``."""
    if not notifier.enabled:
        return
    notifier.notify("STATUS=starting")
    stopping = asyncio.create_task(node.wait_stop_requested())
    try:
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not stopping.done():
            peers = await _answers(node, 5.0)
            notifier.notify("READY=1", f"STATUS={running_status(node, peers)}")
            if notifier.watchdog_interval is not None:
                notifier.notify("WATCHDOG=1")
            await _keep_alive(node, notifier, stopping)
        notifier.notify("STOPPING=1", "STATUS=stopping")
    finally:
        stopping.cancel()


async def _keep_alive(node: Node, notifier: Notifier, stopping: asyncio.Task[None]) -> None:
    interval = notifier.watchdog_interval or STATUS_INTERVAL
    loop = asyncio.get_running_loop()
    next_at = loop.time() + interval
    while not stopping.done():
        await asyncio.wait({stopping}, timeout=max(0.0, next_at - loop.time()))
        if stopping.done():
            return
        next_at = loop.time() + interval
        peers = await _answers(node, interval)
        if peers is None:
            log.warning("the P2P runtime did not answer within %.1f s", interval)
            continue  # no ping: systemd restarts the node if this lasts WatchdogSec
        fields = [f"STATUS={running_status(node, peers)}"]
        if notifier.watchdog_interval is not None:
            fields.insert(0, "WATCHDOG=1")
        notifier.notify(*fields)


def running_status(node: Node, peers: int | None) -> str:
    """The ``STATUS=`` line ``systemctl status`` shows."""
    try:
        listen = " ".join(node.p2p.listen_addrs)
    except Exception:
        listen = "-"
    if peers is None:
        return f"running; listening on {listen}"
    return f"running: {peers} peers connected; listening on {listen}"


# ---- SIGHUP --------------------------------------------------------------------------------


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """``[section] key`` of each setting that differs (``[section]`` for a section
    added or removed)."""
    changed: list[str] = []
    for name in sorted(set(old.sections) | set(new.sections)):
        before: Any = old.sections.get(name)
        after: Any = new.sections.get(name)
        if before == after:
            continue
        if dataclasses.is_dataclass(before) and type(before) is type(after):
            for field in dataclasses.fields(before):
                if getattr(before, field.name) != getattr(after, field.name):
                    changed.append(f"[{name}] {field.name}")
        else:
            changed.append(f"[{name}]")
    return changed


class Reloader:
    """SIGHUP: read the config again; apply ``[node] log_level`` (unless the command
    line set the level), and name in one line whatever else changed: the node
    keeps running with what it started with until it is restarted."""

    def __init__(
        self,
        path: Path,
        settings: Settings,
        options: LogOptions,
        notifier: Notifier,
        node: Node | None = None,
    ) -> None:
        self.path = path
        self.settings = settings
        self.options = options
        self.notifier = notifier
        self.node = node
        self.reloads = 0

    def reload(self) -> None:
        from ..node import load_settings

        self.reloads += 1
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            try:
                new, _, _ = load_settings(self.path)
            except ConfigError as exc:
                log.error("reload: %s; the running configuration stays", exc)
                return
            except Exception as exc:  # unreadable, a plugin failing to load, ...
                log.error(
                    "reload failed (%s: %s); the running configuration stays",
                    type(exc).__name__,
                    exc,
                )
                return
            self._apply(new)
        finally:
            fields = ["READY=1"]
            if self.node is not None and self.node.running:
                fields.append(f"STATUS={running_status(self.node, None)}")
            self.notifier.notify(*fields)

    def _apply(self, new: Settings) -> None:
        applied: list[str] = []
        changed = changed_settings(self.settings, new)
        if "[node] log_level" in changed:
            changed.remove("[node] log_level")
            if self.options.overrides_config:
                log.info("reload: [node] log_level not applied: the command line sets the level")
            else:
                level, libraries = self.options.resolve(new["node"].log_level)
                set_log_level(level, libraries=libraries)
                self.settings = _with_node(self.settings, log_level=new["node"].log_level)
                applied.append(f"log level {level}")
        done = ", ".join(applied) or "nothing to apply"
        if changed:
            log.warning(
                "reload: %s; changed but applied only by a restart: %s",
                done,
                ", ".join(changed),
            )
        else:
            log.info("reload: %s", done if applied else "configuration unchanged")


def _with_node(settings: Settings, **values: Any) -> Settings:
    """``settings`` with ``[node]`` fields replaced (what a reload applied)."""
    sections = dict(settings.sections)
    sections["node"] = dataclasses.replace(sections["node"], **values)
    return dataclasses.replace(settings, sections=sections)
