"""Shared helpers: node directories, in-process nodes, toy plugins, processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from united_core.cli import main as cli_main
from united_core.node import Node, load_settings

TOY_PLUGINS = Path(__file__).parent / "fixtures" / "toy_plugins"


def make_node_dir(
    base: Path,
    name: str = "node",
    role: str = "client",
    *,
    plugins: tuple[str, ...] | list[str] | None = ("ping",),
    extra: str = "",
) -> Path:
    """``united init`` a node in ``base/name`` listening on loopback; return its config path.

    ``plugins`` replaces the preset's list (``None`` keeps the preset's).
    """
    directory = base / name
    assert cli_main(["init", "--role", role, "--dir", str(directory)]) == 0
    config = directory / "united.toml"
    text = config.read_text()
    text = text.replace('"/ip4/0.0.0.0/tcp/7420"', '"/ip4/127.0.0.1/tcp/0"')
    text = text.replace('"/ip4/0.0.0.0/tcp/0"]', '"/ip4/127.0.0.1/tcp/0"]')
    if plugins is not None:
        listed = "plugins = [" + ", ".join(f'"{p}"' for p in plugins) + "]"
        text = re.sub(r"^plugins = \[.*\]$", listed, text, count=1, flags=re.M)
    config.write_text(merge_toml_text(text, extra))
    return config


def merge_toml_text(text: str, extra: str) -> str:
    """Add ``extra``'s keys into the file's existing tables (TOML forbids a table twice)."""
    blocks = re.split(r"^(\[[^\]]+\])\s*$", extra, flags=re.M)
    if blocks[0].strip():
        raise ValueError("extra must start with a [table] header")
    for header, body in zip(blocks[1::2], blocks[2::2], strict=True):
        lines = body.strip("\n")
        if re.search(rf"^{re.escape(header)}\s*$", text, flags=re.M):
            for key in re.findall(r"^(\w+)\s*=", lines, flags=re.M):  # the new value wins
                text = (
                    re.sub(rf"^{key}\s*=.*$\n?", "", text, flags=re.M)
                    if _in_table(text, header, key)
                    else text
                )
            text = re.sub(
                rf"^{re.escape(header)}\s*$", f"{header}\n{lines}", text, count=1, flags=re.M
            )
        else:
            text += f"\n{header}\n{lines}\n"
    return text


def _in_table(text: str, header: str, key: str) -> bool:
    section = text.split(header, 1)[1].split("\n[", 1)[0]
    return re.search(rf"^{key}\s*=", section, flags=re.M) is not None


@contextlib.asynccontextmanager
async def running_node(config: Path) -> AsyncIterator[Node]:
    """Run a node in this event loop; stop it (and wait) on exit."""
    settings, pm, _ = load_settings(config)
    node = Node(settings, pm)
    ready = asyncio.Event()
    task = asyncio.create_task(node.run(ready))
    ready_wait = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait(
        {task, ready_wait}, return_when=asyncio.FIRST_COMPLETED, timeout=20
    )
    if task in done:
        ready_wait.cancel()
        task.result()  # raises the start-up error
    assert ready.is_set(), "node did not start in 20 s"
    try:
        yield node
    finally:
        node.request_stop()
        await asyncio.wait_for(task, 10)


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
