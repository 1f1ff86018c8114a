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
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pluggy
from dependency_injector import containers, providers

from .acceptance import Acceptor, Origin
from .config import ConfigError, Settings
from .control import ControlCommand, ControlServer
from .identity import Identity, load_key_file
from .p2p.options import HostOptions
from .stats import StatsBus

if TYPE_CHECKING:
    from .envelope import SignedMessage
    from .node import Node
    from .p2p.runtime import HostContext, P2PRuntime

log = logging.getLogger(__name__)


class PluginContainer(NamedTuple):
    """What ``united_register_containers`` returns: a mount name and a container class."""

    name: str
    container: type[containers.DeclarativeContainer]


def load_identity(settings: Settings) -> Identity:
    return load_key_file(settings.resolve(settings["node"].identity_key))


def data_dir(settings: Settings) -> Path:
    path = settings.resolve(settings["node"].data_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def host_options(settings: Settings, pm: pluggy.PluginManager) -> HostOptions:
    options = HostOptions()
    pm.hook.united_p2p_configure(options=options, settings=settings.sections)
    return options


def peer_gate(pm: pluggy.PluginManager, node: Node) -> Callable[[str, str], bool]:
    def allowed(peer_id: str, direction: str) -> bool:
        answers = pm.hook.united_peer_allowed(node=node, peer_id=peer_id, direction=direction)
        return all(answer is not False for answer in answers)

    return allowed


def acceptor(options: HostOptions, pm: pluggy.PluginManager, node: Node) -> Acceptor:
    """The node's one acceptance path: core checks, then every ``united_validate_message``."""

    def plugins(message: SignedMessage, origin: Origin, from_peer: str) -> list[object]:
        return list(
            pm.hook.united_validate_message(
                node=node, message=message, origin=origin, from_peer=from_peer
            )
        )

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

    def host_started(context: HostContext) -> None:
        pm.hook.united_p2p_host_started(node=node, context=context)

    runtime = P2PRuntime(
        identity,
        options,
        gate=peer_gate(pm, node),
        acceptor=acceptor,
        on_host_started=host_started,
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


class CoreContainer(containers.DeclarativeContainer):
    """Services every node has. Plugins reach them as ``core.<name>``."""

    settings = providers.Dependency(instance_of=Settings)
    plugin_manager = providers.Dependency(instance_of=pluggy.PluginManager)
    node: providers.Dependency[Any] = providers.Dependency()

    identity = providers.Singleton(load_identity, settings)
    data_dir = providers.Singleton(data_dir, settings)
    host_options = providers.Singleton(host_options, settings, plugin_manager)
    acceptor = providers.Singleton(acceptor, host_options, plugin_manager, node)
    p2p = providers.Resource(p2p_runtime, identity, host_options, plugin_manager, node, acceptor)
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
    pending = dict(specs)
    while pending:
        ready = [s for s in pending.values() if _needs(s.container) <= mounted]
        if not ready:
            missing = {
                name: sorted(_needs(s.container) - set(specs)) for name, s in pending.items()
            }
            raise ConfigError(
                "plugin containers need services that no enabled plugin provides "
                f"(or need each other in a cycle): {missing}",
                section="node",
                key="plugins",
            )
        for spec in sorted(ready, key=lambda s: s.name):
            kwargs: dict[str, Any] = {"core": root.core}
            if "config" in spec.container.cls_providers and spec.name in settings.sections:
                kwargs["config"] = providers.Object(settings[spec.name])
            for dep in _needs(spec.container):
                kwargs[dep] = getattr(root, dep)
            setattr(root, spec.name, providers.Container(spec.container, **kwargs))
            mounted.add(spec.name)
            del pending[spec.name]
    return root
