"""``united console``: a prompt-toolkit developer console attached to a running node.

A REPL over the control API (completion of commands, peers and channels;
persistent history; ``help``), and a live full-screen panel (Peers and
Gossipsub) toggled with **F2** (or ``panel``), refreshed from the node's
``subscribe`` stream. The panel holds the subscription only while it is open,
so a node nobody watches does no stats work at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.output import Output

from .control import ControlClient, ControlClientError, ControlCommand

log = logging.getLogger(__name__)

PANEL_KEY = "f2"
_PANEL = "\x00panel"
QUIT_WORDS = ("quit", "exit")


def _short(peer_id: str) -> str:
    return f"{peer_id[:6]}…{peer_id[-6:]}" if len(peer_id) > 14 else peer_id


def _clock(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "-"


def render_panel(snapshot: Mapping[str, Any]) -> str:
    """The live panel as text: a Peers section and a Gossipsub section."""
    plugins = snapshot.get("plugins", {})
    mesh = plugins.get("mesh", {})
    names: dict[str, str] = mesh.get("names", {})
    rtts: dict[str, float] = plugins.get("ping", {})
    p2p = snapshot.get("p2p", {})
    topic_mesh: dict[str, list[str]] = p2p.get("mesh", {})
    channel_of = {info["topic"]: name for name, info in mesh.get("topics", {}).items()}
    counters = p2p.get("counters", {})
    lines = [
        f"UNITED node {_short(snapshot.get('peer_id', '?'))}   "
        f"live, {PANEL_KEY.upper()} or q closes"
        f"   {_clock(snapshot.get('time'))}",
        "",
        f"Peers ({len(snapshot.get('peers', []))})",
        f"  {'PEER':<14} {'NAME':<12} {'CONN':<8} {'RTT ms':>8}  {'NAT':<8} MESH",
    ]
    for peer in sorted(snapshot.get("peers", []), key=lambda p: names.get(p["peer_id"], "~")):
        pid = peer["peer_id"]
        in_mesh = sorted(channel_of.get(t, t) for t, peers in topic_mesh.items() if pid in peers)
        rtt = rtts.get(pid)
        conn = "relayed" if peer.get("relayed") else "direct"
        lines.append(
            f"  {_short(pid):<14} {names.get(pid, '?')[:12]:<12} {conn:<8} "
            f"{(f'{rtt:.3f}' if rtt is not None else '-'):>8}  {'unknown':<8} "
            f"{', '.join(in_mesh) or '-'}"
        )
    lines += [
        "",
        "Gossipsub",
        f"  {'CHANNEL':<14} {'MESH':>4} {'MSGS':>6} {'LAST':>9} {'P50 ms':>8} {'P95 ms':>8}",
    ]
    for name, info in sorted(mesh.get("topics", {}).items()):
        p50, p95 = info.get("latency_p50_ms"), info.get("latency_p95_ms")
        lines.append(
            f"  {name[:14]:<14} {len(topic_mesh.get(info['topic'], [])):>4} {info['messages']:>6} "
            f"{_clock(info.get('last_received')):>9} {(p50 if p50 is not None else '-'):>8} "
            f"{(p95 if p95 is not None else '-'):>8}"
        )
    lines.append(
        f"  publish drops: {counters.get('outbound_drops', 0)}   inbound drops: "
        f"{counters.get('inbound_drops', 0)}   rejected: {counters.get('rejected', 0)}"
    )
    return "\n".join(lines)


class ConsoleCompleter(Completer):
    """Commands first; then peers (PeerIds) and channels as arguments."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def get_completions(self, document: Document, complete_event: object) -> Iterable[Completion]:
        words = document.text_before_cursor.split()
        current = document.get_word_before_cursor()
        if len(words) == 0 or (len(words) == 1 and not document.text_before_cursor.endswith(" ")):
            pool: Iterable[str] = [*self.console.commands, "panel", "quit"]
        else:
            pool = [*self.console.peers, *self.console.channels]
        for word in sorted(pool):
            if word.startswith(current):
                yield Completion(word, start_position=-len(current))


