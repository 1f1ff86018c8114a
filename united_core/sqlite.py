"""Opening the plugins' SQLite databases the same way everywhere.

WAL (readers never block the writer; a committed transaction survives a crash
of the process) and ``synchronous=NORMAL`` (a power loss may lose the last
transactions, a SIGKILL does not), foreign keys on, then the plugin's schema.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite


async def open_database(path: Path, schema: str) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.executescript(schema)
        await db.commit()
    except BaseException:
        await db.close()
        raise
    return db
