"""The client's cache: every message of the joined channels, confirmed or not.

A message is *confirmed* once the server has given it a sequence number (from a
submission's result or a history page). Reading a channel orders confirmed
messages by that number, then the unconfirmed ones by (Lamport hint, sender
key), the same order the server will use when it numbers them. ``holes``
remembers sequence numbers the server no longer has, so they are not asked for
again. A message the server refused *permanently* (a removed member's
leftovers, a stale or invalid envelope) keeps the reason in ``refused``: it is
neither uploaded again nor shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from united_core.envelope import SignedMessage
from united_core.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id BLOB PRIMARY KEY,
    topic TEXT NOT NULL,
    seq INTEGER,
    sender BLOB NOT NULL,
    sequence_hint INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    wire BLOB NOT NULL,
    received_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_topic_seq
    ON messages(topic, seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_unconfirmed ON messages(topic, sequence_hint) WHERE seq IS NULL;
CREATE TABLE IF NOT EXISTS holes (
    topic TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (topic, seq)
);
"""
# Columns added after the first release, added to older caches when opened.
MIGRATIONS = (("messages", "refused", "ALTER TABLE messages ADD COLUMN refused TEXT"),)
# Needs the migrated column, so created after MIGRATIONS: the upload cursor's order.
INDEXES = """
CREATE INDEX IF NOT EXISTS messages_upload_order ON messages(sequence_hint, sender, id)
    WHERE seq IS NULL AND refused IS NULL;
"""
COLUMNS = "id, topic, seq, sender, sequence_hint, timestamp, wire, received_at"
# (sequence_hint, sender, id) of the last message handed out: upload order and cursor.
Cursor = tuple[int, bytes, bytes]


@dataclass(frozen=True)
class CachedMessage:
    id: bytes
    topic: str
    seq: int | None
    sender: bytes
    sequence_hint: int
    timestamp: int
    wire: bytes
    received_at: float = 0.0

    @property
    def confirmed(self) -> bool:
        return self.seq is not None

    @property
    def cursor(self) -> Cursor:
        return (self.sequence_hint, self.sender, self.id)


class CacheStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> CacheStore:
        db = await open_database(path, SCHEMA)
        for table, column, statement in MIGRATIONS:
            async with db.execute(f"PRAGMA table_info({table})") as cur:
                if column not in {row[1] for row in await cur.fetchall()}:
                    await db.execute(statement)
        await db.executescript(INDEXES)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def add(
        self, messages: list[SignedMessage], seqs: Sequence[int | None] | None = None
    ) -> int:
        """Insert messages (idempotent by id); with ``seqs``, as confirmed by the server.

        Two ``executemany`` per call whatever the count: aiosqlite runs every
        statement on its own thread, so per-message statements cost a hop each.
        """
        now = time.time()
        numbers = list(seqs) if seqs is not None else [None] * len(messages)
        rows = [
            (m.id, m.topic, seq, m.sender_pubkey, m.sequence_hint, m.timestamp, m.wire, now)
            for m, seq in zip(messages, numbers, strict=True)
        ]
        async with self._lock:
            before = self._db.total_changes
            await self._db.executemany(
                "INSERT OR IGNORE INTO messages "
                "(id, topic, seq, sender, sequence_hint, timestamp, wire, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            added = self._db.total_changes - before
            if seqs is not None and added < len(rows):  # some were cached unconfirmed
                await self._db.executemany(
                    "UPDATE messages SET seq=?, refused=NULL WHERE id=? AND seq IS NULL",
                    [(seq, m.id) for m, seq in zip(messages, numbers, strict=True) if seq],
                )
            await self._db.commit()
        return added

    async def confirm(self, assigned: list[tuple[bytes, int]]) -> None:
        async with self._lock:
            await self._confirm(assigned)
            await self._db.commit()

    async def _confirm(self, assigned: list[tuple[bytes, int]]) -> None:
        # The server's number wins: a row holding it by mistake (it cannot happen
        # with a single server) is un-numbered first, then re-confirmed later.
        for message_id, seq in assigned:
            async with self._db.execute(
                "SELECT topic FROM messages WHERE id=?", (message_id,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                continue
            await self._db.execute(
                "UPDATE messages SET seq=NULL WHERE topic=? AND seq=? AND id!=?",
                (row[0], seq, message_id),
            )
            await self._db.execute(
                "UPDATE messages SET seq=?, refused=NULL WHERE id=?", (seq, message_id)
            )

    async def unconfirmed(self, limit: int, *, after: Cursor | None = None) -> list[CachedMessage]:
        """Unconfirmed, unrefused messages in upload order, from just after ``after``."""
        clause = "WHERE seq IS NULL AND refused IS NULL"
        args: list[object] = []
        if after is not None:
            clause += " AND (sequence_hint, sender, id) > (?, ?, ?)"
            args += list(after)
        return await self._select(
            clause + " ORDER BY sequence_hint, sender, id LIMIT ?", (*args, limit)
        )

    async def known(self, ids: list[bytes]) -> set[bytes]:
        """Which of ``ids`` are cached (confirmed, unconfirmed or refused)."""
        found: set[bytes] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(
                f"SELECT id FROM messages WHERE id IN ({marks})", chunk
            ) as cur:
                found.update(bytes(r[0]) for r in await cur.fetchall())
        return found

    async def refuse(self, refusals: list[tuple[bytes, str]]) -> None:
        """Mark messages the server refused for good (id, reason): never uploaded again."""
        async with self._lock:
            await self._db.executemany(
                "UPDATE messages SET refused=? WHERE id=? AND seq IS NULL",
                [(reason, mid) for mid, reason in refusals],
            )
            await self._db.commit()

    async def seqs(self, topic: str) -> set[int]:
        async with self._db.execute(
            "SELECT seq FROM messages WHERE topic=? AND seq IS NOT NULL "
            "UNION SELECT seq FROM holes WHERE topic=?",
            (topic, topic),
        ) as cur:
            return {int(r[0]) for r in await cur.fetchall()}

    async def numbered(self, topic: str) -> int:
        """How many sequence numbers of ``topic`` are settled here (messages and holes):
        the cache is complete up to a head ``h`` exactly when this is ``h``."""
        async with self._db.execute(
            "SELECT COUNT(*) FROM (SELECT seq FROM messages WHERE topic=? AND seq IS NOT NULL "
            "UNION SELECT seq FROM holes WHERE topic=?)",
            (topic, topic),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def add_holes(self, topic: str, seqs: list[int]) -> None:
        async with self._lock:
            await self._db.executemany(
                "INSERT OR IGNORE INTO holes VALUES (?, ?)", [(topic, s) for s in seqs]
            )
            await self._db.commit()

    async def history(self, topic: str, from_seq: int | None, limit: int) -> list[CachedMessage]:
        """Confirmed messages in server order, then the unconfirmed: ``limit`` of them
        from ``from_seq`` on, or (``from_seq`` None) the newest ``limit``, oldest first."""
        if from_seq is None:
            pending = await self._select(
                "WHERE topic=? AND seq IS NULL AND refused IS NULL "
                "ORDER BY sequence_hint DESC, sender DESC LIMIT ?",
                (topic, limit),
            )
            room = limit - len(pending)
            newest = (
                await self._select(
                    "WHERE topic=? AND seq IS NOT NULL ORDER BY seq DESC LIMIT ?", (topic, room)
                )
                if room > 0
                else []
            )
            return newest[::-1] + pending[::-1]
        confirmed = await self._select(
            "WHERE topic=? AND seq>=? ORDER BY seq LIMIT ?", (topic, from_seq, limit)
        )
        room = limit - len(confirmed)
        pending = (
            await self._select(
                "WHERE topic=? AND seq IS NULL AND refused IS NULL "
                "ORDER BY sequence_hint, sender LIMIT ?",
                (topic, room),
            )
            if room > 0
            else []
        )
        return confirmed + pending

    async def _select(self, clause: str, args: tuple[object, ...]) -> list[CachedMessage]:
        async with self._db.execute(f"SELECT {COLUMNS} FROM messages " + clause, args) as cur:
            return [
                CachedMessage(
                    bytes(r[0]), r[1], r[2], bytes(r[3]), r[4], r[5], bytes(r[6]), float(r[7])
                )
                for r in await cur.fetchall()
            ]
