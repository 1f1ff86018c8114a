"""``united run`` as a service: the systemd notification protocol, SIGHUP, log
options, journald's format, and where the config is found without ``-c``.

Real processes, a real notification socket (the test plays systemd's part).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_node_dir, run_cli, united_cmd
from support import wait_until_serving

from united_core.cli.common import default_config
from united_core.cli.sdnotify import Notifier, notify_address, watchdog_interval

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def minimal_node(tmp_path: Path, name: str = "node", log_level: str = "info") -> Path:
    """A ping-only node on a free loopback port; no section of a disabled plugin."""
    config = make_node_dir(tmp_path, name)
    config.write_text(
        f'[node]\nplugin_set = "test"\nplugins = ["ping"]\nlog_level = "{log_level}"\n'
        '[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\ndial_timeout = 10.0\n'
    )
    return config


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without a service manager's variables (a CI runner under
    systemd), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
        and k != "UNITED_CONFIG"
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def start(
    config: Path,
    *args: str,
    env: dict[str, str],
    with_c: bool = True,
    before: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    """``united BEFORE run [-c CONFIG] ARGS`` in the config's directory, its output
    appended to ``node.log`` there."""
    with (config.parent / "node.log").open("a") as out:
        return subprocess.Popen(
            united_cmd(*before, "run", *(["-c", str(config)] if with_c else []), *args),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=config.parent,
        )


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=5)


# ---- the notification protocol --------------------------------------------------------------


@pytest.fixture(params=["abstract", "path"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[socket.socket, str]]:
    """systemd's end: a datagram socket, named ``@...`` (abstract) or by a path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "abstract":
        name = f"united-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        value = "@" + name
    else:
        value = str(tmp_path / "notify.sock")
        sock.bind(value)
    sock.settimeout(0.5)
    try:
        yield sock, value
    finally:
        sock.close()


def read_until(sock: socket.socket, wanted: str, deadline: float, seen: list[list[str]]) -> None:
    while time.monotonic() < deadline:
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message.split("\n"))
        if wanted in seen[-1]:
            return
    raise AssertionError(f"no {wanted} within the time; got {seen}")


def test_notify_ready_watchdog_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """READY=1 once the node serves, WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1 on
    SIGTERM; STATUS= says what it does."""
    sock, address = notify_socket
    config = minimal_node(tmp_path)
    env = clean_env(NOTIFY_SOCKET=address, WATCHDOG_USEC="400000")  # a ping every 0.2 s
    proc = start(config, env=env)
    seen: list[list[str]] = []
    try:
        read_until(sock, "READY=1", time.monotonic() + 20, seen)
        assert "STATUS=starting" in seen[0]
        ready = seen[-1]
        assert any(f.startswith("STATUS=running") and "tcp/" in f for f in ready), ready
        # Ready means serving: the control API answers with the node running.
        status = json.loads(run_cli("ctl", "-c", str(config), "status", "--json").stdout)
        assert status["state"] == "running"
        started = time.monotonic()
        pings = 0
        while pings < 3:
            read_until(sock, "WATCHDOG=1", started + 5, seen)
            pings += 1
        assert time.monotonic() - started < 3, "pings every 0.2 s expected"
        proc.send_signal(signal.SIGTERM)
        read_until(sock, "STOPPING=1", time.monotonic() + 10, seen)
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)


def test_notify_without_a_socket_or_for_another_pid() -> None:
    assert Notifier({}).enabled is False and Notifier({}).notify("READY=1") is False
    assert notify_address("@name") == "\0name"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("vsock:2:1234") is None and notify_address("relative") is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 7) is None
    assert watchdog_interval({}, 7) is None
    # A manager that went away: the message is dropped, never raised.
    gone = Notifier({"NOTIFY_SOCKET": "@united-test-nobody-" + uuid.uuid4().hex})
    assert gone.notify("READY=1") is False


# ---- SIGHUP ----------------------------------------------------------------------------------


def wait_for_line(log: Path, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if needle in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no {needle!r} in {log}: {log.read_text()[-2000:]}")


def test_sighup_applies_the_log_level_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    config = minimal_node(tmp_path, log_level="warning")
    log = config.parent / "node.log"
    proc = start(config, env=clean_env())
    try:
        wait_until_serving(config, proc)
        assert "INFO" not in log.read_text()  # at warning, "node ... up" is not logged
        text = config.read_text()
        config.write_text(
            text.replace('log_level = "warning"', 'log_level = "info"').replace(
                "dial_timeout = 10.0", "dial_timeout = 5.0"
            )
        )
        proc.send_signal(signal.SIGHUP)
        line = wait_for_line(log, "reload:")
        assert "log level info" in line and "[p2p] dial_timeout" in line and "restart" in line
        # A config that no longer parses: said in one line, the node goes on.
        config.write_text(text + "\nnot toml = = =\n")
        proc.send_signal(signal.SIGHUP)
        line = wait_for_line(log, "the running configuration stays")
        assert "not valid TOML" in line
        assert proc.poll() is None
        config.write_text(text)  # (ctl reads it too)
        assert run_cli("ctl", "-c", str(config), "status").returncode == 0
        assert run_cli("ctl", "-c", str(config), "stop").returncode == 0
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)
    assert "node stopped" in log.read_text()  # INFO, logged since the reload
    assert "Traceback" not in log.read_text()


