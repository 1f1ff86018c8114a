"""Opening the plugins' SQLite databases the same way everywhere.

WAL (readers never block the writer; a committed transaction survives a crash
of the process) and ``synchronous=NORMAL`` (a power loss may lose the last
transactions, a SIGKILL does not), foreign keys on, then the plugin's schema.

The files are owner-only (0600): the database is created 0600 before SQLite
opens it, and SQLite gives its ``-wal`` and ``-shm`` files the database file's
mode; files found looser (an older version, a restore) are tightened first.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from .identity import create_private_file

SIDE_FILES = ("-wal", "-shm", "-journal")


async def open_database(path: Path, schema: str) -> aiosqlite.Connection:
    if str(path) != ":memory:":
        # An empty file is an empty database; SQLite copies its mode to -wal and -shm.
        create_private_file(path, *(path.with_name(path.name + s) for s in SIDE_FILES))
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
