from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from conftest import make_node_dir, run_cli

from united_core.cli import main as cli_main
from united_core.config import ConfigError
from united_core.node import declared_sections, load_settings


def write(tmp_path: Path, text: str) -> Path:
    config = make_node_dir(tmp_path)
    config.write_text(config.read_text() + "\n" + text)
    return config


def test_defaults_and_preset_values(tmp_path: Path) -> None:
    settings, _, warnings = load_settings(make_node_dir(tmp_path, role="server", plugins=None))
    assert settings["node"].plugin_set == "server"
    assert settings["node"].plugins == (
        "ping",
        "membership",
        "directory",
        "mesh",
        "archive",
        "relay",
        "autonat",
        "metrics",
    )
    assert settings["metrics"].listen == "127.0.0.1:0"  # tests: a free port, not 9464
    assert settings["mesh"].d == 4 and settings["mesh"].heartbeat_interval == 1.0
    assert settings["directory"].registration == "invite"
    assert settings["p2p"].gossipsub_protocols == ("/meshsub/1.1.0", "/meshsub/1.0.0")
    assert settings.resolve("data") == tmp_path / "node" / "data"
    assert warnings == []


@pytest.mark.parametrize(
    ("extra", "section", "key", "needle"),
    [
        ("[p2p]\nlisten_port = 5", "p2p", "listen_port", "unknown key 'listen_port'"),
        ('[p2p]\ndial_timeout = "soon"', "p2p", "dial_timeout", "must be a number"),
        ("[p2p]\ndial_timeout = 0", "p2p", "dial_timeout", "must be >= 0.1"),
        (
            "[p2p]\nmax_inflight_publishes = 1.5",
            "p2p",
            "max_inflight_publishes",
            "must be an integer",
        ),
        (
            '[p2p]\ngossipsub_protocols = ["/meshsub/9"]',
            "p2p",
            "gossipsub_protocols",
            "must be one of",
        ),
        ('[p2p]\nspeedups = ["warp-drive"]', "p2p", "speedups", "must be one of"),
        ('[p2p]\nspeedups = "all"', "p2p", "speedups", "must be a list"),
        ('[p2p]\nlisten = ["/ip4/1.2.3.4/udp/5"]', "p2p", "listen", "only TCP"),
        ('[p2p]\nlisten = ["not an address"]', "p2p", "listen", "not a multiaddr"),
        ("[node]\nlog_level = true", "node", "log_level", "must be a string"),
    ],
)
def test_bad_values_name_file_section_and_key(
    tmp_path: Path, extra: str, section: str, key: str, needle: str
) -> None:
    config = make_node_dir(tmp_path)
    text = config.read_text()
    header, _, _ = extra.partition("\n")
    # Replace the key where the file sets it, else add it to the existing table
    # (TOML forbids both a repeated key and a repeated table).
    lines = [ln for ln in text.splitlines() if not ln.startswith(key + " = ")]
    config.write_text("\n".join(lines).replace(header + "\n", extra + "\n", 1))
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    err = info.value
    assert (err.section, err.key) == (section, key)
    assert str(config) in str(err) and needle in str(err)


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    config = write(tmp_path, "[relai]\nmax = 3\n")
    with pytest.raises(ConfigError, match=r"\[relai\].*no available plugin declares it"):
        load_settings(config)


def test_unknown_plugin_lists_the_available_ones(tmp_path: Path) -> None:
    config = make_node_dir(tmp_path, plugins=["ping", "nope"])
    with pytest.raises(ConfigError, match=r"unknown plugin 'nope'; available plugins: .*ping"):
        load_settings(config)


def test_section_of_a_disabled_plugin_warns(tmp_path: Path, toy_plugins: Path) -> None:
    config = write(tmp_path, "[gatekeeper]\nmin_len = 1\n")
    _, _, warnings = load_settings(config)
    assert any("[gatekeeper]" in w and "not enabled" in w for w in warnings)


def test_plugin_section_validation(tmp_path: Path, toy_plugins: Path) -> None:
    config = make_node_dir(
        tmp_path, plugins=["gatekeeper"], extra="[gatekeeper]\nmin_len = 9\nmax_len = 3\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert (info.value.section, info.value.key) == ("gatekeeper", "min_len")
    assert "must not exceed max_len" in str(info.value)


def test_broken_plugin_is_a_clear_error(tmp_path: Path, toy_plugins: Path) -> None:
    config = make_node_dir(tmp_path, plugins=["broken"])
    with pytest.raises(ConfigError, match=r"plugin 'broken' .* failed to import"):
        load_settings(config)


def test_invalid_toml(tmp_path: Path) -> None:
    config = tmp_path / "united.toml"
    config.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config)


