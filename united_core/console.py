"""``united console``: a prompt-toolkit developer console attached to a running node.

A REPL over the control API (completion of commands, peers and channels;
persistent history; ``help``), and a live full-screen panel (the core's Peers
section and each plugin's sections, ``united_register_panel_sections``)
toggled with **F2** (or ``panel``), refreshed from the node's
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy
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

from .api import PanelSection
from .control import ControlClient, ControlClientError, ControlCommand

log = logging.getLogger(__name__)

PANEL_KEY = "f2"
_PANEL = "\x00panel"
QUIT_WORDS = ("quit", "exit")


def _short(peer_id: str) -> str:
    return f"{peer_id[:6]}…{peer_id[-6:]}" if len(peer_id) > 14 else peer_id


def _clock(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "-"


def _merged(plugins: Mapping[str, Any], key: str) -> dict[str, Any]:
    """Every plugin's ``key`` table, merged (a documented stats convention)."""
    out: dict[str, Any] = {}
    for stats in plugins.values():
        if isinstance(stats, Mapping) and isinstance(stats.get(key), Mapping):
            out.update(stats[key])
    return out


def render_peers(snapshot: Mapping[str, Any]) -> list[str]:
    """The core's section: connected peers and the topics whose mesh they are in.

    Names, RTTs and NAT types come from any plugin whose stats carry
    ``peer_names``, ``peer_rtt_ms`` or ``peer_nat`` tables (by PeerId), and
    channel names from ``topic_names`` (by topic): a documented convention, so
    the core knows no plugin by name."""
    plugins = snapshot.get("plugins", {})
    names = _merged(plugins, "peer_names")
    rtts = _merged(plugins, "peer_rtt_ms")
    nats = _merged(plugins, "peer_nat")
    topic_names = _merged(plugins, "topic_names")
    topic_mesh: dict[str, list[str]] = snapshot.get("p2p", {}).get("mesh", {})
    peers = snapshot.get("peers", [])
    lines = [
        f"  {len(peers)} connected",
        f"  {'PEER':<14} {'NAME':<12} {'CONN':<12} {'RTT ms':>8}  {'NAT':<11} MESH",
    ]
    for peer in sorted(peers, key=lambda p: names.get(p["peer_id"], "~")):
        pid = peer["peer_id"]
        rtt = rtts.get(pid)
        conn = peer.get("kind") or ("relayed" if peer.get("relayed") else "direct")
        lines.append(
            f"  {_short(pid):<14} {str(names.get(pid, '?'))[:12]:<12} {conn:<12} "
            f"{(f'{rtt:.3f}' if rtt is not None else '-'):>8}  "
            f"{str(nats.get(pid, 'unknown'))[:11]:<11} "
            + (
                ", ".join(
                    sorted(topic_names.get(t, t) for t, ps in topic_mesh.items() if pid in ps)
                )
                or "-"
            )
        )
    return lines


CORE_SECTIONS = (PanelSection("Peers", render_peers, order=0),)


def panel_sections(pm: pluggy.PluginManager) -> list[PanelSection]:
    """The core's sections, then every plugin's, by order and title."""
    sections = list(CORE_SECTIONS)
    for batch in pm.hook.united_register_panel_sections():
        sections.extend(batch)
    return sorted(sections, key=lambda s: (s.order, s.title))


def render_panel(
    snapshot: Mapping[str, Any], sections: Sequence[PanelSection] = CORE_SECTIONS
) -> str:
    """The live panel as text: a header, then each section's lines."""
    lines = [
        f"UNITED node {_short(snapshot.get('peer_id', '?'))}   "
        f"live, {PANEL_KEY.upper()} or q closes"
        f"   {_clock(snapshot.get('time'))}",
    ]
    for section in sections:
        try:
            body = section.render(snapshot)
        except Exception as exc:  # one plugin's bug must not blank the panel
            body = [f"  cannot render: {type(exc).__name__}: {exc}"]
        lines += ["", section.title, *body]
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
        sections: Sequence[PanelSection] = CORE_SECTIONS,
    ) -> None:
        self.socket_path = socket_path
        self.sections = list(sections)
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
                    text["value"] = render_panel(snapshot, self.sections)
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
