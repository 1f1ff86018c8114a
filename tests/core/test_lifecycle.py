"""Node lifecycle edge cases: a dying P2P thread, a plugin failing at start-up."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from conftest import make_node_dir, running_node

from united_core.node import Node, P2PRuntimeDied, load_settings


def test_a_dying_p2p_thread_stops_the_node(tmp_path: Path, no_thread_leaks: None) -> None:
    async def scenario() -> None:
        settings, pm, _ = load_settings(make_node_dir(tmp_path))
        node = Node(settings, pm)
        ready = asyncio.Event()
        task = asyncio.create_task(node.run(ready))
        await asyncio.wait_for(ready.wait(), 20)

        async def crash() -> None:
            async def boom() -> None:
                raise RuntimeError("a trio-side service crashed")

            node.p2p.host_context.nursery.start_soon(boom)

        await node.p2p.call(crash)
        with pytest.raises(P2PRuntimeDied):
            await asyncio.wait_for(task, 10)
        assert not (tmp_path / "node" / "united.sock").exists()

    asyncio.run(scenario())


def test_a_plugin_failing_at_start_up_still_stops_what_started(
    tmp_path: Path, toy_plugins: Path, no_thread_leaks: None
) -> None:
    import toy_store

    config = make_node_dir(
        tmp_path, plugins=["store", "recorder"], extra='[recorder]\nlabel = "x"\n'
    )

    async def scenario() -> None:
        import toy_recorder

        original = toy_recorder.recorder_service

        def failing(config: object, p2p: object) -> object:
            raise RuntimeError("recorder cannot start")

        toy_recorder.Container.service.set_provides(failing)
        try:
            with pytest.raises(RuntimeError, match="recorder cannot start"):
                async with running_node(config):
                    pass
        finally:
            toy_recorder.Container.service.set_provides(original)
        assert toy_store.EVENTS == ["store start", "store stop"]
        assert not any(t.name.startswith("united-p2p-") for t in threading.enumerate())

    asyncio.run(scenario())