class Console:
    def __init__(
        self,
        socket_path: Path,
        renderers: Mapping[str, ControlCommand],
        *,
        history_path: Path | None = None,
        input: Input | None = None,
        output: Output | None = None,
        write: Callable[[str], None] = print,
    ) -> None:
        self.socket_path = socket_path
        self.renderers = renderers
        self.history_path = history_path
        self.input = input
        self.output = output
        self.write = write
        self.commands: dict[str, dict[str, Any]] = {}
        self.peers: list[str] = []
        self.channels: list[str] = []
        self.client: ControlClient | None = None

    async def run(self) -> None:
        self.client = await ControlClient.connect(self.socket_path)
        try:
            self.commands = {c["name"]: c for c in await self.client.call("help")}
            await self._refresh_words()
            bindings = KeyBindings()

            @bindings.add(PANEL_KEY)
            def _(event: Any) -> None:
                event.app.exit(result=_PANEL)

            history = (
                FileHistory(str(self.history_path)) if self.history_path else InMemoryHistory()
            )
            session: PromptSession[str] = PromptSession(
                history=history,
                completer=ConsoleCompleter(self),
                key_bindings=bindings,
                input=self.input,
                output=self.output,
            )
            self.write(
                f"connected to {self.socket_path}; `help` lists commands, "
                f"{PANEL_KEY.upper()} opens the live panel"
            )
            while True:
                try:
                    line = await session.prompt_async("united> ")
                except (EOFError, KeyboardInterrupt):
                    break
                if line == _PANEL or line.strip() == "panel":
                    await self.panel()
                    continue
                try:
                    words = shlex.split(line)
                except ValueError as exc:
                    self.write(f"error: {exc}")
                    continue
                if not words:
                    continue
                if words[0] in QUIT_WORDS:
                    break
                await self.execute(words)
        finally:
            await self.client.close()

    async def _refresh_words(self) -> None:
        assert self.client is not None
        with contextlib.suppress(ControlClientError):
            self.peers = [p["peer_id"] for p in await self.client.call("peers")]
        for command in ("topics", "channels"):
            if command in self.commands:
                with contextlib.suppress(ControlClientError):
                    result = await self.client.call(command)
                    names = (
                        result.keys()
                        if isinstance(result, dict)
                        else [c.get("name", "") for c in result]
                    )
                    self.channels = sorted(set(self.channels) | {n for n in names if n})

    async def execute(self, words: list[str]) -> None:
        assert self.client is not None
        name = words[0]
        if name == "help":
            for command in self.commands.values():
                self.write(
                    f"{(command['name'] + ' ' + command['usage']).strip():<34} {command['help']}"
                )
            self.write(f"{'panel':<34} The live panel ({PANEL_KEY.upper()}).")
            return
        if self.commands.get(name, {}).get("streaming"):
            self.write(
                f"`{name}` streams: use the live panel ({PANEL_KEY.upper()}) or `united ctl {name}`"
            )
            return
        try:
            result = await self.client.call(name, words[1:])
        except ControlClientError as exc:
            self.write(f"error: {exc}")
            return
        renderer = self.renderers.get(name)
        if renderer is not None and renderer.render is not None:
            self.write(renderer.render(result))
        else:
            self.write(json.dumps(result, indent=2, default=str))
        await self._refresh_words()

    async def panel(self) -> None:
        """The full-screen live panel, fed by its own `subscribe` stream."""
        text = {"value": "waiting for the first snapshot…"}
        control = FormattedTextControl(lambda: text["value"])
        bindings = KeyBindings()

        @bindings.add(PANEL_KEY)
        @bindings.add("q")
        @bindings.add("escape")
        def _(event: Any) -> None:
            event.app.exit()

        app: Application[None] = Application(
            layout=Layout(HSplit([Window(control)])),
            key_bindings=bindings,
            full_screen=True,
            input=self.input,
            output=self.output,
        )

        async def feed() -> None:
            client = await ControlClient.connect(self.socket_path)
            try:
                async for snapshot in client.stream("subscribe"):
                    text["value"] = render_panel(snapshot)
                    self.last_panel = text["value"]
                    app.invalidate()
            except ControlClientError as exc:
                text["value"] = f"the live stream ended: {exc}"
                app.invalidate()
            except Exception as exc:  # a rendering bug must not kill the console
                log.exception("live panel failed")
                text["value"] = f"the live panel failed: {type(exc).__name__}: {exc}"
                self.last_panel = text["value"]
                app.invalidate()
            finally:
                await client.close()

        task = asyncio.create_task(feed())
        try:
            await app.run_async()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ControlClientError):
                await task

    last_panel = ""
