"""The ping plugin: libp2p ping round trips through the runtime's API, on the control API
and in the live stats (only while watched)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import make_node_dir, running_node
from united_ping.service import PingService

from united_core.control import ControlClient, ControlClientError


def test_ping_reports_round_trips_and_refuses_bad_arguments(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            running_node(make_node_dir(tmp_path, "a")) as a,
            running_node(make_node_dir(tmp_path, "b")) as b,
        ):
            await b.p2p.connect(a.p2p.listen_addrs[0])
            client = await ControlClient.connect(a.settings.resolve("united.sock"))
            try:
                result = await client.call("ping", [b.identity.peer_id, "3"])
                assert result["count"] == 3 and len(result["rtt_ms"]) == 3
                assert all(0 < r < 1000 for r in result["rtt_ms"])
                assert a.require(PingService).stats()["peer_rtt_ms"][b.identity.peer_id] > 0
                for args, why in (
                    ([], "usage"),
                    (["not-a-peer"], "not a PeerId"),
                    ([b.identity.peer_id, "0"], "between 1 and"),
                    ([b.identity.peer_id, "x"], "must be a number"),
                ):
                    with pytest.raises(ControlClientError, match=why):
                        await client.call("ping", args)
                # A peer that is not connected: a clean refusal, and the node keeps serving.
                stranger = make_node_dir(tmp_path, "c")
                from united_core.identity import load_key_file

                other = load_key_file(stranger.parent / "identity.key").peer_id
                with pytest.raises(ControlClientError, match="failed"):
                    await client.call("ping", [other])
                assert (await client.call("status"))["state"] == "running"
            finally:
                await client.close()

    asyncio.run(scenario())
