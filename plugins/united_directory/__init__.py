"""Coordination server directory: members, invites, channels and presence over WebSocket."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core import hookimpl
from united_core.config import ConfigSection
from united_core.containers import PluginContainer

from .commands import cli_commands, control_commands
from .config import Config
from .service import directory_service

if TYPE_CHECKING:
    from united_core.cli import CliCommand
    from united_core.control import ControlCommand
    from united_core.node import Node


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Resource(directory_service, config, core.node, core.p2p, core.data_dir)


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
def united_collect_stats(node: Node) -> dict[str, Any]:
    return {"directory": node.service("directory").stats()}
