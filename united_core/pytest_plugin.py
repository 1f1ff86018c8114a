"""pytest fixtures for testing UNITED plugins against real nodes.

Installed with ``united`` (the ``pytest11`` entry point ``united``): any project
whose environment has ``united`` installed gets these fixtures without a
``conftest.py``; ``pytest -p no:united`` turns them off. Every node listens on
loopback and lives under the test's ``tmp_path``; nodes run in the test's own
event loop (write the test as ``asyncio.run(scenario())``).

``united_node_dir(name="node", *, role="client", plugins=("ping",), extra="")``
    ``united init`` a node directory; returns its ``united.toml`` path.
    ``plugins`` replaces the preset's ``[node] plugins`` (``None`` keeps it);
    ``extra`` is TOML merged into the file (``"[wordfilter]\\nwords = [...]"``).

``united_node(config, *, timeout=20)``
    An async context manager running that node; yields it once it is up (the
    :class:`~united_core.api.NodeAPI`) and stops it on exit.

``united_community(members=("alice", "bob"), *, channels=("general",),
plugins=(), extra="", server_extra="", member_extra="", node_extra=None, timeout=30)``
    An async context manager running a server (directory, mesh, archive) and
    members made with ``united join``, each in every channel and in the
    server's mesh; ``plugins`` and ``extra`` go to every node,
    ``node_extra={"alice": "[table]..."}`` to one (or ``"server"``). Yields a
    :class:`~united_core.testing.LocalCommunity`: ``.server``, ``.members``,
    ``.node(name)``, ``.configs``, ``.channels``, ``.topic(channel)``,
    ``await .ctl(name, *args)`` (``united ctl`` in a process: ``returncode``,
    ``stdout``, ``stderr``, ``json()``), ``await .call(name, command, *args)``
    (a control command in process: its JSON result), ``await .stats(name)``
    (every plugin's stats by plugin name) and ``await .until(predicate,
    timeout, what)``.

``united_ctl(config, *args, timeout=30)``
    ``united ctl -c CONFIG ARGS...`` in a process (a
    :class:`~united_core.testing.CtlResult`), for a single node.

The same helpers are importable from :mod:`united_core.testing`
(``make_node_dir``, ``running_node``, ``running_community``, ``until``,
``ctl``, ``call``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .testing import CtlResult, LocalCommunity, ctl, make_node_dir, running_community, running_node

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .node import Node

__all__ = ["united_community", "united_ctl", "united_node", "united_node_dir"]

NodeDirFactory = Callable[..., Path]
NodeRunner = Callable[..., contextlib.AbstractAsyncContextManager["Node"]]
CommunityFactory = Callable[..., contextlib.AbstractAsyncContextManager[LocalCommunity]]
CtlRunner = Callable[..., "Awaitable[CtlResult]"]


@pytest.fixture
def united_node_dir(tmp_path: Path) -> NodeDirFactory:
    """``united init`` a node directory under ``tmp_path``; returns its config path."""

    def make(
        name: str = "node",
        *,
        role: str = "client",
        plugins: Sequence[str] | None = ("ping",),
        extra: str = "",
    ) -> Path:
        return make_node_dir(tmp_path, name, role, plugins=plugins, extra=extra)

    return make


@pytest.fixture
def united_node() -> NodeRunner:
    """``async with united_node(config) as node:`` runs the node in this event loop."""
    return running_node


@pytest.fixture
def united_community(tmp_path: Path) -> CommunityFactory:
    """``async with united_community(...) as community:`` a server and joined members."""
    numbers = itertools.count()

    def make(members: Sequence[str] = ("alice", "bob"), **options: Any) -> Any:
        number = next(numbers)
        base = tmp_path / ("community" if number == 0 else f"community{number}")
        return running_community(base, members, **options)

    return make


@pytest.fixture
def united_ctl() -> CtlRunner:
    """``await united_ctl(config, *args)``: ``united ctl`` in a process, as a user runs it."""
    return ctl
