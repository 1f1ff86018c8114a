"""``united`` as a user runs it: real processes, signals, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_node_dir, run_cli
from support import free_port, serving_node, wait_until_serving

HELPERS = Path(__file__).parents[1] / "helpers"


def server_config(
    tmp_path: Path, name: str = "server", port: int | None = None
) -> tuple[Path, int]:
    port = port or free_port()
    config = make_node_dir(tmp_path, name, role="server")
    text = config.read_text().replace('"/ip4/127.0.0.1/tcp/0"', f'"/ip4/127.0.0.1/tcp/{port}"')
    config.write_text(text)
    return config, port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_node_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    """Exit 0 in under 2 s, leaving no thread (py-libp2p's cache threads included),
    no listener and no control socket behind."""
    config, port = server_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS / "report_run.py"), str(config), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status = wait_until_serving(config, proc)
        assert any(f"/tcp/{port}/" in a for a in status["listen_addrs"])
        assert status["plugin_set"] == "server" and status["plugins"] == ["ping"]
        started = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert elapsed < 2.0, f"stop took {elapsed:.2f} s"
    assert "Traceback" not in err
    report = json.loads(out.split("REPORT ", 1)[1])
    assert report == {
        "status": 0,
        "threads": ["MainThread"],
        "port_open": False,
        "socket_file": False,
    }


def test_init_then_run_listens_on_the_configured_address(tmp_path: Path) -> None:
    config, port = server_config(tmp_path)
    with serving_node(config) as proc:
        status = json.loads(run_cli("ctl", "-c", str(config), "status", "--json").stdout)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        ident = run_cli("id", "-c", str(config), "--json")
        assert json.loads(ident.stdout)["peer_id"] == status["peer_id"]
        stop = run_cli("ctl", "-c", str(config), "stop")
        assert stop.returncode == 0 and "stopping" in stop.stdout
        assert proc.wait(timeout=10) == 0


def test_ctl_without_a_running_node_is_one_line(tmp_path: Path) -> None:
    config, _ = server_config(tmp_path)
    result = run_cli("ctl", "-c", str(config), "status")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no node is running" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_node_on_the_same_port_or_socket_is_refused(tmp_path: Path) -> None:
    config, port = server_config(tmp_path, "one")
    with serving_node(config):
        # Same port, other directory: py-libp2p's SO_REUSEPORT would have let it "start".
        other, _ = server_config(tmp_path, "two", port=port)
        result = run_cli("run", "-c", str(other), timeout=20)
        assert result.returncode == 1 and f"tcp/{port}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        # Same config (same control socket) while the first runs.
        text = config.read_text().replace(f"/tcp/{port}", "/tcp/0")
        (tmp_path / "one" / "copy.toml").write_text(text)
        result = run_cli("run", "-c", str(tmp_path / "one" / "copy.toml"), timeout=20)
        assert result.returncode == 1 and "already running" in result.stderr, result.stderr
        # The first node is unharmed.
        assert run_cli("ctl", "-c", str(config), "status").returncode == 0


def test_bad_ctl_usage_and_errors(tmp_path: Path) -> None:
    config, _ = server_config(tmp_path)
    with serving_node(config) as proc:
        result = run_cli("ctl", "-c", str(config), "no-such-command")
        assert result.returncode == 1 and "unknown command" in result.stderr
        result = run_cli("ctl", "-c", str(config), "ping", "not-a-peer-id")
        assert result.returncode == 1 and "not a PeerId" in result.stderr
        result = run_cli("ctl", "-c", str(config), "connect", "/ip4/127.0.0.1/tcp/1")
        assert result.returncode == 1 and "multiaddr" in result.stderr
        assert "Traceback" not in result.stderr
        assert run_cli("ctl", "-c", str(config), "status").returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_plugins_lists_available_and_enabled(tmp_path: Path) -> None:
    config, _ = server_config(tmp_path)
    result = run_cli("plugins", "-c", str(config), "--json")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["ping"]["enabled"] == "yes" and rows["ping"]["description"]
    env = {
        "PYTHONPATH": os.pathsep.join(
            [
                str(Path(__file__).parents[1] / "fixtures" / "toy_plugins"),
                os.environ.get("PYTHONPATH", ""),
            ]
        )
    }
    result = run_cli("plugins", env=env)
    assert (
        "recorder" in result.stdout
        and "broken" in result.stdout
        and "failed to import" in result.stdout
    )
