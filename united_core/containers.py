"""The composition root: one dependency-injector container for the whole node.

``CoreContainer`` builds what every node has (settings, identity, the P2P
runtime, the stats bus, the control server). Each enabled plugin contributes a
container class through ``united_register_containers``; :func:`compose` mounts
them under their names, passing ``core``, the plugin's config section, and any
other plugin container it declares as a ``DependenciesContainer``. Resources
start in dependency order and stop in reverse (``init_resources`` /
``shutdown_resources``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
from dependency_injector import containers, providers

from .acceptance import Acceptor, Origin, Refusal, Verdict
from .api import PluginContainer
from .config import ConfigError, Settings
from .control import ControlCommand, ControlServer
from .identity import Identity, load_key_file
from .p2p.options import HostOptions
from .stats import StatsBus
from .threads import trio_side_hook

if TYPE_CHECKING:
    from .envelope import SignedMessage
    from .node import Node
    from .p2p.runtime import P2PRuntime

log = logging.getLogger(__name__)


def load_identity(settings: Settings) -> Identity:
    return load_key_file(settings.resolve(settings["node"].identity_key))


def data_dir(settings: Settings) -> Path:
    path = settings.resolve(settings["node"].data_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def host_options(settings: Settings, pm: pluggy.PluginManager, data_dir: Path) -> HostOptions:
    options = HostOptions()
    if settings["p2p"].keep_port:
        options.port_file = data_dir / "p2p-ports.json"
    pm.hook.united_p2p_configure(options=options, settings=settings.sections)
    return options


def peer_gate(pm: pluggy.PluginManager, node: Node) -> Callable[[str, str], bool]:
    """``united_peer_allowed`` on the trio thread; refuses everyone until the node is up."""

    def allowed(peer_id: str, direction: str) -> bool:
        with node.hooks_lock, trio_side_hook("united_peer_allowed"):
            if not node.hooks_ready:
                return False
            answers = pm.hook.united_peer_allowed(peer_id=peer_id, direction=direction)
        for answer in answers:
            if inspect.isawaitable(answer):  # an async gate: its answer would be lost
                if inspect.iscoroutine(answer):
                    answer.close()
                log.error("a united_peer_allowed implementation is async; refusing %s", peer_id)
                return False
        return all(answer is not False for answer in answers)

    return allowed


def acceptor(options: HostOptions, pm: pluggy.PluginManager, node: Node) -> Acceptor:
    """The node's one acceptance path: core checks, then every ``united_validate_message``.

    Until every plugin's hooks are registered (and again while stopping) it
    ignores everything: a message is never judged by half a plugin set.
    """

    def plugins(message: SignedMessage, origin: Origin, from_peer: str) -> list[object]:
        hook = "united_validate_message" if origin is Origin.GOSSIP else None
        with node.hooks_lock, trio_side_hook(hook) if hook else contextlib.nullcontext():
            if not node.hooks_ready:
                return [Refusal(Verdict.IGNORE, "the node is starting or stopping")]
            try:
                return list(
                    pm.hook.united_validate_message(
                        message=message, origin=origin, from_peer=from_peer
                    )
                )
            except Exception as exc:
                log.error("united_validate_message failed (%s origin): %s", origin.value, exc)
                raise

    return Acceptor(options.acceptance, plugins)


@contextlib.asynccontextmanager
async def p2p_runtime(
    identity: Identity,
    options: HostOptions,
    pm: pluggy.PluginManager,
    node: Node,
    acceptor: Acceptor,
) -> AsyncIterator[P2PRuntime]:
    from .p2p.runtime import P2PRuntime  # trio and libp2p load only when a node runs

    runtime = P2PRuntime(
        identity,
        options,
        gate=peer_gate(pm, node),
        acceptor=acceptor,
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def collect_commands(pm: pluggy.PluginManager) -> dict[str, ControlCommand]:
    commands: dict[str, ControlCommand] = {}
    for batch in reversed(pm.hook.united_register_commands()):
        for command in batch:
            if command.name in commands:
                raise ConfigError(f"two plugins register the control command {command.name!r}")
            commands[command.name] = command
    return commands


@contextlib.asynccontextmanager
async def control_server(
    settings: Settings, node: Node, pm: pluggy.PluginManager, runtime: P2PRuntime
) -> AsyncIterator[ControlServer]:
    # Depends on the runtime so it starts after the host and stops before it.
    server = ControlServer(settings.resolve(settings["control"].socket), node, collect_commands(pm))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def runtime_dialer(runtime: P2PRuntime) -> Any:
    """The runtime's dialer (``core.dialer``): every plugin dials through it."""
    return runtime.dialer