def test_cli_exits_2_naming_the_key_without_traceback(tmp_path: Path) -> None:
    config = make_node_dir(tmp_path)
    config.write_text(config.read_text().replace("[p2p]\n", "[p2p]\nbogus_key = 1\n", 1))
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 2
    assert (
        "bogus_key" in result.stderr and str(config) in result.stderr and "[p2p]" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_cli_missing_config_exits_2(tmp_path: Path) -> None:
    result = run_cli("run", "-c", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    make_node_dir(tmp_path, "n")
    result = run_cli("init", "--role", "client", "--dir", str(tmp_path / "n"))
    assert result.returncode == 1 and "refusing to overwrite" in result.stderr
    (tmp_path / "n" / "united.toml").unlink()
    key_before = (tmp_path / "n" / "identity.key").read_text()
    result = run_cli("init", "--role", "client", "--dir", str(tmp_path / "n"))
    assert result.returncode == 1 and "refusing to overwrite" in result.stderr
    assert (tmp_path / "n" / "identity.key").read_text() == key_before


def test_init_writes_every_key_with_its_default(tmp_path: Path) -> None:
    config = make_node_dir(tmp_path, role="server")
    text = config.read_text()
    for key in (
        "plugin_set",
        "data_dir",
        "identity_key",
        "log_level",
        "listen",
        "dial_timeout",
        "gossipsub_protocols",
        "publish_timeout",
        "socket",
    ):
        assert f"{key} = " in text, key
    assert "# dial_timeout = 10.0" in text


def _plugins_line(text: str) -> list[str]:
    found = re.search(r"^plugins = (\[.*\])$", text, flags=re.M)
    assert found is not None
    return list(tomllib.loads(f"p = {found.group(1)}")["p"])


def test_init_with_renders_a_third_party_plugins_section(tmp_path: Path, toy_plugins: Path) -> None:
    """`--with NAME` adds a plugin to the preset's and writes its commented section."""
    directory = tmp_path / "n"
    argv = ["init", "--role", "server", "--dir", str(directory)]
    assert cli_main([*argv, "--with", "gatekeeper", "--with", "recorder"]) == 0
    text = (directory / "united.toml").read_text()
    assert _plugins_line(text) == [
        *("ping", "membership", "directory", "mesh", "archive", "relay", "autonat", "metrics"),
        *("gatekeeper", "recorder"),
    ]
    for line in ("[gatekeeper]", "# Smallest payload accepted.", "# min_len = 0", "[recorder]"):
        assert f"\n{line}\n" in text, line
    assert "\n[mesh]\n" in text  # the preset's plugins keep theirs
    settings, _, warnings = load_settings(directory / "united.toml")
    assert settings["gatekeeper"].max_len == 1000 and warnings == []


def test_init_plugins_replaces_the_presets_list(tmp_path: Path, toy_plugins: Path) -> None:
    directory = tmp_path / "n"
    argv = ["init", "--role", "client", "--dir", str(directory), "--plugins", "ping,recorder"]
    assert cli_main(argv) == 0
    text = (directory / "united.toml").read_text()
    assert _plugins_line(text) == ["ping", "recorder"]
    assert '\n[recorder]\n# A label.\n# label = "toy"\n' in text
    assert "\n[mesh]\n" not in text and "\n[discovery]\n" not in text
    settings, _, _ = load_settings(directory / "united.toml")
    assert settings["recorder"].label == "toy"


def test_init_refuses_an_unknown_plugin_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "n"
    argv = ["init", "--role", "client", "--dir", str(directory), "--with", "nope"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("united: [node] plugins: unknown plugin 'nope'; available plugins:")
    assert not directory.exists()


def test_write_node_dir_takes_a_plugin_list(tmp_path: Path, toy_plugins: Path) -> None:
    from united_core.cli import write_node_dir

    config, _ = write_node_dir(tmp_path / "n", "client", plugins=["gatekeeper"])
    assert _plugins_line(config.read_text()) == ["gatekeeper"]
    assert "\n[gatekeeper]\n" in config.read_text()


# ---- non-finite numbers, NUL characters, undecodable files, address lists -----------

SERVER_EXTRA = '[directory]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n'
CLIENT_EXTRA = '[discovery]\nserver_url = "ws://127.0.0.1:9/ws"\n'
NON_FINITE = ("nan", "inf", "-inf")


def set_key(config: Path, section: str, key: str, value: str) -> Path:
    """Set ``key = value`` (TOML text, taken literally) in ``[section]`` of ``config``."""
    lines = config.read_text().splitlines()
    header = f"[{section}]"
    if header not in lines:
        lines += ["", header]
    start = lines.index(header) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    body = [ln for ln in lines[start:end] if not re.match(rf"{key}\s*=", ln)]
    config.write_text("\n".join([*lines[:start], f"{key} = {value}", *body, *lines[end:]]) + "\n")
    return config


def _float_settings(schema: type) -> list[str]:
    """Fields of ``schema`` that hold a float (alone, optional or in a list)."""
    names = []
    for f in dataclasses.fields(schema):
        hint = typing.get_type_hints(schema)[f.name]
        if hint is float or float in typing.get_args(hint):
            names.append(f.name)
    return names


def _preset_float_settings(tmp_path: Path) -> list[tuple[Path, str, str]]:
    """(config, section, key) for every float setting of both shipped presets."""
    found = []
    for role, extra in (("server", SERVER_EXTRA), ("client", CLIENT_EXTRA)):
        config = make_node_dir(tmp_path, role, role=role, plugins=None, extra=extra)
        _, pm, _ = load_settings(config)
        for name, section in declared_sections(pm).items():
            found += [(config, name, key) for key in _float_settings(section.schema)]
    return found


def test_every_float_setting_of_both_presets_refuses_nan_and_infinities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _preset_float_settings(tmp_path)
    sections = {(section, key) for _, section, key in settings}
    assert {  # the enumeration really walks the sections of both presets
        ("p2p", "dial_timeout"),
        ("directory", "nonce_ttl"),
        ("discovery", "reconnect_min"),
        ("mesh", "gossip_threshold"),
        ("archive", "batch_wait_ms"),
        ("cache", "sync_interval"),
    } <= sections
    assert len(sections) >= 20

    def no_node(*args: object) -> None:
        raise AssertionError("a non-finite value got past validation")

    monkeypatch.setattr("united_core.node.Node", no_node)
    for config, section, key in settings:
        base = config.read_text()
        for value in NON_FINITE:
            config.write_text(base)
            set_key(config, section, key, value)
            with pytest.raises(ConfigError) as info:
                load_settings(config)
            assert (info.value.section, info.value.key) == (section, key), (section, key, value)
            assert f"must be a finite number, not {value}" in str(info.value)
            # `united run`'s own code path: one line, exit status 2.
            assert cli_main(["run", "-c", str(config)]) == 2, (section, key, value)
            err = capsys.readouterr().err
            assert err == f"united: {config}: [{section}] {key}: {info.value.message}\n"
        config.write_text(base)


@pytest.mark.parametrize(
    ("role", "section", "key", "value"),
    [
        ("server", "directory", "nonce_ttl", "nan"),
        ("server", "mesh", "score_invalid_decay", "inf"),
        ("client", "discovery", "reconnect_max", "-inf"),
    ],
)
def test_cli_refuses_non_finite_numbers(
    tmp_path: Path, role: str, section: str, key: str, value: str
) -> None:
    extra = (SERVER_EXTRA if role == "server" else CLIENT_EXTRA) + f"[{section}]\n{key} = {value}\n"
    config = make_node_dir(tmp_path, role=role, plugins=None, extra=extra)
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"united: {config}: [{section}] {key}: must be a finite number, not {value}"
    ]


def test_numbers_beyond_a_float_are_refused(tmp_path: Path) -> None:
    config = make_node_dir(tmp_path, extra="[p2p]\ndial_timeout = 1" + "0" * 400 + "\n")
    with pytest.raises(ConfigError, match=r"\[p2p\] dial_timeout: must be a finite number"):
        load_settings(config)
    config = make_node_dir(tmp_path, "n2", extra="[p2p]\ndial_timeout = 1e999\n")
    with pytest.raises(
        ConfigError, match=r"\[p2p\] dial_timeout: must be a finite number, not inf"
    ):
        load_settings(config)


def _utf16(text: str) -> bytes:
    return text.encode("utf-16")  # with a byte-order mark


def _utf16le(text: str) -> bytes:
    return text.encode("utf-16-le")  # without one


@pytest.mark.parametrize(
    ("transform", "needle"),
    [
        (_utf16, "is UTF-16 text, not UTF-8; save it as UTF-8"),
        (_utf16le, "is UTF-16 text, not UTF-8; save it as UTF-8"),
        (lambda t: bytes(range(256)) * 4, "is not a text file (NUL byte on line 1)"),
        (lambda t: t.encode().replace(b"[p2p]", b"[p2p]\x00"), "is not a text file (NUL byte"),
        (lambda t: t.encode().replace(b"client", b"cli\xe9nt"), "is not UTF-8 text (byte 0xe9"),
        (lambda t: t.encode("latin-1") + b"\n# caf\xe9\n", "is not UTF-8 text (byte 0xe9"),
    ],
    ids=["utf16-bom", "utf16le", "binary", "nul-byte", "latin1-value", "latin1-comment"],
)
def test_undecodable_file_exits_2_with_one_line(
    tmp_path: Path, transform: Any, needle: str
) -> None:
    config = make_node_dir(tmp_path)
    config.write_bytes(transform(config.read_text()))
    for command in (("run", "-c", str(config)), ("id", "-c", str(config))):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"united: {config}: ") and needle in result.stderr
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_settings(config)


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    config = make_node_dir(tmp_path)
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    settings, _, _ = load_settings(config)
    assert settings["node"].plugins == ("ping",)


def test_nul_in_data_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    config = set_key(make_node_dir(tmp_path), "node", "data_dir", '"da\\u0000ta"')
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"united: {config}: [node] data_dir: must not contain a NUL character: 'da\\x00ta'"
    ]


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("node", "identity_key", '"id\\u0000.key"'),
        ("node", "plugin_set", '"a\\u0000"'),
        ("node", "plugins", '["ping\\u0000"]'),
        ("control", "socket", '"s\\u0000ck"'),
        ("p2p", "listen", '["/ip4/127.0.0.1/tcp/0\\u0000"]'),
    ],
)
def test_nul_in_any_string_setting_is_refused(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    config = set_key(make_node_dir(tmp_path), section, key, value)
    with pytest.raises(ConfigError, match="must not contain a NUL character") as info:
        load_settings(config)
    assert (info.value.section, info.value.key) == (section, key)


def test_nul_in_a_plugin_path_is_refused(tmp_path: Path) -> None:
    config = make_node_dir(tmp_path, role="server", plugins=None, extra=SERVER_EXTRA)
    set_key(config, "archive", "database", '"a\\u0000.sqlite3"')
    with pytest.raises(ConfigError, match=r"\[archive\] database: must not contain a NUL"):
        load_settings(config)


def test_id_refuses_a_nul_in_identity_key(tmp_path: Path) -> None:
    config = set_key(make_node_dir(tmp_path), "node", "identity_key", '"id\\u0000.key"')
    result = run_cli("id", "-c", str(config))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "[node] identity_key: must be a string without NUL characters" in result.stderr


@pytest.mark.parametrize(
    ("addrs", "needle"),
    [
        ('["not an address"]', "'not an address' is not a multiaddr"),
        ('["/ip4/1.2.3.4/udp/7420"]', "only TCP addresses are supported"),
        ('["/ip4/1.2.3.4/tcp/0"]', "port 0 cannot be dialed"),
        ('["/ip4/1.2.3.4/tcp/7420", "/ip4/999.1.1.1/tcp/1"]', "'/ip4/999.1.1.1/tcp/1' is not"),
    ],
)
def test_bad_announce_addrs_are_refused(tmp_path: Path, addrs: str, needle: str) -> None:
    config = make_node_dir(
        tmp_path,
        role="server",
        plugins=None,
        extra=SERVER_EXTRA + f"[directory]\nannounce_addrs = {addrs}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert (info.value.section, info.value.key) == ("directory", "announce_addrs")
    assert needle in str(info.value)


def test_cli_exits_2_for_bad_announce_addrs(tmp_path: Path) -> None:
    config = make_node_dir(
        tmp_path,
        role="server",
        plugins=None,
        extra=SERVER_EXTRA + '[directory]\nannounce_addrs = ["/dns4/example.org/udp/1"]\n',
    )
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"united: {config}: [directory] announce_addrs: "
        "'/dns4/example.org/udp/1': only TCP addresses are supported"
    ]


def test_good_announce_addrs_are_accepted(tmp_path: Path) -> None:
    addrs = (
        "/ip4/203.0.113.7/tcp/7420",
        "/dns4/chat.example.org/tcp/7420",
        "/ip6/2001:db8::1/tcp/7420/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
    )
    listed = ", ".join(f'"{a}"' for a in addrs)
    config = make_node_dir(
        tmp_path,
        role="server",
        plugins=None,
        extra=SERVER_EXTRA + f"[directory]\nannounce_addrs = [{listed}]\n",
    )
    settings, _, _ = load_settings(config)
    assert settings["directory"].announce_addrs == addrs
