"""The node: load the config, compose the container, run until asked to stop.

Lifecycle, in one structured-concurrency scope (``asyncio.TaskGroup``):

1. ``init_resources()``: the P2P runtime, then the control server and every
   plugin resource, in dependency order;
2. ``united_node_started``; the event pump dispatches P2P events to hooks;
3. on ``request_stop()`` (SIGINT, SIGTERM, ``united ctl stop``): the pump is
   cancelled, ``united_node_stopping`` runs, then ``shutdown_resources()`` stops
   everything in reverse order. A failure part-way through start-up still shuts
   down what did start (``finally``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
from dependency_injector import containers

from .config import ConfigSection, Settings, build_settings, read_toml
from .containers import compose
from .identity import Identity, tighten_private_dir
from .plugins import available_plugins, get_plugin_manager

if TYPE_CHECKING:
    from .p2p.runtime import P2PRuntime
    from .stats import StatsBus

log = logging.getLogger(__name__)

STOPPING_HOOK_TIMEOUT = 1.0


class P2PRuntimeDied(RuntimeError):
    """The libp2p thread ended on its own: the node stops (exit status 1)."""


def declared_sections(pm: pluggy.PluginManager) -> dict[str, ConfigSection]:
    from .config import ConfigError

    declared: dict[str, ConfigSection] = {}
    for batch in pm.hook.united_register_config_sections():
        for section in batch:
            if section.name in declared:
                raise ConfigError(f"two plugins declare the section [{section.name}]")
            declared[section.name] = section
    return declared


def load_settings(path: Path) -> tuple[Settings, pluggy.PluginManager, list[str]]:
    """Read and validate ``united.toml``; return settings, plugin manager and warnings.

    ``[node]`` is validated first (it names the plugins), then every section
    against the schemas of the core and the enabled plugins.
    """
    from .builtin import NodeConfig
    from .config import ConfigError, build_section

    raw = read_toml(path)
    try:
        node_section = build_section(ConfigSection("node", NodeConfig), raw.get("node", {}))
    except ConfigError as exc:
        raise exc.located(path) from None
    available = available_plugins()
    try:
        pm = get_plugin_manager(node_section.plugins, available)
    except ConfigError as exc:
        raise exc.located(path) from None
    declared = declared_sections(pm)
    disabled_sections = set(available) - set(node_section.plugins)
    settings, warnings = build_settings(path, raw, declared, disabled_sections)
    return settings, pm, warnings


async def call_async(results: Iterable[Any]) -> None:
    """Await whatever hook implementations returned awaitables (datasette's await_me_maybe)."""
    for result in results:
        if inspect.isawaitable(result):
            await result


class Node:
    """A running UNITED node. Hooks and control commands receive it."""

    def __init__(self, settings: Settings, pm: pluggy.PluginManager) -> None:
        self.settings = settings
        self.pm = pm
        self.container: containers.DynamicContainer = compose(settings, pm, self)
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._running = False
        self._p2p: P2PRuntime | None = None

    @property
    def _core(self) -> Any:
        return self.container.core

    @property
    def plugin_names(self) -> list[str]:
        return list(self.settings["node"].plugins)

    @property
    def identity(self) -> Identity:
        return self._core.identity()  # type: ignore[no-any-return]

    @property
    def p2p(self) -> P2PRuntime:
        if self._p2p is None:
            from .p2p.runtime import RuntimeStopped

            raise RuntimeStopped("the node has not started its P2P runtime")
        return self._p2p

    @property
    def stats(self) -> StatsBus:
        return self._core.stats()  # type: ignore[no-any-return]

    def service(self, plugin: str, name: str = "service") -> Any:
        """A plugin's service from the container.

        An initialised async ``Resource`` resolves to a finished future: its value
        is returned. A Resource still starting raises ``LookupError``.
        """
        value = getattr(getattr(self.container, plugin), name)()
        if isinstance(value, asyncio.Future):
            if not value.done():
                raise LookupError(f"{plugin}.{name} has not started")
            return value.result()
        return value

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._running

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Start everything, serve until :meth:`request_stop`, then stop everything."""
        started = False
        try:
            # core.data_dir creates it 0700; one found looser (with its files) is tightened.
            tighten_private_dir(self.settings.resolve(self.settings["node"].data_dir))
            await self.container.init_resources()  # type: ignore[misc]
            # An initialised async Resource resolves to an awaitable of its value.
            self._p2p = await self._core.p2p()
            self.started_at = time.time()
            self._running = True
            await call_async(self.pm.hook.united_node_started(node=self))
            started = True
            log.info(
                "node %s up: listening on %s",
                self.identity.peer_id,
                " ".join(self.p2p.listen_addrs),
            )
            if ready is not None:
                ready.set()
            async with asyncio.TaskGroup() as tasks:
                pump = tasks.create_task(self._pump_events(), name="united-event-pump")
                stop = tasks.create_task(self._stop.wait())
                died = tasks.create_task(self._p2p.wait_stopped())
                await asyncio.wait({stop, died}, return_when=asyncio.FIRST_COMPLETED)
                for task in (pump, stop, died):
                    task.cancel()
            if not self._stop.is_set():
                log.error("the P2P runtime stopped unexpectedly; stopping the node")
                raise P2PRuntimeDied("the P2P runtime stopped unexpectedly")
        finally:
            self._running = False
            if started:
                try:
                    async with asyncio.timeout(STOPPING_HOOK_TIMEOUT):
                        await call_async(self.pm.hook.united_node_stopping(node=self))
                except Exception:
                    log.exception("a united_node_stopping hook failed")
            await self.container.shutdown_resources()  # type: ignore[misc]
            log.info("node stopped")

    async def _pump_events(self) -> None:
        from .p2p.events import MessageReceived, PeerConnected, PeerDisconnected

        hook = self.pm.hook
        while True:
            event = await self.p2p.events()
            try:
                if isinstance(event, MessageReceived):
                    results = hook.united_message_received(
                        node=self,
                        message=event.message,
                        from_peer=event.from_peer,
                        received_at=event.received_at,
                    )
                elif isinstance(event, PeerConnected):
                    results = hook.united_peer_connected(
                        node=self,
                        peer_id=event.peer_id,
                        addrs=event.addrs,
                        direction=event.direction,
                        relayed=event.relayed,
                    )
                elif isinstance(event, PeerDisconnected):
                    results = hook.united_peer_disconnected(node=self, peer_id=event.peer_id)
                else:  # pragma: no cover
                    continue
                await call_async(results)
            except Exception:
                log.exception("a plugin failed handling %s", type(event).__name__)
