"""One default per setting (united_core/defaults.py, docs/configuration.md "Defaults").

Each test fails when a default is stated twice with different values: in the
runtime's options and a config section, in a preset, or in the reference docs.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from united_core import defaults
from united_core.config import ConfigSection
from united_core.node import declared_sections
from united_core.p2p.options import (
    KNOWN_GOSSIPSUB_PROTOCOLS,
    GossipOptions,
    HostOptions,
    ScoreSettings,
)
from united_core.plugins import available_plugins, get_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = ("ping", "membership", "directory", "discovery", "mesh", "archive", "cache")


def default_instance(section: ConfigSection) -> Any:
    """The section with every key at its default (as an empty table would give)."""
    return section.schema()


def configured_by(plugin: str | None) -> HostOptions:
    """``HostOptions`` after the core's and ``plugin``'s ``united_p2p_configure`` ran
    with every one of their sections at its defaults."""
    pm = get_plugin_manager([plugin] if plugin else [])
    settings = {name: default_instance(s) for name, s in declared_sections(pm).items()}
    options = HostOptions()
    pm.hook.united_p2p_configure(options=options, settings=settings)
    return options


@pytest.mark.parametrize("plugin", [None, *BUILT_IN])
def test_sections_at_their_defaults_configure_the_runtime_defaults(plugin: str | None) -> None:
    """A runtime built from an empty ``united.toml`` is ``HostOptions()``: no section
    states a runtime default differently (``[p2p] listen`` vs ``listen_addrs``,
    ``[mesh] seen_ttl`` vs ``GossipOptions.seen_ttl``, ``[archive]`` vs ``Rules``...)."""
    if plugin is not None and plugin not in available_plugins():
        pytest.skip(f"plugin {plugin!r} is not installed")
    configured = configured_by(plugin)
    expected = HostOptions()
    # The mesh turns peer scoring on; at its defaults it is ScoreSettings' defaults.
    if configured.gossip.scoring is not None:
        expected.gossip.scoring = ScoreSettings()
    assert configured == expected


def test_runtime_options_read_the_one_table() -> None:
    options = HostOptions()
    assert options.listen_addrs == defaults.LISTEN_ADDRS
    assert options.gossip == GossipOptions()
    assert (options.gossip.seen_ttl, options.gossip.degree) == (defaults.SEEN_TTL, defaults.DEGREE)
    assert options.acceptance.max_future_skew == defaults.MAX_FUTURE_SKEW
    assert set(defaults.GOSSIPSUB_PROTOCOLS) <= set(KNOWN_GOSSIPSUB_PROTOCOLS)
    # The replay window: an id is remembered longer than a message stays fresh.
    assert defaults.MAX_MESSAGE_AGE < defaults.SEEN_TTL


def test_the_default_listen_address_is_reachable_from_other_machines() -> None:
    """Every interface, a free port; announcing the wildcard is the directory's job
    (it replaces 0.0.0.0 with an address peers can dial)."""
    assert defaults.LISTEN_ADDRS == ("/ip4/0.0.0.0/tcp/0",)


def _as_setting(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("role", ["server", "client"])
def test_presets_only_set_what_differs_from_the_default(role: str) -> None:
    preset = tomllib.loads((ROOT / "config" / f"{role}.toml").read_text())
    pm = get_plugin_manager(preset["node"]["plugins"])
    sections = declared_sections(pm)
    for name, table in preset.items():
        assert name in sections, f"{role}.toml sets [{name}], which no enabled plugin declares"
        fields = {f.name: f.default for f in dataclasses.fields(sections[name].schema)}
        for key, value in table.items():
            assert key in fields, f"{role}.toml: [{name}] {key} is not a setting"
            assert _as_setting(value) != fields[key], (
                f"{role}.toml restates the default of [{name}] {key} ({value!r}): "
                "a preset lists only values that differ on purpose"
            )


# ---- the reference tables of docs/configuration.md ----------------------------------------

HEADING = re.compile(r"^## `\[(\w+)\]`", re.M)
ROW = re.compile(r"^\| ((?:`\w+`(?:, )?)+) \| [^|]* \| ([^|]*) \|", re.M)


def documented_defaults() -> list[tuple[str, str, str]]:
    """(section, key, default as written) of every row of the reference tables."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    found = []
    parts = HEADING.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        for keys, default in ROW.findall(body):
            names = re.findall(r"`(\w+)`", keys)
            values = re.findall(r"`([^`]+)`", default)
            if len(values) != len(names):  # "required", prose
                continue
            found += [(name, k, v) for k, v in zip(names, values, strict=True)]
    return found


def all_declared_sections() -> dict[str, ConfigSection]:
    sections: dict[str, ConfigSection] = {}
    for role in ("server", "client"):
        preset = tomllib.loads((ROOT / "config" / f"{role}.toml").read_text())
        sections |= declared_sections(get_plugin_manager(preset["node"]["plugins"]))
    return sections


def test_the_reference_docs_state_the_defaults_the_code_has() -> None:
    sections = all_declared_sections()
    rows = documented_defaults()
    checked = 0
    for name, key, written in rows:
        if name not in sections:
            continue
        fields = {f.name: f.default for f in dataclasses.fields(sections[name].schema)}
        assert key in fields, f"docs/configuration.md documents [{name}] {key}, not a setting"
        value = _as_setting(tomllib.loads(f"v = {written}")["v"])
        assert value == fields[key], (
            f"docs/configuration.md says [{name}] {key} defaults to {written}, "
            f"the code says {fields[key]!r}"
        )
        checked += 1
    assert checked >= 40, checked  # the tables really were read
