"""``united run`` that cannot start: one line on stderr, never a traceback, the exit
status of README.md (2: configuration, 1: runtime), nothing left behind.

Real processes: what an operator sees in a terminal or in the journal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import make_node_dir, run_cli, running_node
from support import serving_node

NOISE = ("Traceback", "Exception in thread", "Event loop is closed", "Task was destroyed")


def minimal_node(tmp_path: Path, name: str = "node", listen: str = "/ip4/127.0.0.1/tcp/0") -> Path:
    """A node directory (``united init``'s key) whose united.toml has only what it
    uses (no section of a disabled plugin: no warning at start)."""
    config = make_node_dir(tmp_path, name)
    config.write_text(
        f'[node]\nplugin_set = "test"\nplugins = ["ping"]\n[p2p]\nlisten = ["{listen}"]\n'
    )
    return config


def one_line(result: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    """The run failed with ``status`` and exactly one line on stderr, naming ``words``."""
    err = result.stderr
    assert result.returncode == status, (result.returncode, err)
    assert not any(n in err for n in NOISE), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("united: "), err
    for word in words:
        assert word in lines[0], err
    return lines[0]


def test_missing_key_is_one_line_exit_2(tmp_path: Path) -> None:
    config = minimal_node(tmp_path)
    (config.parent / "identity.key").unlink()
    line = one_line(run_cli("run", "-c", str(config), timeout=20), 2, "identity.key", "no key")
    assert "united init" in line


def test_loose_key_is_one_line_exit_2(tmp_path: Path) -> None:
    config = minimal_node(tmp_path)
    os.chmod(config.parent / "identity.key", 0o644)
    one_line(run_cli("run", "-c", str(config), timeout=20), 2, "0644", "chmod 600")


def test_libp2p_port_taken_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as squatter:  # someone else's service on the port
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = minimal_node(tmp_path, listen=f"/ip4/127.0.0.1/tcp/{port}")
        result = run_cli("run", "-c", str(config), timeout=20)
    one_line(result, 1, "cannot start", f"tcp/{port}", "in use")
    assert not (config.parent / "united.sock").exists()


def test_started_twice_on_one_directory_is_one_line(tmp_path: Path) -> None:
    """The second node stops at the data directory's lock, before it opens a port,
    the control socket or a database; the first one is unharmed."""
    config = minimal_node(tmp_path)
    with serving_node(config) as first:
        result = run_cli("run", "-c", str(config), timeout=20)
        one_line(result, 1, "cannot start", "already running", f"pid {first.pid}")
        # Another config file sharing the data directory (its own socket): refused too.
        twin = config.parent / "twin.toml"
        twin.write_text(config.read_text() + '[control]\nsocket = "twin.sock"\n')
        one_line(run_cli("run", "-c", str(twin), timeout=20), 1, "already running")
        assert run_cli("ctl", "-c", str(config), "status").returncode == 0
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0
    # The lock went with the first node: the directory starts again.
    with serving_node(config):
        pass


def test_unusable_database_is_one_line(tmp_path: Path) -> None:
    """A file where the archive's database should be that SQLite cannot read: the
    file named, what to do, no aiosqlite traceback."""
    config = make_node_dir(tmp_path, "server", role="server", plugins=("archive",))
    config.write_text(
        '[node]\nplugin_set = "test"\nplugins = ["archive"]\n'
        '[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n'
    )
    data = config.parent / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    (data / "archive.sqlite3").write_bytes(b"this is not a database" * 200)
    os.chmod(data / "archive.sqlite3", 0o600)
    one_line(
        run_cli("run", "-c", str(config), timeout=20),
        1,
        "archive.sqlite3",
        "not a database",
        "backup",
    )


def test_failure_after_databases_opened_closes_them_first(tmp_path: Path) -> None:
    """The directory's WebSocket port taken: the archive and the registry had opened
    their databases; they are closed before the event loop ends (an aiosqlite
    thread finishing after it logged ``Event loop is closed`` tracebacks)."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = make_node_dir(tmp_path, "server", role="server", plugins=None)
        config.write_text(
            '[node]\nplugin_set = "test"\nplugins = ["membership", "archive", "directory"]\n'
            '[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n'
            f'[directory]\nlisten_host = "127.0.0.1"\nlisten_port = {port}\n'
        )
        result = run_cli("run", "-c", str(config), timeout=20)
    assert result.returncode == 1, result.stderr
    assert not any(n in result.stderr for n in NOISE), result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("united: ")]
    assert len(errors) == 1 and "cannot start" in errors[0] and str(port) in errors[0]
    assert result.stderr.strip().splitlines()[-1] == errors[0]


def _not_ours(ip: str) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return True
    return False


def test_listen_address_not_on_this_host_is_one_line(tmp_path: Path) -> None:
    """A port-0 listen address on an IP this host does not have: py-libp2p logged
    the failed listener and the node ran, listening on nothing."""
    ip = "203.0.113.77"  # TEST-NET-3
    if not _not_ours(ip):
        pytest.skip(f"{ip} is an address of this host")
    config = minimal_node(tmp_path, listen=f"/ip4/{ip}/tcp/0")
    one_line(run_cli("run", "-c", str(config), timeout=20), 1, "cannot start", ip, "assign")


def test_runtime_refuses_to_run_without_a_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_thread_leaks: None
) -> None:
    """Whatever the address probe misses: a host that opened no listener stops the
    start (and its trio thread), rather than a node running on nothing."""
    import united_core.p2p.runtime as runtime

    ip = "203.0.113.77"
    if not _not_ours(ip):
        pytest.skip(f"{ip} is an address of this host")
    monkeypatch.setattr(runtime, "check_ports_free", lambda addrs: None)
    config = minimal_node(tmp_path, listen=f"/ip4/{ip}/tcp/0")

    async def scenario() -> None:
        with pytest.raises(OSError, match="no listener opened"):
            async with running_node(config):
                pass

    asyncio.run(scenario())
