"""Ping a connected peer with the libp2p ping protocol and report the round-trip time."""

from __future__ import annotations

from united_core import hookimpl
from united_core.control import ControlCommand

from .service import ping_command, render_ping


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "ping",
            ping_command,
            "Ping a peer (libp2p ping) and report RTT in ms.",
            usage="PEER_ID [COUNT]",
            render=render_ping,
        )
    ]
