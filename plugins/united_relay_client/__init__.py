"""Reach members through the server's relay; reserve a slot there when not publicly reachable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from dependency_injector import containers, providers

from united_core.api import ConfigSection, PanelSection, PluginContainer, hookimpl

from .config import Config
from .panel import render_panel
from .policy import needs_relay

if TYPE_CHECKING:
    from collections.abc import Mapping

    from united_core.api import NodeAPI
    from united_core.p2p.options import HostOptions

    class MemberSetLike(Protocol):
        trusted_peer_ids: frozenset[str]


UNITED_API = ">=1.2,<2"
SERVICE = "relay-client"  # the P2P service's name (``node.p2p.call_service``)


class Figures(Protocol):
    def snapshot(self) -> Mapping[str, Any]: ...


def find_service(options: HostOptions) -> Figures | None:
    """The service this node's ``united_p2p_configure`` added (its ``snapshot()``
    is thread-safe: the stats read it directly)."""
    for service in options.services:
        if getattr(service, "name", None) == SERVICE:
            found: Figures = service
            return found
    return None


class RelayClientHooks:
    """Tells the service which peers are relays (the member set's trusted peers: the
    server) and whether to hold a reservation (``[relay_client] mode``)."""

    def __init__(self, config: Config, service: Figures | None) -> None:
        self.config = config
        self.service = service
        self.relays: tuple[str, ...] = ()
        self.addrs: tuple[str, ...] = ()
        self.reachability = "unknown"
        self._sent: tuple[tuple[str, ...], bool] | None = None

    @property
    def wanted(self) -> bool:
        return needs_relay(self.config.mode, self.addrs, self.reachability)

    async def _push(self, node: NodeAPI) -> None:
        state = (self.relays, self.wanted)
        if state == self._sent or not node.running:
            return
        self._sent = state
        await node.p2p.call_service(SERVICE, "configure", list(self.relays), self.wanted)

    @hookimpl
    async def united_node_started(self, node: NodeAPI) -> None:
        self.addrs = tuple(node.p2p.announce_addrs)
        self.reachability = node.p2p.reachability
        await self._push(node)

    @hookimpl
    async def united_reachability_changed(self, node: NodeAPI, reachability: str) -> None:
        """AutoNAT concluded: ``private`` reserves, ``public`` releases (``auto``)."""
        self.reachability = reachability
        await self._push(node)

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    async def united_members_changed(self, node: NodeAPI, members: MemberSetLike) -> None:
        self.relays = tuple(sorted(members.trusted_peer_ids))
        await self._push(node)

    @hookimpl
    async def united_addrs_changed(self, node: NodeAPI, addrs: tuple[str, ...]) -> None:
        self.addrs = tuple(addrs)  # auto: a public address appeared or went
        await self._push(node)

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        figures = dict(self.service.snapshot()) if self.service is not None else {}
        return {**figures, "mode": self.config.mode}


def section(settings: Any) -> Config:
    """``[relay_client]`` (the core passes a container its section only when the two
    share a name; this plugin is ``relay-client``, like its P2P service)."""
    config: Config = settings["relay_client"]
    return config


class Container(containers.DeclarativeContainer):
    core = providers.DependenciesContainer()
    config = providers.Callable(section, core.settings)
    service = providers.Singleton(find_service, core.host_options)
    hooks = providers.Singleton(RelayClientHooks, config, service)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection(
            "relay_client",
            Config,
            "Reaching members through the server's relay: when to reserve a slot.",
        )
    ]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("relay-client", Container)]


@hookimpl
def united_register_panel_sections() -> list[PanelSection]:
    return [PanelSection("Relay client", render_panel, order=31)]


@hookimpl
def united_p2p_configure(options: HostOptions, settings: Mapping[str, Any]) -> None:
    from .client_service import RelayClientService  # trio and libp2p load only when a node runs

    options.services.append(RelayClientService(settings["relay_client"]))
