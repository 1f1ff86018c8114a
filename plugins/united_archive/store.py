"""The archive: every accepted envelope once, with a per-channel sequence number.

Sequence numbers are assigned inside the write transaction that stores the
message, from a per-topic head kept in memory and in ``heads``. A message is
*acknowledged* once that transaction has committed: with WAL, a committed
transaction survives a SIGKILL of the server (``synchronous=NORMAL`` gives up
only the last transactions on a power loss, not on a process crash).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from united_core.envelope import SignedMessage
from united_core.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id BLOB PRIMARY KEY,
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sender BLOB NOT NULL,
    sequence_hint INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    wire BLOB NOT NULL,
    stored_at REAL NOT NULL,
    UNIQUE (topic, seq)
);
CREATE TABLE IF NOT EXISTS heads (topic TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Stored:
    id: bytes
    topic: str
    seq: int  # 0 when it could not be stored (``error``)
    new: bool  # False: the archive already had it (it keeps its number)
    error: str | None = None


@dataclass(frozen=True)
class Page:
    messages: list[tuple[int, bytes]]  # (seq, envelope wire)
    next_seq: int  # where the next page starts; 0 when this is the last
    last_seq: int  # the channel's highest sequence number


class ArchiveStore:
    def __init__(
        self, db: aiosqlite.Connection, heads: dict[str, int], counts: dict[str, int] | None = None
    ) -> None:
        self._db = db
        self._heads = heads
        self._counts = dict(counts if counts is not None else heads)  # messages held, by topic
        self.last_stored: tuple[str, int, float] | None = None  # (topic, seq, stored_at)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> ArchiveStore:
        db = await open_database(path, SCHEMA)
        async with db.execute("SELECT topic, last_seq FROM heads") as cur:
            heads = {row[0]: int(row[1]) for row in await cur.fetchall()}
        # Counted once (the (topic, seq) index); kept up to date by append().
        async with db.execute("SELECT topic, COUNT(*) FROM messages GROUP BY topic") as cur:
            counts = {row[0]: int(row[1]) for row in await cur.fetchall()}
        store = cls(db, heads, counts)
        async with db.execute(
            "SELECT topic, seq, stored_at FROM messages ORDER BY rowid DESC LIMIT 1"
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            store.last_stored = (row[0], int(row[1]), float(row[2]))
        return store

    async def close(self) -> None:
        await self._db.close()

    def last_seq(self, topic: str) -> int:
        return self._heads.get(topic, 0)

    def heads(self) -> dict[str, int]:
        """Each topic's highest sequence number."""
        return dict(self._heads)

    def counts(self) -> dict[str, int]:
        """How many messages the archive holds, by topic."""
        return dict(self._counts)

    async def append(self, messages: list[SignedMessage]) -> list[Stored]:
        """Store ``messages`` in the given order, in one transaction; idempotent by id.

        One lookup for the ids already stored and one ``executemany`` per batch:
        aiosqlite runs each statement on its own thread, so per-message
        statements would cost a thread hop each.
        """
        async with self._lock:
            known = await self._known([m.id for m in messages])
            heads = dict(self._heads)
            out: list[Stored] = []
            rows = []
            now = time.time()
            for m in messages:
                if m.id in known:
                    topic, seq = known[m.id]
                    out.append(Stored(m.id, topic, seq, False))
                    continue
                seq = heads.get(m.topic, 0) + 1
                heads[m.topic] = seq
                known[m.id] = (m.topic, seq)  # the same message twice in one batch
                rows.append(
                    (m.id, m.topic, seq, m.sender_pubkey, m.sequence_hint, m.timestamp, m.wire, now)
                )
                out.append(Stored(m.id, m.topic, seq, True))
            if not rows:
                return out
            try:
                await self._db.executemany(
                    "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                await self._db.executemany(
                    "INSERT INTO heads VALUES (?, ?) "
                    "ON CONFLICT(topic) DO UPDATE SET last_seq=excluded.last_seq",
                    [(t, s) for t, s in heads.items() if s != self._heads.get(t)],
                )
                await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise
            self._heads = heads
            for row in rows:
                self._counts[row[1]] = self._counts.get(row[1], 0) + 1
            self.last_stored = (rows[-1][1], rows[-1][2], now)
            return out

    async def known(self, ids: list[bytes]) -> dict[bytes, tuple[str, int]]:
        """The (topic, seq) of each of ``ids`` the archive holds."""
        return await self._known(ids)

    async def _known(self, ids: list[bytes]) -> dict[bytes, tuple[str, int]]:
        found: dict[bytes, tuple[str, int]] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(
                f"SELECT id, topic, seq FROM messages WHERE id IN ({marks})", chunk
            ) as cur:
                for row in await cur.fetchall():
                    found[bytes(row[0])] = (row[1], int(row[2]))
        return found

    async def page(self, topic: str, from_seq: int, limit: int) -> Page:
        """Messages with ``seq >= from_seq``, in order; holes are simply skipped."""
        async with self._db.execute(
            "SELECT seq, wire FROM messages WHERE topic=? AND seq>=? ORDER BY seq LIMIT ?",
            (topic, max(1, from_seq), limit),
        ) as cur:
            rows = [(int(r[0]), bytes(r[1])) for r in await cur.fetchall()]
        last = self.last_seq(topic)
        next_seq = rows[-1][0] + 1 if len(rows) == limit and rows[-1][0] < last else 0
        return Page(rows, next_seq, last)

    async def latest(self, topic: str, limit: int) -> list[tuple[int, bytes]]:
        """The newest ``limit`` messages of ``topic``, oldest first: (seq, wire)."""
        async with self._db.execute(
            "SELECT seq, wire FROM messages WHERE topic=? ORDER BY seq DESC LIMIT ?",
            (topic, limit),
        ) as cur:
            rows = [(int(r[0]), bytes(r[1])) for r in await cur.fetchall()]
        return rows[::-1]
