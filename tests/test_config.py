from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_node_dir, run_cli

from united_core.config import ConfigError
from united_core.node import load_settings


def write(tmp_path: Path, text: str) -> Path:
    config = make_node_dir(tmp_path)
    config.write_text(config.read_text() + "\n" + text)
    return config


def test_defaults_and_preset_values(tmp_path: Path) -> None:
    settings, _, warnings = load_settings(make_node_dir(tmp_path, role="server", plugins=None))
    assert settings["node"].plugin_set == "server"
    assert settings["node"].plugins == ("ping", "membership", "directory", "mesh", "archive")
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
