"""The node: load the config, compose the container, run until asked to stop.

Lifecycle, in one structured-concurrency scope (``asyncio.TaskGroup``), the way
aiohttp's cleanup contexts do it (an explicit order, not dependency-injector's
``init_resources()``, which starts unlinked async Resources concurrently):

1. every Resource starts one at a time: the core's (P2P runtime, control API),
   then each plugin's, plugins in dependency order, each container in
   declaration order; the control API answers "starting" meanwhile;
2. each plugin's ``hooks`` object is registered and the gates open (the member
   gate and the acceptance path refuse everything until then);
3. ``united_node_started``; only now may plugins fire state-change hooks; the
   event pump dispatches P2P events to hooks;
4. on ``request_stop()`` (SIGINT, SIGTERM, ``united ctl stop``):
   ``united_node_stopping``, the gates close and hook objects are unregistered,
   then every Resource stops in reverse order. A failure part-way through
   start-up still stops what did start (``finally``).

Before anything starts, the node locks its data directory (``node.lock``,
``flock``): a second node on the same directory (a node started twice, two
configs sharing ``data_dir``) stops right there, with one line, before it
opens a port, a socket or a database.
"""

from __future__ import annotations

import asyncio
import fcntl
import inspect
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy
from dependency_injector import containers, providers

from .api import NodeState, call_async
from .config import ConfigError, ConfigSection, Settings, build_settings, read_toml
from .containers import CoreContainer, collect_commands, compose
from .identity import Identity, make_private_dir
from .plugins import available_plugins, get_plugin_manager

if TYPE_CHECKING:
    from .p2p.runtime import P2PRuntime
    from .stats import StatsBus

log = logging.getLogger(__name__)
T = TypeVar("T")

STOPPING_HOOK_TIMEOUT = 1.0


def _unknown_hooks(pm: pluggy.PluginManager, objects: list[object]) -> list[str]:
    """``plugin.method`` for each hook implementation with no spec (pluggy's check_pending,
    limited to the hook objects, since module-level ones were checked at load)."""
    unknown = []
    for obj in objects:
        name = pm.get_name(obj)
        for hook in pm.get_hookcallers(obj) or []:
            if hook.spec is None:
                for impl in hook.get_hookimpls():
                    if impl.plugin is obj and not impl.optionalhook:
                        unknown.append(f"{name}.{hook.name}")
    return sorted(unknown)


def _is_instance(value: object, kind: type) -> bool:
    try:
        return isinstance(value, kind)
    except TypeError:  # a Protocol that is not runtime_checkable
        return False


class P2PRuntimeDied(RuntimeError):
    """The libp2p thread ended on its own: the node stops (exit status 1)."""


