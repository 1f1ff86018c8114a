"""Sticky listen ports (united_core/p2p/ports.py): a node restarted with a port-0
listen address comes back on the port it had, so peers' redials of the address
they knew succeed even while nobody can tell them a new one."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from conftest import make_node_dir, running_node

from united_core.p2p.ports import remember_ports, sticky_listen


def _port(addrs: list[str]) -> int:
    return int(addrs[0].split("/tcp/")[1].split("/")[0])


def test_a_restarted_node_listens_on_its_previous_port_unless_taken(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = make_node_dir(tmp_path)
        async with running_node(config) as node:
            first = _port(node.p2p.listen_addrs)
        async with running_node(config) as node:
            assert _port(node.p2p.listen_addrs) == first
        with socket.socket() as squatter:  # someone else took it meanwhile
            squatter.bind(("127.0.0.1", first))
            squatter.listen()
            async with running_node(config) as node:
                other = _port(node.p2p.listen_addrs)
                assert other != first
        async with running_node(config) as node:  # the new one is remembered now
            assert _port(node.p2p.listen_addrs) == other
        unsticky = make_node_dir(tmp_path, "b", extra="[p2p]\nkeep_port = false\n")
        async with running_node(unsticky) as node:
            assert not (unsticky.parent / "data" / "p2p-ports.json").exists()

    asyncio.run(scenario())


def test_only_port_0_addresses_are_rewritten_and_bad_files_are_ignored(tmp_path: Path) -> None:
    port_file = tmp_path / "ports.json"
    requested = ("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/7420")
    assert sticky_listen(requested, port_file) == requested  # nothing remembered yet
    remember_ports(port_file, requested, ["/ip4/127.0.0.1/tcp/45678/p2p/12D3KooWx"])
    assert json.loads(port_file.read_text()) == {"/ip4/127.0.0.1/tcp/0": 45678}
    assert sticky_listen(requested, port_file)[1] == "/ip4/127.0.0.1/tcp/7420"
    for garbage in ("not json", "[1, 2]", '{"/ip4/127.0.0.1/tcp/0": 70000}', ""):
        port_file.write_text(garbage)
        assert sticky_listen(requested, port_file) == requested
    assert sticky_listen(requested, None) == requested
