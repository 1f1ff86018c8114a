"""Client discovery: the session with the coordination server, member-list cache, `united join`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core import hookimpl
from united_core.config import ConfigSection
from united_core.containers import PluginContainer

from .commands import cli_commands, control_commands
from .config import Config
from .service import discovery_service

if TYPE_CHECKING:
    from united_core.cli import CliCommand
    from united_core.control import ControlCommand
    from united_core.node import Node


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Resource(
        discovery_service, config, core.node, core.identity, core.p2p, core.data_dir
    )


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


@hookimpl
def united_collect_stats(node: Node) -> dict[str, Any]:
    return {"discovery": node.service("discovery").stats()}
