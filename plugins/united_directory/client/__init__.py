"""Client discovery: the session with the coordination server, member-list cache, `united join`.

The ``discovery`` plugin (entry point ``united_directory.client``). It adds the
directory's hooks (:mod:`united_directory.hookspecs`) and fires
``united_members_changed``, ``united_channels_changed`` and
``united_presence_changed`` from its cache and the server's pushes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core.api import ConfigSection, PluginContainer, hookimpl

from .. import hookspecs
from .commands import cli_commands, control_commands
from .config import Config
from .service import DiscoveryService, discovery_service

if TYPE_CHECKING:
    import pluggy

    from united_core.api import CliCommand, ControlCommand

log = logging.getLogger(__name__)


class DiscoveryHooks:
    def __init__(self, discovery: DiscoveryService) -> None:
        self.discovery = discovery

    @hookimpl
    async def united_node_started(self) -> None:
        """Announce the cached member list and channels, then keep a session."""
        await self.discovery.begin()

    @hookimpl
    async def united_addrs_changed(self) -> None:
        """A relayed address came or went: the server's presence must say so."""
        try:
            await self.discovery.announce_addrs()
        except Exception as exc:  # no session now: the next login announces them
            log.info("re-announcing addresses deferred: %s", exc)

    @hookimpl
    async def united_reachability_changed(self) -> None:
        """Our AutoNAT verdict changed: presence carries it to the others' panels."""
        try:
            await self.discovery.announce_addrs()
        except Exception as exc:  # no session now: the next login announces it
            log.info("announcing reachability deferred: %s", exc)

    @hookimpl
    def united_peer_connected(self, peer_id: str) -> None:
        """The server's libp2p node is reachable again: log in now, not at the next
        backoff step."""
        self.discovery.peer_reachable(peer_id)

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return self.discovery.stats()

    @hookimpl
    def united_status(self) -> dict[str, Any]:
        """`ctl status`: the session with the server (URL, logged in since, last error)."""
        return self.discovery.status()


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Resource(
        discovery_service, config, core.node, core.identity, core.p2p, core.data_dir
    )
    hooks = providers.Singleton(DiscoveryHooks, service)


@hookimpl
def united_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    hookspecs.add_to(pluginmanager)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [ConfigSection("discovery", Config, "The session with the coordination server.")]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("discovery", Container)]


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return control_commands()


@hookimpl
def united_register_cli_commands() -> list[CliCommand]:
    return cli_commands()
