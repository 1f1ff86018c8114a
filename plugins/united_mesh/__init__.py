"""The member-only gossipsub mesh: a topic per channel, signed envelopes, send and tail."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core.api import ConfigSection, PanelSection, PluginContainer, hookimpl

from .commands import control_commands
from .config import Config
from .panel import render_gossipsub
from .scoring import score_settings
from .service import MeshService

if TYPE_CHECKING:
    from collections.abc import Mapping

    from united_directory.model import Channel, MemberSet, Presence

    from united_core.api import ControlCommand, Origin, Refusal, SignedMessage
    from united_core.p2p.options import HostOptions


class MeshHooks:
    """The mesh's hooks, bound to its service (``united_validate_message`` may run on
    the trio thread: the volume limiter it uses is thread-safe)."""

    def __init__(self, mesh: MeshService) -> None:
        self.mesh = mesh

    @hookimpl
    async def united_node_started(self) -> None:
        await self.mesh.apply_channels()

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    async def united_channels_changed(self, channels: tuple[Channel, ...]) -> None:
        await self.mesh.set_channels(channels)

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    def united_members_changed(self, members: MemberSet) -> None:
        self.mesh.set_members(members)

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    async def united_presence_changed(self, channel: Channel, online: tuple[Presence, ...]) -> None:
        await self.mesh.dial_online(channel, online)

    @hookimpl
    def united_message_received(
        self, message: SignedMessage, from_peer: str, received_at: float
    ) -> None:
        self.mesh.received(message, from_peer, received_at)

    @hookimpl
    def united_validate_message(self, message: SignedMessage, origin: Origin) -> Refusal | None:
        return self.mesh.judge(message, origin)

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return self.mesh.stats()


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Singleton(MeshService, config, core.node, core.identity)
    hooks = providers.Singleton(MeshHooks, service)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [ConfigSection("mesh", Config, "The gossipsub mesh: degree, heartbeat, peer scoring.")]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("mesh", Container)]


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return control_commands()


@hookimpl
def united_register_panel_sections() -> list[PanelSection]:
    return [PanelSection("Gossipsub", render_gossipsub, order=10)]


@hookimpl
def united_p2p_configure(options: HostOptions, settings: Mapping[str, Any]) -> None:
    config: Config = settings["mesh"]
    g = options.gossip
    g.degree, g.degree_low, g.degree_high, g.degree_lazy = (
        config.d,
        config.d_lo,
        config.d_hi,
        config.d_lazy,
    )
    g.heartbeat_interval = config.heartbeat_interval
    g.gossip_window, g.gossip_history, g.seen_ttl = (
        config.gossip_window,
        config.gossip_history,
        config.seen_ttl,
    )
    options.acceptance = dataclasses.replace(
        options.acceptance,
        max_message_age=config.max_message_age,
        max_future_skew=config.max_future_skew,
    )
    g.scoring = score_settings(config)