# ---- log options and journald ----------------------------------------------------------------


def test_log_level_verbose_and_journald_format(tmp_path: Path) -> None:
    """``-v`` after the sub-command shows UNITED's debug lines; under journald
    (JOURNAL_STREAM names our stderr) lines carry a syslog priority, no timestamp."""
    config = minimal_node(tmp_path)
    log = config.parent / "node.log"
    with log.open("w") as out:
        st = os.fstat(out.fileno())
        env = clean_env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = subprocess.Popen(
            united_cmd("run", "-c", str(config), "-v"), stdout=out, stderr=out, env=env
        )
    try:
        wait_until_serving(config, proc)
        assert run_cli("ctl", "-c", str(config), "stop").returncode == 0
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)
    lines = log.read_text().splitlines()
    assert any(line.startswith("<6>united_core.node: node ") for line in lines), lines
    assert any(line.startswith("<7>") for line in lines), lines  # -v: debug
    assert not any(TIMESTAMP.match(line) for line in lines), lines
    assert not any(line.startswith("<7>libp2p") for line in lines)  # -v, not -vv


# ---- the config without -c, and -c before or after the sub-command ---------------------------


def test_config_found_without_c_and_c_anywhere(tmp_path: Path) -> None:
    """``united --log-level warning run`` in the node's directory (./united.toml; a
    global option before the sub-command), then ctl, id and a plugin's command with
    -c before or after the sub-command (for ctl: before its COMMAND), or none."""
    config = minimal_node(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = start(config, env=clean_env(), with_c=False, before=("--log-level", "warning"))
    try:
        wait_until_serving(config, proc)

        def ctl(*args: str, cwd: Path = elsewhere, **env: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                united_cmd(*args),
                capture_output=True,
                text=True,
                timeout=30,
                cwd=cwd,
                env=clean_env(**env),
            )

        def peer_id(result: subprocess.CompletedProcess[str]) -> str:
            assert result.returncode == 0, result.stderr
            return str(json.loads(result.stdout)["peer_id"])

        # -c before the sub-command, and after it (for ctl: before the control command).
        expected = peer_id(ctl("-c", str(config), "id", "--json"))
        assert peer_id(ctl("ctl", "-c", str(config), "status", "--json")) == expected
        assert peer_id(ctl("-c", str(config), "ctl", "status", "--json")) == expected
        # -c twice, anywhere: one line, exit 2 (not the last one silently).
        for twice in (
            ("-c", str(config), "ctl", "-c", str(tmp_path / "other.toml"), "status"),
            ("ctl", "-c", str(config), "--config", str(config), "status"),
            ("-c", str(config), "id", "-c", str(config)),
        ):
            result = ctl(*twice)
            assert result.returncode == 2 and "twice" in result.stderr, (twice, result)
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        # After the control command, -c is one of its words: `stop` (no arguments)
        # refuses it rather than stopping the default node (here: this one, found
        # in the current directory) instead of the one named.
        other = tmp_path / "other.toml"
        for words in (("stop", "-c", str(other)), ("status", f"--config={other}")):
            result = ctl("ctl", *words, cwd=config.parent)
            assert result.returncode == 2 and "goes before the command" in result.stderr, result
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert proc.poll() is None  # still running: not stopped by `stop -c OTHER`
        # No -c: $UNITED_CONFIG, then ./united.toml, then $XDG_CONFIG_HOME/united/.
        assert peer_id(ctl("ctl", "status", "--json", UNITED_CONFIG=str(config))) == expected
        assert peer_id(ctl("ctl", "status", "--json", cwd=config.parent)) == expected
        xdg = tmp_path / "xdg"
        (xdg / "united").mkdir(parents=True)
        (xdg / "united" / "united.toml").symlink_to(config)
        # (a symlink: the node's paths are relative to the link's directory; use the
        # real file's through $UNITED_CONFIG to run one, this only shows it is found)
        assert default_config({"XDG_CONFIG_HOME": str(xdg)}) == xdg / "united" / "united.toml"
        # A plugin's own command takes the default too (here the node has no `invite`:
        # it is the node that refuses, not the parser asking for -c).
        result = ctl("invite", UNITED_CONFIG=str(config))
        assert result.returncode == 1 and "invite" in result.stderr, result.stderr
        # Nothing anywhere: one line saying where it looked, exit 2.
        result = ctl("ctl", "status", HOME=str(elsewhere), XDG_CONFIG_HOME=str(elsewhere))
        assert result.returncode == 2 and "UNITED_CONFIG" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert run_cli("ctl", "-c", str(config), "stop").returncode == 0
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)
    log = (config.parent / "node.log").read_text()
    assert "INFO" not in log and "node stopped" not in log  # --log-level warning


