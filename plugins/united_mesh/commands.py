"""``send``, ``tail``, ``scores`` (and the ``send-invalid`` test action) on the control API."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

from united_core import envelope
from united_core.acceptance import MessageRefused
from united_core.api import CommandError, ControlCommand, NodeAPI, printable, render_table
from united_core.envelope import EnvelopeError

from .service import MeshService


def _mesh(node: NodeAPI) -> MeshService:
    return node.require(MeshService)


async def _send(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    if len(args) < 2:
        raise CommandError("usage: send CHANNEL TEXT")
    mesh = _mesh(node)
    try:
        sealed = await mesh.send(args[0], " ".join(args[1:]))
    except KeyError:
        raise CommandError(f"not in channel {args[0]!r} (join it first)") from None
    except MessageRefused as exc:
        raise CommandError(f"refused by this node: {exc}") from None
    except EnvelopeError as exc:
        raise CommandError(str(exc)) from None
    result: dict[str, Any] = {
        "id": sealed.id.hex(),
        "topic": sealed.topic,
        "sequence_hint": sealed.sequence_hint,
    }
    if not await node.p2p.peers():
        result["warning"] = (
            f"no connected peer at all: nobody receives this message now "
            f"(it reaches #{args[0]} when a peer connects, through the server's history)"
        )
    return result


def render_send(result: dict[str, Any]) -> str:
    lines = [f"id: {result['id']}", f"topic: {result['topic']}"]
    lines.append(f"sequence_hint: {result['sequence_hint']}")
    if result.get("warning"):
        lines.append(f"warning: {result['warning']}")
    return "\n".join(lines)


async def _tail(node: NodeAPI, args: list[str]) -> AsyncIterator[dict[str, Any]]:
    mesh = _mesh(node)
    if len(args) > 1:
        raise CommandError("usage: tail [CHANNEL]")
    try:
        topic = mesh.channel(args[0]).topic if args else None
    except KeyError:
        raise CommandError(f"not in channel {args[0]!r}") from None
    async with mesh.tail(topic) as subscriber:
        while True:
            yield await subscriber.queue.get()


def render_line(line: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(line["timestamp"] / 1000).strftime("%H:%M:%S")
    # Every field is the sender's: shown printable, one line (--json keeps it exact).
    channel, sender, text = (printable(str(line[k])) for k in ("channel", "sender", "text"))
    return f"{when} #{channel} <{sender}> {text}"


async def _send_test(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    if len(args) != 1:
        raise CommandError("usage: send-test CHANNEL")
    mesh = _mesh(node)
    try:
        sealed = await mesh.send(
            args[0], f"test message from {node.identity.peer_id[-8:]}", envelope.TEST
        )
    except KeyError:
        raise CommandError(f"not in channel {args[0]!r} (join it first)") from None
    except MessageRefused as exc:
        raise CommandError(f"refused by this node: {exc}") from None
    return {"id": sealed.id.hex(), "topic": sealed.topic, "text": sealed.text}


async def _topics(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    mesh = _mesh(node)
    snapshot = await node.p2p.snapshot()
    out = {}
    for topic, channel in mesh.channels.items():
        stats = mesh.topic_stats.get(topic)
        out[channel.name] = {
            "topic": topic,
            "mesh_peers": snapshot["mesh"].get(topic, []),
            "messages": stats.messages if stats else 0,
            "last_received": stats.last_received if stats else None,
        }
    return out


def render_topics(result: dict[str, Any]) -> str:
    rows = [
        {
            "channel": f"#{name}",
            "mesh_peers": len(row["mesh_peers"]),
            "messages": row["messages"],
            "last": _clock(row["last_received"]),
            "topic": row["topic"],
        }
        for name, row in sorted(result.items())
    ]
    return render_table(rows, empty="no channel subscribed")


def _clock(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "-"


async def _scores(node: NodeAPI, args: list[str]) -> dict[str, float]:
    return await node.p2p.scores()


def render_scores(result: dict[str, float]) -> str:
    rows = [{"peer": peer, "score": f"{score:.2f}"} for peer, score in sorted(result.items())]
    return render_table(rows, empty="no connected peer")


async def _send_invalid(node: NodeAPI, args: list[str]) -> dict[str, str]:
    mesh = _mesh(node)
    if not mesh.config.allow_test_actions:
        raise CommandError("send-invalid is a test action: set [mesh] allow_test_actions = true")
    if len(args) != 1:
        raise CommandError("usage: send-invalid CHANNEL")
    try:
        message_id = await mesh.send_invalid(args[0])
    except KeyError:
        raise CommandError(f"not in channel {args[0]!r}") from None
    await asyncio.sleep(0)
    return {"sent_invalid": message_id.hex()}


def control_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "send",
            _send,
            "Publish a text message to a channel (warns when no peer is connected).",
            usage="CHANNEL TEXT",
            render=render_send,
            description="CHANNEL: a joined channel; TEXT: the message (the rest of the line).",
        ),
        ControlCommand(
            "tail",
            _tail,
            "Print messages as they arrive.",
            usage="[CHANNEL]",
            render=render_line,
            streaming=True,
            description="CHANNEL: only this joined channel (default: every joined channel). "
            "In the console, a live view: Ctrl-C returns to the prompt.",
        ),
        ControlCommand(
            "topics",
            _topics,
            "Subscribed channels: topic, mesh peers, messages.",
            render=render_topics,
            description="Per channel: gossipsub mesh peers, messages received, "
            "the last arrival, the topic.",
        ),
        ControlCommand(
            "send-test",
            _send_test,
            "Publish a test message to a channel.",
            usage="CHANNEL",
            description="CHANNEL: a joined channel. The message is a TEST-type envelope.",
        ),
        ControlCommand(
            "scores",
            _scores,
            "Gossipsub score of each connected peer.",
            render=render_scores,
        ),
        ControlCommand(
            "send-invalid",
            _send_invalid,
            "Test action: publish an envelope with a broken signature.",
            usage="CHANNEL",
            description="CHANNEL: a joined channel. Needs [mesh] allow_test_actions = true.",
        ),
    ]
