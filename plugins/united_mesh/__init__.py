"""The member-only gossipsub mesh: a topic per channel, signed envelopes, send and tail."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core import hookimpl
from united_core.config import ConfigSection
from united_core.containers import PluginContainer

from .commands import control_commands
from .config import Config
from .scoring import score_params_factory
from .service import MeshService

if TYPE_CHECKING:
    from collections.abc import Mapping

    from united_core.acceptance import Origin, Refusal
    from united_core.control import ControlCommand
    from united_core.envelope import SignedMessage
    from united_core.members import Channel, MemberSet, Presence
    from united_core.node import Node
    from united_core.p2p.options import HostOptions


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Singleton(MeshService, config, core.node, core.identity)


def _mesh(node: Node) -> MeshService:
    return node.service("mesh")  # type: ignore[no-any-return]


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


@hookimpl
def united_p2p_host_started(node: Node, context: Any) -> None:
    # Scoring needs to know who the server is: build the parameters with a callback
    # that reads the mesh's current member list.
    mesh = _mesh(node)
    context.gossipsub.scorer.params = score_params_factory(mesh.config, lambda: mesh.members)()


@hookimpl
async def united_node_started(node: Node) -> None:
    await _mesh(node).apply_channels()


@hookimpl
async def united_channels_changed(node: Node, channels: tuple[Channel, ...]) -> None:
    await _mesh(node).set_channels(channels)


@hookimpl
def united_members_changed(node: Node, members: MemberSet) -> None:
    _mesh(node).members = members


@hookimpl
async def united_presence_changed(
    node: Node, channel: Channel, online: tuple[Presence, ...]
) -> None:
    await _mesh(node).dial_online(channel, online)


@hookimpl
def united_message_received(
    node: Node, message: SignedMessage, from_peer: str, received_at: float
) -> None:
    _mesh(node).received(message, from_peer, received_at)


@hookimpl
def united_validate_message(node: Node, message: SignedMessage, origin: Origin) -> Refusal | None:
    return _mesh(node).judge(message, origin)


@hookimpl
def united_peer_connected(
    node: Node, peer_id: str, addrs: tuple[str, ...], direction: str, relayed: bool
) -> None:
    _mesh(node).remember(peer_id, addrs, direction)


@hookimpl
def united_collect_stats(node: Node) -> dict[str, Any]:
    return {"mesh": _mesh(node).stats()}