def test_default_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    (home / ".config" / "united").mkdir(parents=True)
    (home / ".config" / "united" / "united.toml").write_text("")
    assert default_config({"HOME": str(home)}) == home / ".config" / "united" / "united.toml"
    # A relative XDG_CONFIG_HOME is ignored (the XDG spec).
    env = {"HOME": str(home), "XDG_CONFIG_HOME": "relative"}
    assert default_config(env) == home / ".config" / "united" / "united.toml"
    (tmp_path / "united.toml").write_text("")
    assert default_config({"HOME": str(home)}) == tmp_path / "united.toml"
    assert default_config({"HOME": str(home), "UNITED_CONFIG": "x.toml"}) == tmp_path / "x.toml"
    assert default_config({"HOME": str(tmp_path / "nobody")}) == tmp_path / "united.toml"
    (tmp_path / "united.toml").unlink()
    assert default_config({"HOME": str(tmp_path / "nobody")}) is None


def test_ctl_takes_c_before_its_command_and_leaves_the_commands_words_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``-c``/``--config`` before ctl's COMMAND is the config; after it, one of the
    command's words (a message's text here), ``--config=`` too; after ``--`` the
    words are literal (``--json`` there is text). ``-c`` twice is an error."""
    from united_core.cli import main as cli_main
    from united_core.cli.entry import TWICE, build_parser

    def parse(*argv: str) -> tuple[str | None, list[str], int]:
        args = build_parser().parse_args(argv)
        args.prepare(args)
        return getattr(args, "config", None), args.words, args.literal_from

    assert parse("ctl", "send", "general", "use", "-c", "to", "compile") == (
        None,
        ["send", "general", "use", "-c", "to", "compile"],
        6,
    )
    assert parse("ctl", "-c", "a.toml", "send", "general", "try", "--config=/tmp/evil.toml") == (
        "a.toml",
        ["send", "general", "try", "--config=/tmp/evil.toml"],
        4,
    )
    assert parse("-c", "a.toml", "ctl", "send", "general", "--config", "b.toml") == (
        "a.toml",
        ["send", "general", "--config", "b.toml"],
        4,
    )
    assert parse("ctl", "--config", "a.toml", "send", "general", "--", "-c", "--json") == (
        "a.toml",
        ["send", "general", "-c", "--json"],
        2,
    )
    assert parse("ctl", "--", "send", "general", "-c") == (None, ["send", "general", "-c"], 0)
    for twice in (
        ("ctl", "-c", "a.toml", "-c", "b.toml", "status"),
        ("ctl", "--config=a.toml", "--config", "a.toml", "status"),
        ("-c", "a.toml", "ctl", "-c", "b.toml", "status"),
        ("-c", "a.toml", "-c", "b.toml", "ctl", "status"),
    ):
        capsys.readouterr()
        assert cli_main(list(twice)) == 2, twice
        assert capsys.readouterr().err == f"united: {TWICE}\n"


def test_core_commands_do_not_import_every_installed_plugin() -> None:
    """`united run` (any core command but init) builds its parser without the plugins'
    commands: a node holds only the plugins it enables, not every installed one (issue
    14, idle memory). No command, -h before it, init and a plugin's command still get
    every plugin's parser."""
    from united_core.cli.entry import BUILTIN_COMMANDS, _core_command

    assert _core_command(["run", "-c", "x.toml"]) == "run"
    assert _core_command(["-c", "x.toml", "--log-level", "debug", "-v", "run"]) == "run"
    assert _core_command(["--config=x.toml", "ctl", "send", "g", "--", "-h"]) == "ctl"
    for argv in ([], ["-h", "run"], ["--version"], ["invite", "-c", "x"], ["--log-level", "x"]):
        assert _core_command(argv) is None, argv
    code = (
        "import sys\n"
        "from united_core.cli.entry import build_parser\n"
        "build_parser(plugins=False)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('united_') and "
        "not m.startswith('united_core'))\n"
        "sub = [a for a in build_parser(plugins=False)._actions if a.dest == 'command'][0]\n"
        "print(loaded, sorted(sub.choices))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"[] {sorted(BUILTIN_COMMANDS)}"
