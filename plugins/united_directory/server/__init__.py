"""Coordination server directory: members, invites, channels and presence over WebSocket.

The ``directory`` plugin (entry point ``united_directory.server``). It adds the
directory's hooks (:mod:`united_directory.hookspecs`) and fires
``united_members_changed`` and ``united_channels_changed`` from its registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core.api import ConfigSection, PluginContainer, hookimpl

from .. import hookspecs
from .commands import cli_commands, control_commands
from .config import Config
from .init_options import init_options
from .service import DirectoryService, directory_service

if TYPE_CHECKING:
    import pluggy

    from united_core.api import CliCommand, ControlCommand, InitOptions


class DirectoryHooks:
    def __init__(self, directory: DirectoryService) -> None:
        self.directory = directory

    @hookimpl
    async def united_node_started(self) -> None:
        """Tell the other plugins the member list and the channels (they have started)."""
        await self.directory.announce_state()

    @hookimpl
    def united_history_advanced(self, topic: str, last_seq: int) -> None:
        """Push the channel's new head to its members (coalesced)."""
        self.directory.history_advanced(topic, last_seq)

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return self.directory.stats()


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Resource(directory_service, config, core.node, core.p2p, core.data_dir)
    hooks = providers.Singleton(DirectoryHooks, service)


@hookimpl
def united_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    hookspecs.add_to(pluginmanager)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [ConfigSection("directory", Config, "The coordination server's directory (WebSocket).")]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("directory", Container)]


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return control_commands()


@hookimpl
def united_register_cli_commands() -> list[CliCommand]:
    return cli_commands()


@hookimpl
def united_register_init_options() -> list[InitOptions]:
    """``united init --public-url/--public-host``, ``--self-signed``, ``--tls-cert/--tls-key``."""
    return init_options()