class NodeAlreadyRunning(RuntimeError):
    """Another node holds the lock of this data directory (exit status 1)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


LOCK_FILE = "node.lock"
# A node of this same process still stopping on the directory (a test, an embedding
# application restarting its node) is waited for, at most this long.
OWN_LOCK_WAIT = 10.0


def lock_data_dir(data_dir: Path) -> int:
    """Take ``data_dir/node.lock`` (``flock``, released when the fd closes, even on a
    crash) and write our pid in it; the fd. :class:`NodeAlreadyRunning` if it is held."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        pid = int(holder) if holder.isdigit() else None
        raise NodeAlreadyRunning(
            f"{data_dir}: another node is already running with this data directory"
            + (f" (pid {pid})" if pid else ""),
            pid,
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


async def acquire_data_dir(data_dir: Path, own_wait: float = OWN_LOCK_WAIT) -> int:
    """:func:`lock_data_dir`; if the holder is a node of this process (stopping, since
    ``running_node`` or an application restarts it), wait for it, up to ``own_wait``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + own_wait
    while True:
        try:
            return lock_data_dir(data_dir)
        except NodeAlreadyRunning as exc:
            if exc.pid != os.getpid() or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.05)


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
    disabled = set(available) - set(node_section.plugins)
    # A plugin's section is named after it, "-" written "_" ([relay_client] of relay-client).
    disabled_sections = disabled | {name.replace("-", "_") for name in disabled}
    settings, warnings = build_settings(path, raw, declared, disabled_sections)
    return settings, pm, warnings


class MissingService(LookupError):
    """``require()`` found no started service of the type asked for."""


class Node:
    """A running UNITED node. Asyncio-side hooks and control commands receive it
    (typed as :class:`~united_core.api.NodeAPI`)."""

    def __init__(self, settings: Settings, pm: pluggy.PluginManager) -> None:
        self.settings = settings
        self.pm = pm
        self.container: containers.DynamicContainer = compose(settings, pm, self)
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._state = NodeState.STOPPED
        self._p2p: P2PRuntime | None = None
        # (plugin, attribute, provider, value) of everything started, in start order.
        self._started: list[tuple[str, str, Any, Any]] = []
        self._hook_objects: list[object] = []
        # Held while plugin hook objects are (un)registered and while trio-side
        # hooks run: a validator never sees half a plugin set.
        self.hooks_lock = threading.RLock()
        self._hooks_ready = False
        self._lock_fd: int | None = None
        self.restart_requested = False  # see request_restart

    @property
    def _core(self) -> Any:
        return self.container.core

    @property
    def plugin_names(self) -> list[str]:
        return list(self.settings["node"].plugins)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    @property
    def identity(self) -> Identity:
        identity: Identity = self._core.identity()
        return identity

    @property
    def p2p(self) -> P2PRuntime:
        if self._p2p is None:
            from .p2p.runtime import RuntimeStopped

            raise RuntimeStopped("the node has not started its P2P runtime")
        return self._p2p

    @property
    def stats(self) -> StatsBus:
        return self._core.stats()  # type: ignore[no-any-return]

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def running(self) -> bool:
        return self._state is NodeState.RUNNING

    @property
    def hooks_ready(self) -> bool:
        """True while every plugin's hook object is registered (the gates are open)."""
        return self._hooks_ready

    def require(self, kind: type[T]) -> T:
        """The started service of type ``kind`` (or implementing that protocol).

        Safe from any thread: it reads what the node recorded when each service
        started, never the container (which would touch the event loop).
        """
        exact = [v for _, _, _, v in self._started if type(v) is kind]
        found = exact or [v for _, _, _, v in self._started if _is_instance(v, kind)]
        if not found:
            what = getattr(kind, "__name__", repr(kind))
            raise MissingService(
                f"no started service is a {what}"
                + (" (the node is starting)" if self._state is NodeState.STARTING else "")
            )
        if len(found) > 1:
            raise MissingService(f"{len(found)} services are a {kind.__name__}; ask for a subtype")
        result: T = found[0]
        return result

    def service(self, plugin: str, name: str = "service") -> Any:
        """A plugin's started service by mount and attribute name (tests, debugging).

        Plugins use :meth:`require` or constructor injection instead.
        """
        for p, attr, _, value in self._started:
            if p == plugin and attr == name:
                return value
        raise LookupError(f"{plugin}.{name} has not started")

    def request_stop(self) -> None:
        self._stop.set()

    def request_restart(self) -> None:
        """Stop, asking to be started again: ``united run`` then exits with
        :data:`EXIT_RESTART` (75), which the systemd unit restarts on
        (``RestartForceExitStatus=75``). A key rotation needs it: the node must come
        back under its new PeerId."""
        self.restart_requested = True
        self._stop.set()

    async def wait_stop_requested(self) -> None:
        """Return once a stop was asked for (SIGINT, SIGTERM, ``ctl stop``)."""
        await self._stop.wait()

    # ---- lifecycle ------------------------------------------------------------------

    def _providers_in_order(self) -> list[tuple[str, str, Any]]:
        """(plugin, attribute, provider) of every Resource, Singleton and ``hooks``
        provider, in start order: the core's, then each plugin's in dependency order
        (the order ``compose`` mounted them), each in declaration order."""
        order: list[tuple[str, str, Any]] = []
        mounted: list[tuple[str, Any]] = list(getattr(self.container, "mounted", []))
        mounts = [("core", CoreContainer), *mounted]
        for mount, cls in mounts:
            holder = getattr(self.container, mount)
            for attr, declared in cls.cls_providers.items():
                if isinstance(declared, providers.Resource | providers.BaseSingleton) or (
                    attr == "hooks" and isinstance(declared, providers.Provider)
                ):
                    order.append((mount, attr, getattr(holder, attr)))
        return order

    async def _start(self) -> None:
        """Start every Resource one by one, in order (aiohttp's cleanup contexts)."""
        hooks: list[tuple[str, Any]] = []
        for plugin, attr, provider in self._providers_in_order():
            if plugin != "core" and attr == "hooks":
                hooks.append((plugin, provider))
                continue
            value = provider()
            if inspect.isawaitable(value):
                value = await value
            self._started.append((plugin, attr, provider, value))
            if plugin == "core" and attr == "p2p":
                self._p2p = value
        objects = []
        for plugin, provider in hooks:
            obj = provider()
            if inspect.isawaitable(obj):  # it depends on an async Resource (already started)
                obj = await obj
            objects.append((plugin, obj))
        with self.hooks_lock:
            for plugin, obj in objects:
                self.pm.register(obj, name=f"{plugin}.hooks")
                self._hook_objects.append(obj)
            unknown = _unknown_hooks(self.pm, self._hook_objects)
            if unknown:
                raise ConfigError(
                    "a plugin's hooks object implements unknown hooks (misspelt? "
                    "mark it @hookimpl(optionalhook=True) if another plugin adds it): "
                    + ", ".join(unknown),
                    section="node",
                    key="plugins",
                )
            self._hooks_ready = True

    async def _stop_started(self) -> None:
        """Unregister hook objects, then stop what started, in reverse order."""
        with self.hooks_lock:
            self._hooks_ready = False
            for obj in reversed(self._hook_objects):
                self.pm.unregister(obj)
            self._hook_objects.clear()
        while self._started:
            plugin, attr, provider, _ = self._started.pop()
            if not isinstance(provider, providers.Resource):
                continue
            try:
                result = provider.shutdown()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("stopping %s.%s failed", plugin, attr)

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Start everything, serve until :meth:`request_stop`, then stop everything.

        1. every Resource starts, one at a time, in order (the P2P runtime and
           the control API first; the control API answers "starting" meanwhile);
        2. plugin hook objects are registered and the gates open;
        3. ``united_node_started`` (state-change hooks may fire from here on);
        4. on stop: ``united_node_stopping``, hook objects unregistered, every
           Resource stopped in reverse. A failure part-way through start-up
           still stops what did start, and logs nothing more: the caller
           reports the failure (``united run``: one line).

        First of all the data directory is locked (:func:`lock_data_dir`).
        """
        started = False
        self._state = NodeState.STARTING
        try:
            # Created 0700; one found looser (with its files) is tightened.
            data_dir = make_private_dir(self.settings.resolve(self.settings["node"].data_dir))
            self._lock_fd = await acquire_data_dir(data_dir)
            await self._start()
            self.started_at = time.time()
            self._state = NodeState.RUNNING
            self.control_ready()
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
                died = tasks.create_task(self.p2p.wait_stopped())
                await asyncio.wait({stop, died}, return_when=asyncio.FIRST_COMPLETED)
                for task in (pump, stop, died):
                    task.cancel()
            if not self._stop.is_set():
                log.error("the P2P runtime stopped unexpectedly; stopping the node")
                raise P2PRuntimeDied("the P2P runtime stopped unexpectedly")
        finally:
            self._state = NodeState.STOPPING
            if started:
                try:
                    async with asyncio.timeout(STOPPING_HOOK_TIMEOUT):
                        await call_async(self.pm.hook.united_node_stopping(node=self))
                except Exception:
                    log.exception("a united_node_stopping hook failed")
            await self._stop_started()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None
            self._state = NodeState.STOPPED
            if started:
                log.info("node stopped")

    def control_ready(self) -> None:
        """Let the control API serve every command (plugin hook objects add theirs)."""
        for plugin, attr, _, value in self._started:
            if plugin == "core" and attr == "control":
                value.set_commands(collect_commands(self.pm))

    async def _pump_events(self) -> None:
        from .p2p.events import (
            AddrsChanged,
            MessageReceived,
            PeerConnected,
            PeerDisconnected,
            ReachabilityChanged,
        )

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
                elif isinstance(event, AddrsChanged):
                    results = hook.united_addrs_changed(node=self, addrs=event.addrs)
                elif isinstance(event, ReachabilityChanged):
                    results = hook.united_reachability_changed(
                        node=self, reachability=event.reachability, nat=event.nat
                    )
                else:  # pragma: no cover
                    continue
                await call_async(results)
            except Exception:
                log.exception("a plugin failed handling %s", type(event).__name__)
