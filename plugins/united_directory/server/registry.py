"""The member and channel registry: SQLite (aiosqlite, WAL), the server's record.

Invite codes are stored only as SHA-256 hashes: the database never holds a
usable invite. Every write is one transaction.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiosqlite

from united_core.identity import peer_id_from_public_key
from united_core.sqlite import open_database

from ..model import Member
from ..protocol import name_key

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    member_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    public_key BLOB NOT NULL UNIQUE,
    peer_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    removed_at REAL
);
CREATE TABLE IF NOT EXISTS previous_keys (
    member_id TEXT NOT NULL REFERENCES members(member_id),
    public_key BLOB NOT NULL,
    replaced_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS invites (
    code_hash BLOB PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_by TEXT,
    used_at REAL
);
CREATE TABLE IF NOT EXISTS channels (
    channel_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_members (
    channel_id TEXT NOT NULL REFERENCES channels(channel_id),
    member_id TEXT NOT NULL REFERENCES members(member_id),
    PRIMARY KEY (channel_id, member_id)
);
"""


class RegistryError(Exception):
    """A refused registry operation; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class ChannelRecord:
    channel_id: str
    name: str


def _hash_code(code: str) -> bytes:
    return hashlib.sha256(code.strip().encode()).digest()


def _serialized(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run a write method alone: all sessions share one connection, hence one
    transaction, and a rollback in one request must not undo another's writes."""

    @functools.wraps(method)
    async def locked(*args: P.args, **kwargs: P.kwargs) -> T:
        registry = args[0]
        assert isinstance(registry, Registry)
        async with registry._write_lock:
            return await method(*args, **kwargs)

    return locked


