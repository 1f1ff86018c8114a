"""Invites that work from another machine, and `united join` that fails fast.

`united init --role server` takes (or asks for) the public address; `united
invite` prints a join command with it and `--name`; a server without a usable
public address says so; `united join` gives up on an unreachable or silent
server within its bound, with the reason; Ctrl-C is one line and exit 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import pty
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, united_cmd
from support import free_port, init_server_dir, server, serving_node
from united_directory.client.commands import JOIN_TIMEOUT
from united_directory.server import service as service_module

from united_core.cli import main as cli_main


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_the_invite_names_the_public_url_and_the_member(tmp_path: Path) -> None:
    port = free_port()
    public = f"ws://127.0.0.1:{port}/ws"
    config = init_server_dir(tmp_path, "--public-url", public, port=port)
    assert tomllib.loads(config.read_text())["directory"]["public_url"] == public
    with serving_node(config):
        invite = run_cli("invite", "-c", str(config), "--name", "Alice B")
        assert invite.returncode == 0 and invite.stderr == "", invite.stderr
        line = invite.stdout.strip().splitlines()[-1]
        words = shlex.split(line)
        assert words[:3] == ["united", "join", public]
        assert words[4:] == ["--name", "Alice B", "--dir", "./united-member"]
        assert "'Alice B'" in line  # quoted for the shell

        # The command as printed, run from the member's directory.
        member = tmp_path / "home"
        member.mkdir()
        joined = subprocess.run(
            united_cmd(*words[1:]), cwd=member, capture_output=True, text=True, timeout=30
        )
        assert joined.returncode == 0, joined.stderr
        assert "registered as Alice B" in joined.stdout
        written = tomllib.loads((member / "united-member" / "united.toml").read_text())
        assert written["discovery"]["server_url"] == public
        assert written["discovery"]["display_name"] == "Alice B"

        # Without --name the command still has --name, for the member to fill in.
        anyone = run_cli("invite", "-c", str(config)).stdout.strip().splitlines()
        assert "display name for NAME" in anyone[-2]
        assert shlex.split(anyone[-1])[4:6] == ["--name", "NAME"]

        # A name someone holds (case and width aside) is refused: no invite, one line.
        taken = run_cli("invite", "-c", str(config), "--name", "ALICE b")
        assert taken.returncode == 1
        assert "is taken" in one_error_line(taken.stderr)

        # A member choosing a taken name sees one line; the invite stays valid.
        code = shlex.split(anyone[-1])[3]
        refused = run_cli("join", public, code, "--dir", str(tmp_path / "b"), "--name", "alice b")
        assert refused.returncode == 1
        error = one_error_line(refused.stderr)
        assert "'alice b' is taken" in error and "--name" in error
        bob = run_cli("join", public, code, "--dir", str(tmp_path / "b"), "--name", "bob")
        assert bob.returncode == 0, bob.stderr


def test_a_server_without_a_usable_public_address_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        with caplog.at_level(logging.WARNING, "united_directory"):
            async with server(tmp_path) as (_, service, url):
                # Unset: a concrete address of this machine (never its host name), and
                # a warning at start and with every invite.
                assert service.url == url
                assert "public_url is not set" in caplog.text
                invite = await service.create_invite()
                assert "public_url is not set" in invite["warning"]
                assert invite["url"] == url

    asyncio.run(scenario())
    # A wildcard listener's invites name an interface's address, not the host name.
    assert ipaddress.ip_address(service_module._interface_address("0.0.0.0"))


@pytest.mark.parametrize(
    ("listen_host", "public_url", "problem"),
    [
        ("0.0.0.0", "", "is not set"),
        ("0.0.0.0", "ws://127.0.0.1:7421/ws", "loopback address"),
        ("0.0.0.0", "ws://localhost:7421/ws", "loopback address"),
        ("0.0.0.0", "ws://0.0.0.0:7421/ws", "no reachable host"),
        ("127.0.0.1", "ws://127.0.0.1:7421/ws", None),
        ("0.0.0.0", "wss://chat.example.org/ws", None),
        ("0.0.0.0", "ws://203.0.113.10:7421/ws", None),
    ],
)
def test_which_public_addresses_are_usable(
    listen_host: str, public_url: str, problem: str | None
) -> None:
    config = service_module.Config(listen_host=listen_host, public_url=public_url)
    found = service_module.DirectoryService(config, None, None, Path("."))  # type: ignore[arg-type]
    said = found.public_address_problem()
    assert (said is None) if problem is None else (said is not None and problem in said)


def test_the_invite_command_line_and_its_warning(tmp_path: Path) -> None:
    """`united invite` prints a warning on stderr; stdout's last line stays the command."""
    config = init_server_dir(tmp_path)
    with serving_node(config):
        invite = run_cli("invite", "-c", str(config), "--name=-dash")
        assert invite.returncode == 0
        assert "warning: [directory] public_url is not set" in one_error_line(invite.stderr)
        words = shlex.split(invite.stdout.strip().splitlines()[-1])
        assert words[:2] == ["united", "join"] and "--name=-dash" in words


# ---- united join that fails fast ---------------------------------------------------


