"""Members only: refuse non-members in the Noise handshake and their messages in gossipsub."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core import hookimpl
from united_core.acceptance import Origin, Reason, Refusal, Verdict
from united_core.containers import PluginContainer

from .state import MembershipState

if TYPE_CHECKING:
    from united_core.envelope import SignedMessage
    from united_core.members import MemberSet
    from united_core.node import Node

log = logging.getLogger(__name__)


class Container(containers.DeclarativeContainer):
    core = providers.DependenciesContainer()
    state = providers.ThreadSafeSingleton(MembershipState)


def _state(node: Node) -> MembershipState:
    return node.service("membership", "state")  # type: ignore[no-any-return]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("membership", Container)]


@hookimpl
def united_peer_allowed(node: Node, peer_id: str, direction: str) -> bool:
    return _state(node).allows_peer(peer_id)


@hookimpl(tryfirst=True)
def united_validate_message(node: Node, message: SignedMessage, origin: Origin) -> Refusal | None:
    """Only members' messages, on every way in but history: the server's record
    keeps what members wrote before they were removed."""
    if origin is Origin.HISTORY:
        return None
    state = _state(node)
    if not state.allows_key(message.sender_pubkey):
        state.rejected_messages += 1
        return Refusal(Verdict.REJECT, "the sender is not a member", Reason.NOT_A_MEMBER)
    return None


@hookimpl
async def united_members_changed(node: Node, members: MemberSet) -> None:
    state = _state(node)
    state.replace(members)
    if not node.running:
        return
    for peer in await node.p2p.peers():
        if not state.allows_peer(peer["peer_id"]):
            log.info("closing the connection to %s: no longer a member", peer["peer_id"])
            state.disconnected += 1
            await node.p2p.disconnect(peer["peer_id"])


@hookimpl
def united_collect_stats(node: Node) -> dict[str, Any]:
    return {"membership": _state(node).stats()}
