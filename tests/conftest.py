"""Shared helpers: toy plugins, processes; node directories and in-process nodes come
from the fixtures and helpers ``united`` ships (``united_core.testing``, loaded in
every test as the pytest plugin ``united_core.pytest_plugin``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from united_core.testing import make_node_dir, merge_toml_text, running_node

__all__ = ["TOY_PLUGINS", "make_node_dir", "merge_toml_text", "run_cli", "running_node"]

TOY_PLUGINS = Path(__file__).parent / "fixtures" / "toy_plugins"

# `united init` asks questions at a terminal (`pytest -s` from a shell): never in tests.
os.environ.setdefault("UNITED_NONINTERACTIVE", "1")


@pytest.fixture
def toy_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Make the toy plugins discoverable through their entry points (a real dist-info)."""
    monkeypatch.syspath_prepend(str(TOY_PLUGINS))
    import toy_reader
    import toy_recorder
    import toy_store

    toy_recorder.CALLS.clear()
    toy_store.EVENTS.clear()
    toy_reader.EVENTS.clear()
    yield TOY_PLUGINS


@pytest.fixture
def no_thread_leaks() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not leaked, f"threads left behind: {leaked}"


def united_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "united_core", *args]


def run_cli(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        united_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