@contextlib.contextmanager
def silent_listener() -> Iterator[tuple[int, threading.Event]]:
    """A TCP port that accepts connections and never sends a byte."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = sock.accept()
                held.append(conn)
                accepted.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], accepted
    finally:
        sock.close()
        for conn in held:
            conn.close()


def test_join_to_an_unreachable_server_fails_at_once_with_the_reason(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    result = run_cli("join", f"ws://127.0.0.1:{port}/ws", "CODE", "--dir", str(tmp_path / "m"))
    assert time.monotonic() - start < 5
    assert result.returncode == 1
    error = one_error_line(result.stderr)
    assert f"cannot connect to 127.0.0.1 port {port}" in error and "refused" in error


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_join_to_a_silent_server_fails_within_its_bound(tmp_path: Path, scheme: str) -> None:
    bound = 2.0  # --timeout; the default is JOIN_TIMEOUT (below)
    with silent_listener() as (port, _):
        start = time.monotonic()
        result = run_cli(
            "join", f"{scheme}://127.0.0.1:{port}/ws", "CODE", "--dir", str(tmp_path / "m"),
            "--timeout", f"{bound:g}",
        )  # fmt: skip
        took = time.monotonic() - start
    assert result.returncode == 1
    assert bound <= took < bound + 5, took
    error = one_error_line(result.stderr)
    if scheme == "ws":
        assert "accepted the connection but did not answer" in error
    else:
        assert "no TLS connection within 2 s" in error


def test_join_waits_ten_seconds_by_default_and_checks_its_timeout(tmp_path: Path) -> None:
    import argparse

    from united_directory.client.commands import _add_join_args

    parser = argparse.ArgumentParser()
    _add_join_args(parser)
    assert parser.parse_args(["ws://h/ws", "C", "--dir", "d"]).timeout == JOIN_TIMEOUT == 10
    for bad in ("0.5", "301", "soon"):
        result = run_cli("join", "ws://127.0.0.1:1/ws", "C", "--dir", str(tmp_path / "m"),
                         "--timeout", bad)  # fmt: skip
        assert result.returncode == 2 and "--timeout" in result.stderr, result.stderr


def test_ctrl_c_during_join_is_one_line_and_exit_130(tmp_path: Path) -> None:
    with silent_listener() as (port, accepted):
        proc = subprocess.Popen(
            united_cmd("join", f"ws://127.0.0.1:{port}/ws", "CODE", "--dir", str(tmp_path / "m")),
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert accepted.wait(20), "united join never connected"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert one_error_line(stderr) == "united: join interrupted"


# ---- united init: the public address and TLS ---------------------------------------


def test_hook_united_register_init_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The directory's `united init` options: written for a server, refused for a
    node without the directory, listed by `united init --help`."""
    assert cli_main(["init", "--role", "server", "--dir", str(tmp_path / "s"),
                     "--public-host", "chat.example.org"]) == 0  # fmt: skip
    written = tomllib.loads((tmp_path / "s" / "united.toml").read_text())
    assert written["directory"]["public_url"] == "ws://chat.example.org:7421/ws"

    capsys.readouterr()
    client = tmp_path / "c"
    status = cli_main(["init", "--role", "client", "--dir", str(client), "--public-host", "x"])
    assert status == 2 and not client.exists()
    assert "--public-host is an option of the directory plugin" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        cli_main(["init", "--help"])
    assert "--self-signed" in capsys.readouterr().out


def test_init_makes_a_self_signed_certificate_for_the_public_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509

    directory = tmp_path / "s"
    assert cli_main(["init", "--role", "server", "--dir", str(directory),
                     "--public-host", "203.0.113.10", "--self-signed"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    written = tomllib.loads((directory / "united.toml").read_text())["directory"]
    assert written == {
        "public_url": "wss://203.0.113.10:7421/ws",
        "tls_cert": "tls.crt",
        "tls_key": "tls.key",
    }
    assert (directory / "tls.key").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((directory / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("203.0.113.10")]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3649
    assert "certificate fingerprint: sha256:" in out

    # A certificate of one's own is checked now and written with absolute paths.
    own = tmp_path / "own"
    assert cli_main(["init", "--role", "server", "--dir", str(own), "--public-url",
                     "wss://203.0.113.10:7421/ws", "--tls-cert", str(directory / "tls.crt"),
                     "--tls-key", str(directory / "tls.key")]) == 0  # fmt: skip
    written = tomllib.loads((own / "united.toml").read_text())["directory"]
    assert written["tls_cert"] == str((directory / "tls.crt").resolve())
    assert "self-signed: invites carry its fingerprint" in capsys.readouterr().out

    # Refusals: a ws:// URL with TLS, a wildcard host, no host to certify.
    for args in (
        ["--public-url", "ws://chat.example.org:7421/ws", "--self-signed"],
        ["--public-host", "0.0.0.0"],
        ["--self-signed"],
        ["--tls-cert", "x.pem"],
    ):
        target = tmp_path / f"bad{len(args)}{args[0]}"
        assert cli_main(["init", "--role", "server", "--dir", str(target), *args]) == 2, args
        assert not (target / "united.toml").exists()


def test_init_asks_for_the_public_address_at_a_terminal(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        united_cmd("init", "--role", "server", "--dir", str(directory)),
        stdin=follower,
        stdout=follower,
        stderr=follower,  # input() writes its prompt there at a terminal
        env={**os.environ, "PYTHONUNBUFFERED": "1", "UNITED_NONINTERACTIVE": ""},
    )
    os.close(follower)
    seen = b""

    def expect(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 20
        while text not in seen:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                seen += os.read(leader, 4096)

    try:
        expect(b"Public address of this server")
        os.write(leader, b"chat.example.org\n")
        expect(b"self-signed certificate for chat.example.org")
        os.write(leader, b"y\n")
        assert proc.wait(timeout=20) == 0
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    written = tomllib.loads((directory / "united.toml").read_text())["directory"]
    assert written["public_url"] == "wss://chat.example.org:7421/ws"
    assert (directory / "tls.crt").exists()
