"""Circuit Relay v2 for members only: members behind NAT are reached through the server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from dependency_injector import containers, providers

from united_core.api import ConfigSection, PanelSection, PluginContainer, hookimpl

from .config import Config
from .panel import render_panel

if TYPE_CHECKING:
    from collections.abc import Mapping

    from united_core.p2p.options import HostOptions

UNITED_API = ">=1.2,<2"
SERVICE = "relay"  # the P2P service's name (``node.p2p.call_service``, ``p2p.services``)


class Figures(Protocol):
    def snapshot(self) -> Mapping[str, Any]: ...


def find_service(options: HostOptions) -> Figures | None:
    """The relay service this node's ``united_p2p_configure`` added (None: disabled).

    Its ``snapshot()`` is thread-safe, so the asyncio side reads its figures
    directly (as the mesh reads its trio-side rate limiter)."""
    for service in options.services:
        if getattr(service, "name", None) == SERVICE:
            found: Figures = service
            return found
    return None


class RelayHooks:
    def __init__(self, service: Figures | None) -> None:
        self.service = service

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        if self.service is None:
            return {"running": False, "error": "disabled ([relay] enabled = false)"}
        return dict(self.service.snapshot())


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Singleton(find_service, core.host_options)
    hooks = providers.Singleton(RelayHooks, service)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection(
            "relay", Config, "Circuit Relay v2 for members: reservations, circuits, limits."
        )
    ]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("relay", Container)]


@hookimpl
def united_register_panel_sections() -> list[PanelSection]:
    return [PanelSection("Relay", render_panel, order=30)]


@hookimpl
def united_p2p_configure(options: HostOptions, settings: Mapping[str, Any]) -> None:
    config: Config = settings["relay"]
    if not config.enabled:
        return
    from .hop import RelayService  # trio and libp2p load only when a node runs

    options.services.append(RelayService(config))