class Registry:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Registry:
        db = await open_database(path, SCHEMA)
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    @_serialized
    async def server_id(self) -> str:
        """This server's stable id (scopes topics); created on first use."""
        async with self._db.execute("SELECT value FROM meta WHERE key='server_id'") as cur:
            row = await cur.fetchone()
        if row:
            return str(row[0])
        server_id = secrets.token_hex(8)
        await self._db.execute("INSERT INTO meta VALUES ('server_id', ?)", (server_id,))
        await self._db.commit()
        return server_id

    # ---- members -------------------------------------------------------------------

    async def members(self) -> list[Member]:
        async with self._db.execute(
            "SELECT member_id, display_name, public_key, peer_id FROM members "
            "WHERE removed_at IS NULL ORDER BY created_at"
        ) as cur:
            rows = list(await cur.fetchall())
        return [await self._member(r) for r in rows]

    async def _member(self, row: Any) -> Member:
        """A member from its ``members`` row, with the keys it rotated away from."""
        previous = tuple(await self.previous_keys(row[0]))
        return Member(row[0], row[1], bytes(row[2]), row[3], previous)

    async def previous_keys(self, member_id: str) -> list[bytes]:
        async with self._db.execute(
            "SELECT public_key FROM previous_keys WHERE member_id=? ORDER BY replaced_at",
            (member_id,),
        ) as cur:
            return [bytes(r[0]) for r in await cur.fetchall()]

    async def member_by_key(self, public_key: bytes) -> Member | None:
        async with self._db.execute(
            "SELECT member_id, display_name, public_key, peer_id FROM members "
            "WHERE public_key=? AND removed_at IS NULL",
            (public_key,),
        ) as cur:
            row = await cur.fetchone()
        return await self._member(row) if row else None

    async def find_member(self, ref: str) -> Member | None:
        """By member id, PeerId or display name."""
        async with self._db.execute(
            "SELECT member_id, display_name, public_key, peer_id FROM members "
            "WHERE removed_at IS NULL AND (member_id=? OR peer_id=? OR display_name=?)",
            (ref, ref, ref),
        ) as cur:
            rows = list(await cur.fetchall())
        if len(rows) > 1:
            raise RegistryError("ambiguous", f"{ref!r} names several members; use the member id")
        return await self._member(rows[0]) if rows else None

    @_serialized
    async def register(
        self, public_key: bytes, display_name: str, invite_code: str | None
    ) -> Member:
        """Create a member, consuming the invite (if given) in the same transaction."""
        now = time.time()
        member = Member(
            str(uuid.uuid4()), display_name, public_key, peer_id_from_public_key(public_key)
        )
        if await self._key_known(public_key):
            raise RegistryError("exists", "this key is already registered; log in instead")
        # The invite first, then the name: without a valid invite nobody learns
        # whether a name is taken. Both are looked at before anything is written
        # (this runs alone, _serialized), so a taken name leaves the invite valid.
        if invite_code is not None and not await self._invite_usable(invite_code, now):
            raise RegistryError("invite", "the invite is unknown, used or expired")
        if await self.name_holder(display_name) is not None:
            # Not the holder's spelling: only that the name is taken.
            raise RegistryError(
                "name_taken", f"the display name {display_name!r} is taken in this community"
            )
        try:
            if invite_code is not None:
                cur = await self._db.execute(
                    "UPDATE invites SET used_by=?, used_at=? "
                    "WHERE code_hash=? AND used_at IS NULL AND expires_at>?",
                    (member.member_id, now, _hash_code(invite_code), now),
                )
                if cur.rowcount != 1:
                    raise RegistryError("invite", "the invite is unknown, used or expired")
            await self._db.execute(
                "INSERT INTO members VALUES (?, ?, ?, ?, ?, NULL)",
                (member.member_id, display_name, public_key, member.peer_id, now),
            )
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        return member

    async def _invite_usable(self, invite_code: str, now: float) -> bool:
        async with self._db.execute(
            "SELECT 1 FROM invites WHERE code_hash=? AND used_at IS NULL AND expires_at>?",
            (_hash_code(invite_code), now),
        ) as cur:
            return await cur.fetchone() is not None

    async def name_holder(self, display_name: str) -> str | None:
        """The current member's name that is the same as ``display_name`` (compared
        by :func:`~united_directory.protocol.name_key`), or None. Names of removed
        members are free again."""
        key = name_key(display_name)
        async with self._db.execute(
            "SELECT display_name FROM members WHERE removed_at IS NULL"
        ) as cur:
            for (name,) in await cur.fetchall():
                if name_key(name) == key:
                    return str(name)
        return None

    async def _key_known(self, public_key: bytes) -> bool:
        async with self._db.execute(
            "SELECT 1 FROM members WHERE public_key=? UNION "
            "SELECT 1 FROM previous_keys WHERE public_key=?",
            (public_key, public_key),
        ) as cur:
            return await cur.fetchone() is not None

    @_serialized
    async def rotate_key(self, member: Member, new_key: bytes) -> Member:
        if await self._key_known(new_key):
            raise RegistryError("exists", "the new key is already in use")
        rotated = Member(
            member.member_id,
            member.display_name,
            new_key,
            peer_id_from_public_key(new_key),
            (*member.previous_keys, member.public_key),
        )
        try:
            await self._db.execute(
                "INSERT INTO previous_keys VALUES (?, ?, ?)",
                (member.member_id, member.public_key, time.time()),
            )
            await self._db.execute(
                "UPDATE members SET public_key=?, peer_id=? WHERE member_id=?",
                (new_key, rotated.peer_id, member.member_id),
            )
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        return rotated

    @_serialized
    async def remove_member(self, member_id: str) -> None:
        await self._db.execute(
            "UPDATE members SET removed_at=? WHERE member_id=? AND removed_at IS NULL",
            (time.time(), member_id),
        )
        await self._db.execute("DELETE FROM channel_members WHERE member_id=?", (member_id,))
        await self._db.commit()

    # ---- invites -------------------------------------------------------------------

    @_serialized
    async def create_invite(self, ttl: float) -> tuple[str, float]:
        # Base32: 120 bits, letters and digits only (a code starting with "-" would
        # read as an option on the `united join` command line).
        code = base64.b32encode(secrets.token_bytes(15)).decode("ascii")
        now = time.time()
        await self._db.execute(
            "INSERT INTO invites VALUES (?, ?, ?, NULL, NULL)", (_hash_code(code), now, now + ttl)
        )
        await self._db.commit()
        return code, now + ttl

    # ---- channels ------------------------------------------------------------------

    async def channels(self) -> list[ChannelRecord]:
        async with self._db.execute(
            "SELECT channel_id, name FROM channels ORDER BY created_at"
        ) as cur:
            return [ChannelRecord(r[0], r[1]) for r in await cur.fetchall()]

    @_serialized
    async def create_channel(self, name: str) -> ChannelRecord:
        record = ChannelRecord(str(uuid.uuid4()), name)
        try:
            await self._db.execute(
                "INSERT INTO channels VALUES (?, ?, ?)", (record.channel_id, name, time.time())
            )
            await self._db.commit()
        except aiosqlite.IntegrityError:
            await self._db.rollback()
            raise RegistryError("exists", f"a channel named {name!r} exists") from None
        return record

    async def find_channel(self, ref: str) -> ChannelRecord | None:
        async with self._db.execute(
            "SELECT channel_id, name FROM channels WHERE channel_id=? OR name=?", (ref, ref)
        ) as cur:
            row = await cur.fetchone()
        return ChannelRecord(row[0], row[1]) if row else None

    async def joined_channels(self, member_id: str) -> list[ChannelRecord]:
        async with self._db.execute(
            "SELECT c.channel_id, c.name FROM channels c JOIN channel_members m "
            "ON c.channel_id=m.channel_id WHERE m.member_id=? ORDER BY c.created_at",
            (member_id,),
        ) as cur:
            return [ChannelRecord(r[0], r[1]) for r in await cur.fetchall()]

    @_serialized
    async def join(self, member_id: str, channel_id: str) -> None:
        await self._db.execute(
            "INSERT OR IGNORE INTO channel_members VALUES (?, ?)", (channel_id, member_id)
        )
        await self._db.commit()

    @_serialized
    async def leave(self, member_id: str, channel_id: str) -> None:
        await self._db.execute(
            "DELETE FROM channel_members WHERE channel_id=? AND member_id=?",
            (channel_id, member_id),
        )
        await self._db.commit()
