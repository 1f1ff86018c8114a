"""Opening the plugins' SQLite databases the same way everywhere.

WAL (readers never block the writer; a committed transaction survives a crash
of the process) and ``synchronous=NORMAL`` (a power loss may lose the last
transactions, a SIGKILL does not), foreign keys on, then the plugin's schema.

The files are owner-only (0600): the database is created 0600 before SQLite
opens it, and SQLite gives its ``-wal`` and ``-shm`` files the database file's
mode; files found looser (an older version, a restore) are tightened first.

A file SQLite cannot use (not a database, corrupt, unreadable) is a
:class:`DatabaseUnusable` naming the file: ``united run`` prints it as one line.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from .identity import create_private_file

SIDE_FILES = ("-wal", "-shm", "-journal")


class DatabaseUnusable(Exception):
    """A database file SQLite cannot open or read; the message names the file."""


async def open_database(path: Path, schema: str) -> aiosqlite.Connection:
    if str(path) != ":memory:":
        # An empty file is an empty database; SQLite copies its mode to -wal and -shm.
        create_private_file(path, *(path.with_name(path.name + s) for s in SIDE_FILES))
    try:
        db = await aiosqlite.connect(path)
    except sqlite3.DatabaseError as exc:
        raise DatabaseUnusable(f"{path}: {exc}") from exc
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.executescript(schema)
        await db.commit()
    except BaseException as exc:
        await db.close()
        if type(exc) is sqlite3.DatabaseError:  # not a database, or corrupt
            raise DatabaseUnusable(
                f"{path}: {exc} (move it away to start afresh, or restore it from a backup)"
            ) from exc
        if isinstance(exc, sqlite3.DatabaseError):  # locked, read-only, ...
            raise DatabaseUnusable(f"{path}: {exc}") from exc
        raise
    return db
