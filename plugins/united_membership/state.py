"""The gate's view of the member list: one immutable snapshot, swapped atomically.

The gate runs on the trio thread and the updates arrive on asyncio; replacing a
single reference is atomic in CPython, so neither side takes a lock. Until a
list is known the gate refuses everyone (fail closed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from united_directory.model import MemberSet


class MembershipState:
    def __init__(self) -> None:
        self._members: MemberSet | None = None
        self.refused_peers = 0
        self.rejected_messages = 0
        self.disconnected = 0

    @property
    def members(self) -> MemberSet | None:
        return self._members

    def replace(self, members: MemberSet) -> None:
        self._members = members

    def allows_peer(self, peer_id: str) -> bool:
        members = self._members
        allowed = members is not None and members.allows_peer(peer_id)
        if not allowed:
            self.refused_peers += 1
        return allowed

    def was_member_key(self, public_key: bytes) -> bool:
        members = self._members
        return (
            members is not None
            and bool(getattr(members, "was_member_key", None))
            and (members.was_member_key(public_key))
        )

    def allows_key(self, public_key: bytes) -> bool:
        members = self._members
        return members is not None and members.allows_key(public_key)

    def stats(self) -> dict[str, Any]:
        members = self._members
        return {
            "known": members is not None,
            "members": len(members.members) if members else 0,
            "refused_peers": self.refused_peers,
            "rejected_messages": self.rejected_messages,
            "disconnected": self.disconnected,
        }
