"""Redial dropped peers with backoff (1 s, 2 s, 4 s ... 30 s), replace the unreachable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core.api import ConfigSection, PanelSection, PluginContainer, hookimpl

from .config import Config
from .service import Reconnector, reconnector

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Protocol

    class Channel(Protocol):
        topic: str

    class MemberSetLike(Protocol):
        members: tuple[Any, ...]
        trusted_peer_ids: frozenset[str]


UNITED_API = ">=1.1,<2"


class ReconnectHooks:
    def __init__(self, service: Reconnector) -> None:
        self.service = service

    @hookimpl
    def united_peer_connected(self, peer_id: str) -> None:
        self.service.connected(peer_id)

    @hookimpl
    def united_peer_disconnected(self, peer_id: str) -> None:
        self.service.disconnected(peer_id)

    @hookimpl
    def united_node_stopping(self) -> None:
        self.service.stopping = True

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    def united_members_changed(self, members: MemberSetLike) -> None:
        self.service.set_members((m.peer_id for m in members.members), members.trusted_peer_ids)

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    def united_presence_changed(self, channel: Channel, online: tuple[Any, ...]) -> None:
        self.service.set_presence(channel.topic, online)

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return self.service.stats()


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Resource(reconnector, config, core.node, core.dialer)
    hooks = providers.Singleton(ReconnectHooks, service)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [ConfigSection("reconnect", Config, "Redialing dropped peers: backoff, replacement.")]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("reconnect", Container)]


def render_panel(snapshot: Mapping[str, Any]) -> list[str]:
    mine = snapshot.get("plugins", {}).get("reconnect") or {}
    rows = mine.get("redialing") or {}
    if not rows:
        return [f"  every remembered peer connected ({mine.get('restored', 0)} restored)"]
    return [
        f"  {peer[-12:]}  lost {row['lost_for_s']:>6.1f} s  attempt {row['attempt']}"
        for peer, row in rows.items()
    ]


@hookimpl
def united_register_panel_sections() -> list[PanelSection]:
    return [PanelSection("Reconnect", render_panel, order=20)]
