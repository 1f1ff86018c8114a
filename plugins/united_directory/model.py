"""The directory's data model: members, channels and presence, as other plugins see them.

The directory (server) and discovery (client) plugins announce the current
member list with ``united_members_changed``, the channels with
``united_channels_changed`` and who is online with ``united_presence_changed``
(:mod:`united_directory.hookspecs`); the membership plugin gates connections
and messages with the list, the mesh subscribes and dials from the rest.
Immutable snapshots, so the trio-side gate can read them without locks.

Plugins that receive these objects use them as they are and import this module
only for type checking: they never depend on the directory at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from united_core.identity import peer_id_from_public_key


@dataclass(frozen=True)
class Member:
    member_id: str
    display_name: str
    public_key: bytes
    peer_id: str
    # Keys this member rotated away from, oldest first: its messages signed with
    # them stay its own in history and in reconciliation uploads.
    previous_keys: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class MemberSet:
    """Current members, plus peers trusted without being members (the server)."""

    members: tuple[Member, ...] = ()
    trusted_peer_ids: frozenset[str] = frozenset()
    # Keys current members rotated away from: their old messages stay valid in
    # history and in uploads (reconciliation), never for new gossip.
    former_keys: frozenset[bytes] = frozenset()
    by_peer_id: dict[str, Member] = field(init=False, repr=False, compare=False)
    by_key: dict[bytes, Member] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_peer_id", {m.peer_id: m for m in self.members})
        object.__setattr__(self, "by_key", {m.public_key: m for m in self.members})

    @classmethod
    def of(
        cls, members: Iterable[Member], trusted: Iterable[str] = (), former: Iterable[bytes] = ()
    ) -> MemberSet:
        """The set of ``members``; ``former_keys`` are their previous keys (and ``former``)."""
        members = tuple(members)
        keys = {key for m in members for key in m.previous_keys}
        return cls(members, frozenset(trusted), frozenset(keys.union(former)))

    def owner_of_key(self, public_key: bytes) -> Member | None:
        """The current member who signs, or signed before rotating, with ``public_key``."""
        member = self.by_key.get(public_key)
        if member is None and public_key in self.former_keys:
            member = next((m for m in self.members if public_key in m.previous_keys), None)
        return member

    def was_member_key(self, public_key: bytes) -> bool:
        """A key a current member used before rotating (see ``former_keys``)."""
        return public_key in self.former_keys

    def allows_peer(self, peer_id: str) -> bool:
        return peer_id in self.by_peer_id or peer_id in self.trusted_peer_ids

    def allows_key(self, public_key: bytes) -> bool:
        if public_key in self.by_key:
            return True
        return (
            len(public_key) == 32 and peer_id_from_public_key(public_key) in self.trusted_peer_ids
        )

    def name_of(self, peer_id: str) -> str | None:
        member = self.by_peer_id.get(peer_id)
        return member.display_name if member else None


@dataclass(frozen=True)
class Channel:
    """A channel this node takes part in: the server subscribes all, a client its joined ones."""

    channel_id: str
    name: str
    topic: str


@dataclass(frozen=True)
class Presence:
    """A member online in a channel, with the libp2p addresses it announced."""

    member_id: str
    peer_id: str
    addrs: tuple[str, ...]
    reachability: str = "unknown"  # as the member announced it (its AutoNAT verdict)
    nat: str = "unknown"