class CoreContainer(containers.DeclarativeContainer):
    """Services every node has. Plugins reach them as ``core.<name>``."""

    settings = providers.Dependency(instance_of=Settings)
    plugin_manager = providers.Dependency(instance_of=pluggy.PluginManager)
    node: providers.Dependency[Any] = providers.Dependency()

    identity = providers.Singleton(load_identity, settings)
    data_dir = providers.Singleton(data_dir, settings)
    host_options = providers.Singleton(host_options, settings, plugin_manager, data_dir)
    acceptor = providers.Singleton(acceptor, host_options, plugin_manager, node)
    p2p = providers.Resource(p2p_runtime, identity, host_options, plugin_manager, node, acceptor)
    dialer = providers.Singleton(runtime_dialer, p2p)
    stats = providers.Singleton(StatsBus, node)
    control = providers.Resource(control_server, settings, node, plugin_manager, p2p)


def _needs(container: type[containers.DeclarativeContainer]) -> set[str]:
    return {
        name
        for name, provider in container.cls_providers.items()
        if isinstance(provider, providers.DependenciesContainer) and name != "core"
    }


def compose(
    settings: Settings, pm: pluggy.PluginManager, node: Node
) -> containers.DynamicContainer:
    """Build the node's root container (nothing starts until ``init_resources``)."""
    root = containers.DynamicContainer()
    root.core = providers.Container(
        CoreContainer,
        settings=providers.Object(settings),
        plugin_manager=providers.Object(pm),
        node=providers.Object(node),
    )
    specs: dict[str, PluginContainer] = {}
    for batch in pm.hook.united_register_containers():
        for spec in batch:
            if spec.name in specs or spec.name == "core":
                raise ConfigError(f"two plugins mount a container named {spec.name!r}")
            specs[spec.name] = spec
    mounted: set[str] = set()
    order: list[tuple[str, type[containers.DeclarativeContainer]]] = []
    pending = dict(specs)
    while pending:
        ready = [s for s in pending.values() if _needs(s.container) <= mounted]
        if not ready:
            problems = []
            for name, spec in sorted(pending.items()):
                absent = sorted(_needs(spec.container) - set(specs))
                if absent:
                    problems.append(
                        f"plugin {name!r} needs {', '.join(repr(a) for a in absent)}, "
                        "which is not enabled"
                    )
            if not problems:
                problems.append(f"plugins {sorted(pending)} need each other in a cycle")
            raise ConfigError(
                "; ".join(problems) + " (add it to [node] plugins)", section="node", key="plugins"
            )
        # Among those whose dependencies are mounted: the order of [node] plugins.
        listed = list(settings["node"].plugins)
        rank = {name: i for i, name in enumerate(listed)}
        for spec in sorted(ready, key=lambda s: (rank.get(s.name, len(listed)), s.name))[:1]:
            kwargs: dict[str, Any] = {}
            if "core" in spec.container.cls_providers:
                kwargs["core"] = root.core
            if "config" in spec.container.cls_providers and spec.name in settings.sections:
                kwargs["config"] = providers.Object(settings[spec.name])
            for dep in _needs(spec.container):
                kwargs[dep] = getattr(root, dep)
            setattr(root, spec.name, providers.Container(spec.container, **kwargs))
            mounted.add(spec.name)
            order.append((spec.name, spec.container))
            del pending[spec.name]
    root.mounted = order  # start order, read by Node
    return root
