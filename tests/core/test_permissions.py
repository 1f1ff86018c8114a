"""A node's data is for its user alone: data directory 0700, every file in it 0600."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_node_dir, running_node
from united_directory.client.service import DirectoryCache

from united_core.cli import main as cli_main
from united_core.sqlite import open_database
from united_core.testing import Community

SERVER_EXTRA = '[directory]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n'


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """A permissive umask (many systems' default), so nothing is owner-only by luck."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes(directory: Path) -> dict[str, int]:
    """The data directory's own mode ("."), and that of everything in it."""
    found = {".": mode(directory)}
    for path in directory.rglob("*"):
        found[str(path.relative_to(directory))] = mode(path)
    return found


def assert_owner_only(directory: Path) -> dict[str, int]:
    found = modes(directory)
    expected = {name: 0o700 if (directory / name).is_dir() else 0o600 for name in found}
    assert {n: f"{m:04o}" for n, m in found.items()} == {n: f"{m:04o}" for n, m in expected.items()}
    return found


def test_started_server_and_client_keep_their_data_owner_only(tmp_path: Path) -> None:
    community = Community(tmp_path)
    try:
        community.start_server()
        community.create_channel("general")
        alice = community.add_member("alice")
        alice.ctl("join", "general")
        # While running: the databases are open, with their -wal and -shm files.
        server_files = assert_owner_only(tmp_path / "server" / "data")
        alice_files = assert_owner_only(tmp_path / "alice" / "data")
        assert {"directory.sqlite3", "archive.sqlite3-wal", "archive.sqlite3-shm"} <= set(
            server_files
        )
        assert {"directory-cache.json", "cache.sqlite3", "cache.sqlite3-wal"} <= set(alice_files)
    finally:
        community.stop()
    assert_owner_only(tmp_path / "server" / "data")
    assert_owner_only(tmp_path / "alice" / "data")
    for node in ("server", "alice"):
        assert mode(tmp_path / node / "identity.key") == 0o600


def test_join_creates_the_data_directory_owner_only(tmp_path: Path) -> None:
    cache = DirectoryCache(tmp_path / "alice" / "data" / "directory-cache.json")
    stale = cache.path.with_suffix(".tmp")
    cache.path.parent.mkdir(parents=True)
    cache.path.parent.chmod(0o700)
    stale.write_text("left by a crash")
    stale.chmod(0o644)
    cache.save()
    assert_owner_only(tmp_path / "alice" / "data")
    DirectoryCache(tmp_path / "bob" / "data" / "directory-cache.json").save()
    assert_owner_only(tmp_path / "bob" / "data")


def test_loose_data_directory_is_tightened_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_node_dir(tmp_path, role="server", plugins=None, extra=SERVER_EXTRA)
    data = tmp_path / "node" / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    # An archive written by an earlier version, with the usual 0644 files.
    with contextlib.closing(sqlite3.connect(data / "archive.sqlite3")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE leftover (x)")
        db.commit()
    (data / "archive.sqlite3-wal").touch(mode=0o644)  # left by a crash (empty: no frames)
    (data / "archive.sqlite3").chmod(0o644)
    (data / "notes.txt").write_text("copied in")
    (data / "notes.txt").chmod(0o664)
    (data / "old").mkdir(mode=0o755)
    (data / "old").chmod(0o755)
    (data / "readonly").write_text("stricter than needed")
    (data / "readonly").chmod(0o400)
    outside = tmp_path / "shared.txt"
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    (data / "link").symlink_to(outside)
    assert mode(data) == 0o755

    async def run() -> None:
        async with running_node(config):
            found = modes(data)
            assert found["."] == 0o700 and found["old"] == 0o700
            for name in ("archive.sqlite3", "archive.sqlite3-wal", "notes.txt"):
                assert found[name] == 0o600, name
            assert found["readonly"] == 0o400  # never loosened
            assert mode(outside) == 0o644  # a link's target is left alone
            assert found["directory.sqlite3"] == 0o600

    with caplog.at_level(logging.INFO, logger="united_core.identity"):
        asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if r.name == "united_core.identity"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"tightened permissions in {data} to owner-only")
    for part in (
        "the directory 0755",
        "archive.sqlite3 0644",
        "archive.sqlite3-wal 0644",
        "notes.txt 0664",
        "old 0755",
    ):
        assert part in lines[0]
    assert "readonly" not in lines[0] and "link" not in lines[0]

    caplog.clear()  # once tight, a start says nothing
    with caplog.at_level(logging.INFO, logger="united_core.identity"):
        asyncio.run(run())
    assert not [r for r in caplog.records if r.name == "united_core.identity"]


def test_open_database_files_are_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "db"
    directory.mkdir()  # 0755 with this umask: only the files are at stake here
    path = directory / "new.sqlite3"

    def files() -> dict[str, int]:
        return {name: m for name, m in modes(directory).items() if name != "."}

    async def scenario() -> None:
        db = await open_database(path, "CREATE TABLE IF NOT EXISTS t (x);")
        try:
            await db.execute("INSERT INTO t VALUES (1)")
            await db.commit()
            assert files() == dict.fromkeys(
                ("new.sqlite3", "new.sqlite3-wal", "new.sqlite3-shm"), 0o600
            )
            for name in files():  # as an older version (or a restore) left them
                (directory / name).chmod(0o644)
            # A second connection, as after a restart with the files in place.
            again = await open_database(path, "CREATE TABLE IF NOT EXISTS t (x);")
            await again.close()
            assert set(files().values()) == {0o600}
        finally:
            await db.close()

    asyncio.run(scenario())


def test_console_history_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from united_core.console import Console

    async def no_session(self: Console) -> None:
        assert self.history_path is not None and self.history_path.exists()

    monkeypatch.setattr(Console, "run", no_session)
    config = make_node_dir(tmp_path)
    assert cli_main(["console", "-c", str(config)]) == 0
    history = tmp_path / "node" / "data" / "console-history"
    assert mode(history.parent) == 0o700 and mode(history) == 0o600
    history.chmod(0o644)
    history.parent.chmod(0o755)
    assert cli_main(["console", "-c", str(config)]) == 0
    assert_owner_only(history.parent)
