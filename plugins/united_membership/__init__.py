"""Members only: refuse non-members in the Noise handshake and their messages everywhere."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core.api import (
    NodeAPI,
    Origin,
    PluginContainer,
    Reason,
    Refusal,
    SignedMessage,
    Verdict,
    hookimpl,
)

from .state import MembershipState

if TYPE_CHECKING:
    from united_directory.model import MemberSet

log = logging.getLogger(__name__)


class MembershipHooks:
    """The plugin's hooks, bound to this node's membership state.

    ``united_peer_allowed`` and ``united_validate_message`` run on the trio
    thread: they read one immutable member-list snapshot, swapped atomically
    when the list changes.
    """

    def __init__(self, state: MembershipState) -> None:
        self.state = state

    @hookimpl
    def united_peer_allowed(self, peer_id: str, direction: str) -> bool:
        return self.state.allows_peer(peer_id)

    @hookimpl(tryfirst=True)
    def united_validate_message(self, message: SignedMessage, origin: Origin) -> Refusal | None:
        """Only members' messages, on every way in but history: the server's record
        keeps what members wrote before they were removed."""
        if origin is Origin.HISTORY:
            return None
        if origin is Origin.SUBMISSION and self.state.was_member_key(message.sender_pubkey):
            return None  # written before its author rotated keys: still theirs
        if not self.state.allows_key(message.sender_pubkey):
            self.state.rejected_messages += 1
            return Refusal(Verdict.REJECT, "the sender is not a member", Reason.NOT_A_MEMBER)
        return None

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    async def united_members_changed(self, node: NodeAPI, members: MemberSet) -> None:
        self.state.replace(members)
        if not node.running:
            return
        for peer in await node.p2p.peers():
            if not self.state.allows_peer(peer["peer_id"]):
                log.info("closing the connection to %s: no longer a member", peer["peer_id"])
                self.state.disconnected += 1
                await node.p2p.disconnect(peer["peer_id"])

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return self.state.stats()


class Container(containers.DeclarativeContainer):
    core = providers.DependenciesContainer()
    state = providers.ThreadSafeSingleton(MembershipState)
    hooks = providers.Singleton(MembershipHooks, state)


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("membership", Container)]
