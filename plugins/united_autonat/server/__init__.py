"""AutoNAT server: dial members back on a fresh connection and tell them if they are reachable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from dependency_injector import containers, providers

from united_core.api import ConfigSection, PanelSection, PluginContainer, hookimpl

from .config import Config

if TYPE_CHECKING:
    from united_core.p2p.options import HostOptions

UNITED_API = ">=1.2,<2"
SERVICE = "autonat"  # the P2P service's name (``p2p.services``)


class Figures(Protocol):
    def snapshot(self) -> Mapping[str, Any]: ...


def find_service(options: HostOptions) -> Figures | None:
    """The service this node's ``united_p2p_configure`` added; its ``snapshot()`` is
    thread-safe, so the asyncio side reads it directly."""
    for service in options.services:
        if getattr(service, "name", None) == SERVICE:
            found: Figures = service
            return found
    return None


class AutonatHooks:
    def __init__(self, service: Figures | None) -> None:
        self.service = service

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return dict(self.service.snapshot()) if self.service else {}


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Singleton(find_service, core.host_options)
    hooks = providers.Singleton(AutonatHooks, service)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection(
            "autonat", Config, "AutoNAT for members: dial-backs, NAT observations, limits."
        )
    ]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("autonat", Container)]


@hookimpl
def united_p2p_configure(options: HostOptions, settings: Mapping[str, Any]) -> None:
    from .service import AutonatServer  # trio and libp2p load only when a node runs

    options.services.append(AutonatServer(settings["autonat"]))


def render_panel(snapshot: Mapping[str, Any]) -> list[str]:
    mine = snapshot.get("plugins", {}).get("autonat") or {}
    if not mine:
        return ["  (no figures yet)"]
    dials = mine.get("dials") or {}
    refused = mine.get("refused") or {}
    lines = [
        f"  probes answered {mine.get('answered', 0)}  running {mine.get('in_flight', 0)}"
        f"  malformed {mine.get('bad_requests', 0)}",
        "  dial-backs: "
        + (", ".join(f"{k.lower()} {v}" for k, v in sorted(dials.items())) or "none yet"),
    ]
    if refused:
        lines.append("  refused: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    observe = mine.get("observe") or {}
    ports = observe.get("ports") or []
    lines.append(
        f"  NAT observations on TCP {', '.join(str(p) for p in ports)}:"
        f" answered {observe.get('answered', 0)}, refused {observe.get('refused', 0)}"
        + (f", busy {observe['busy']}" if observe.get("busy") else "")
        if ports
        else "  NAT observations: off"
    )
    for probe in list(mine.get("recent") or [])[-3:]:
        statuses = " ".join(status for _, status, _ in probe.get("results", []))
        lines.append(f"  …{str(probe.get('peer'))[-8:]} from {probe.get('observed')}: {statuses}")
    return lines


@hookimpl
def united_register_panel_sections() -> list[PanelSection]:
    return [PanelSection("AutoNAT", render_panel, order=35)]
