"""Ping a connected peer with the libp2p ping protocol and report the round-trip time."""

from __future__ import annotations

from typing import Any

from dependency_injector import containers, providers

from united_core.api import ControlCommand, PluginContainer, hookimpl

from .service import PingService, ping_command, render_ping


class PingHooks:
    def __init__(self, service: PingService) -> None:
        self.service = service

    @hookimpl
    async def united_stats_refresh(self) -> None:
        """Ping every connected peer (only while someone watches the live stats)."""
        await self.service.refresh()

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return self.service.stats()


class Container(containers.DeclarativeContainer):
    core = providers.DependenciesContainer()
    service = providers.Singleton(PingService, core.node)
    hooks = providers.Singleton(PingHooks, service)


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("ping", Container)]


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "ping",
            ping_command,
            "Ping a peer (libp2p ping) and report RTT in ms.",
            usage="PEER_ID [COUNT]",
            render=render_ping,
            description="PEER_ID: a connected peer (`peers` lists them); "
            "COUNT: how many round trips (default 1). Prints each RTT and the median.",
        )
    ]
