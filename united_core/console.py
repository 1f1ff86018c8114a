"""``united console``: a prompt-toolkit developer console attached to a running node.

A REPL over the control API, as comfortable as pgcli: Ctrl-C clears the line,
Ctrl-D quits; completion by context with descriptions (commands with their
help line; arguments from the node's ``complete`` command: channels, peers,
members, options); persistent history; ``help`` and ``help NAME``; streaming
commands (``tail``) as a live view until Ctrl-C. It survives its node: when the
node goes away it says so in one line and reconnects when it is back.

The live full-screen panel (the core's Peers section and each plugin's
sections, ``united_register_panel_sections``) is toggled with **F2** (or
``panel``), refreshed from the node's ``subscribe`` stream. The panel holds the
subscription only while it is open, so a node nobody watches does no stats work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import shlex
import signal
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy
from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application, get_app_or_none, run_in_terminal
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.output import Output

from .api import NodeState, PanelSection, printable, render_value
from .builtin import render_command_help
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
    for peer in sorted(peers, key=lambda p: str(names.get(p["peer_id"], "~"))):
        pid = peer["peer_id"]
        rtt = rtts.get(pid)
        conn = peer.get("kind") or ("relayed" if peer.get("relayed") else "direct")
        lines.append(
            f"  {_short(pid):<14} {printable(str(names.get(pid, '?')))[:12]:<12} {conn:<12} "
            f"{(f'{rtt:.3f}' if rtt is not None else '-'):>8}  "
            f"{printable(str(nats.get(pid, 'unknown')))[:11]:<11} "
            + (
                ", ".join(
                    sorted(
                        printable(str(topic_names.get(t, t)))
                        for t, ps in topic_mesh.items()
                        if pid in ps
                    )
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
    """The live panel as text: a header, then each section's lines (each
    :func:`~united_core.api.printable`: names and channels are the members')."""
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
        lines += ["", printable(section.title), *(printable(str(line)) for line in body)]
    return "\n".join(lines)


# Commands the console does not list: the live panel reads `subscribe` (F2), Tab
# uses `complete`. Both still run if typed.
CONSOLE_HIDDEN = frozenset({"subscribe", "complete"})
# The console's own words: name -> (usage, one line).
LOCAL_COMMANDS = {
    "panel": (
        "",
        f"The live panel ({PANEL_KEY.upper()}; {PANEL_KEY.upper()}, q or Esc closes it).",
    ),
    "quit": ("", "Leave the console (also `exit` or Ctrl-D)."),
    "exit": ("", "Leave the console (also `quit` or Ctrl-D)."),
}
COMPLETION_TTL = 2.0  # seconds an argument's candidates are reused while typing


class ConsoleCompleter(Completer):
    """Commands with their one-line help; then each argument by context, from the
    node's ``complete`` command (channels for a channel, peers for a peer, ...)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def get_completions(self, document: Document, complete_event: object) -> Iterable[Completion]:
        text = document.text_before_cursor.lstrip()
        if " " not in text:
            yield from self.console.command_completions(text)

    async def get_completions_async(
        self, document: Document, complete_event: object
    ) -> AsyncGenerator[Completion, None]:
        text = document.text_before_cursor.lstrip()
        if " " not in text:
            for completion in self.console.command_completions(text):
                yield completion
            return
        try:
            words = shlex.split(text)
        except ValueError:  # an open quote: complete as if split on spaces
            words = text.split()
        current = "" if text[-1].isspace() or not words else words.pop()
        if not words:
            return
        if words == ["help"]:  # help NAME
            for completion in self.console.command_completions(current):
                yield completion
            return
        for value, meta in await self.console.argument_candidates(words[0], words[1:]):
            if value.startswith(current):
                yield Completion(
                    value,
                    start_position=-len(current),
                    display=printable(value),
                    display_meta=printable(meta),
                )


class Console:
    """The REPL. It survives its node: when the node goes away it says so in one
    line, waits for it, and reconnects when it is back (a restart, ``rotate-key``)."""

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
        retry_interval: float = 0.5,
    ) -> None:
        self.socket_path = socket_path
        self.sections = list(sections)
        self.renderers = renderers
        self.history_path = history_path
        self.input = input
        self.output = output
        # Everything shown goes through printable(): what the node relays (message
        # text, names, the server's errors) cannot drive the terminal. Renderers
        # already make each field one line; the lines they join stay lines.
        self.write: Callable[[str], None] = lambda text: write(printable(text, multiline=True))
        self.retry_interval = retry_interval
        self.commands: dict[str, dict[str, Any]] = {}
        self.client: ControlClient | None = None
        self.connected = False
        self._watch_client: ControlClient | None = None
        self._lock = asyncio.Lock()  # one request at a time on self.client
        self._candidates: dict[tuple[str, ...], tuple[float, list[tuple[str, str]]]] = {}

    # ---- the connection ---------------------------------------------------------------

    async def _connect(self) -> None:
        """Connect to a running node (ControlClientError if there is none, or it is
        still starting), learn its commands, and open the connection that tells
        when it goes away."""
        client = await ControlClient.connect(self.socket_path)
        try:
            state = (await client.call("status")).get("state")
            if state != NodeState.RUNNING.value:
                raise ControlClientError(f"the node is {state}", str(state))
            rows = await client.call("help")
            watch = await ControlClient.connect(self.socket_path)
        except BaseException:
            await client.close()
            raise
        self.client, self._watch_client = client, watch
        self.commands = {row["name"]: row for row in rows}
        self._candidates.clear()
        self.connected = True

    async def _close(self) -> None:
        for client in (self.client, self._watch_client):
            if client is not None:
                await client.close()
        self.client = self._watch_client = None

    async def _replace_client(self) -> None:
        """A new connection for the next commands: the interrupted command's reply
        would come on the old one (which its closing ends, and the lock with it)."""
        old = self.client
        try:
            self.client = await ControlClient.connect(self.socket_path)
        except ControlClientError:
            self.client = None
            await self._gone()
        if old is not None:
            await old.close()

    async def _gone(self) -> None:
        """The node went away: say so once; the watcher reconnects."""
        if not self.connected:
            return
        self.connected = False
        await self._close()
        await self.say("the node went away; reconnecting when it is back (Ctrl-D quits)")

    async def _watch(self) -> None:
        """Wait for the node to go away, then for it to come back; forever."""
        while True:
            if self._watch_client is not None:
                await self._watch_client.wait_closed()
            await self._gone()
            while True:
                await asyncio.sleep(self.retry_interval)
                try:
                    await self._connect()
                    break
                except ControlClientError:
                    continue
            await self.say(f"the node is back: reconnected to {self.socket_path}")

    async def say(self, text: str) -> None:
        """Write a line, above the prompt if one is showing."""
        app = get_app_or_none()
        if app is None or not app.is_running:
            self.write(text)
            return
        try:
            await run_in_terminal(functools.partial(self.write, text))
        except OSError:  # the terminal went away meanwhile (the console is ending)
            self.write(text)
        app.invalidate()

    async def _call(self, name: str, args: list[str]) -> Any:
        """One request on the console's connection. Shielded: a caller cancelled
        half-way (a completion overtaken by typing, Ctrl-C) leaves the reply to be
        read, so the next request does not get this one's answer."""
        if self.client is None or not self.connected:
            raise ControlClientError("the node went away", "disconnected")

        async def locked() -> Any:
            async with self._lock:
                if self.client is None:
                    raise ControlClientError("the node went away", "disconnected")
                return await self.client.call(name, args)

        task = asyncio.ensure_future(locked())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

    # ---- the REPL -----------------------------------------------------------------------

    async def run(self) -> None:
        await self._connect()
        watcher = asyncio.create_task(self._watch())
        try:
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
                f"{PANEL_KEY.upper()} opens the live panel, Ctrl-D quits"
            )
            while True:
                try:
                    line = await session.prompt_async(self._prompt)
                except KeyboardInterrupt:
                    continue  # Ctrl-C clears the line (pgcli, ptpython); Ctrl-D quits
                except EOFError:
                    break
                if line == _PANEL or line.strip() == "panel":
                    await self.panel()
                    continue
                try:
                    words = shlex.split(line)
                except ValueError as exc:
                    self.write(f"error: {printable(str(exc))}")
                    continue
                if not words:
                    continue
                if words[0] in QUIT_WORDS:
                    break
                await self.execute(words)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await watcher
            await self._close()

    def _prompt(self) -> str:
        return "united> " if self.connected else "united (no node)> "

    def command_completions(self, prefix: str) -> Iterator[Completion]:
        rows = [
            (name, row.get("help", ""))
            for name, row in self.commands.items()
            if name not in CONSOLE_HIDDEN
        ]
        rows += [(name, line) for name, (_, line) in LOCAL_COMMANDS.items()]
        for name, line in sorted(rows):
            if name.startswith(prefix):
                yield Completion(name, start_position=-len(prefix), display_meta=line)

    async def argument_candidates(self, command: str, words: list[str]) -> list[tuple[str, str]]:
        """The node's candidates for the argument after ``words``, reused for a moment
        (typing asks again at every key)."""
        if not self.connected or command not in self.commands:
            return []
        key = (command, *words)
        now = time.monotonic()
        cached = self._candidates.get(key)
        if cached is not None and now - cached[0] < COMPLETION_TTL:
            return cached[1]
        try:
            rows = await self._call("complete", [command, *words])
        except ControlClientError:
            return []
        pairs = [(str(r.get("value", "")), str(r.get("meta", ""))) for r in rows]
        self._candidates[key] = (now, pairs)
        return pairs

    def help_text(self, args: list[str]) -> str:
        if not args:
            rows = [
                ((r["name"] + " " + r.get("usage", "")).strip(), r.get("help", ""))
                for name, r in sorted(self.commands.items())
                if name not in CONSOLE_HIDDEN
            ]
            rows += [("quit | exit", LOCAL_COMMANDS["quit"][1])]
            rows += [("panel", LOCAL_COMMANDS["panel"][1])]
            return "\n".join(f"{usage:<34} {line}" for usage, line in rows)
        name = args[0]
        if name in LOCAL_COMMANDS:
            usage, line = LOCAL_COMMANDS[name]
            return f"usage: {(name + ' ' + usage).strip()}\n\n{line}"
        row = self.commands.get(name)
        if row is None:
            return f"no command {name!r}; `help` lists them"
        return render_command_help(row)

    def render(self, name: str, result: Any) -> str:
        renderer = self.renderers.get(name)
        if renderer is not None and renderer.render is not None:
            return renderer.render(result)
        return render_value(result)

    async def execute(self, words: list[str]) -> None:
        name = words[0]
        if name == "help":
            self.write(self.help_text(words[1:]))
            return
        if not self.connected:
            self.write("no node to talk to: reconnecting when it is back (Ctrl-D quits)")
            return
        if name not in self.commands:
            self.write(f"no command {name!r}; `help` lists them")
            return
        if name == "subscribe":
            self.write(f"`subscribe` feeds the live panel: press {PANEL_KEY.upper()}")
            return
        if self.commands[name].get("streaming"):
            await self.live(name, words[1:])
            return
        task = asyncio.ensure_future(self._call(name, words[1:]))
        try:
            with _interrupts(task):
                result = await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            await self._replace_client()
            self.write("interrupted")
            return
        except ControlClientError as exc:
            if exc.node_gone:
                await self._gone()
            else:
                self.write(f"error: {printable(str(exc))}")
            return
        self.write(self.render(name, result))

    async def live(self, name: str, args: list[str]) -> None:
        """A streaming command (``tail``) as a live view: its events printed as they
        come, until Ctrl-C (or q, Esc) returns to the prompt."""
        try:
            client = await ControlClient.connect(self.socket_path)
        except ControlClientError as exc:
            self.write(f"error: {printable(str(exc))}")
            return
        shown = " ".join([name, *args])
        control = FormattedTextControl(f"[{shown}: live, Ctrl-C returns to the prompt]")
        bindings = KeyBindings()

        @bindings.add("c-c")
        @bindings.add("c-d")
        @bindings.add("q")
        @bindings.add("escape")
        def _(event: Any) -> None:
            event.app.exit()

        app: Application[None] = Application(
            layout=Layout(HSplit([Window(control, height=1)])),
            key_bindings=bindings,
            full_screen=False,
            input=self.input,
            output=self.output,
        )

        def stop_app() -> None:
            if app.future is not None and not app.future.done():
                app.exit()

        async def feed() -> None:
            try:
                async for event in client.stream(name, args):
                    text = self.render(name, event)
                    await run_in_terminal(functools.partial(self.write, text))
                ended = printable(client.end_reason or "the stream ended")
                await run_in_terminal(lambda: self.write(f"({ended})"))
            except ControlClientError as exc:
                message = "the node went away" if exc.node_gone else f"error: {printable(str(exc))}"
                await run_in_terminal(lambda: self.write(message))
            except Exception as exc:  # a rendering bug must not kill the console
                log.exception("live view of %s failed", name)
                failed = f"the live view failed: {type(exc).__name__}: {printable(str(exc))}"
                await run_in_terminal(functools.partial(self.write, failed))
            finally:
                stop_app()

        tasks: list[asyncio.Task[None]] = []
        try:
            await app.run_async(pre_run=lambda: tasks.append(asyncio.create_task(feed())))
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await client.close()

    async def panel(self) -> None:
        """The full-screen live panel, fed by its own `subscribe` stream."""
        if not self.connected:
            self.write("no node to watch: reconnecting when it is back (Ctrl-D quits)")
            return
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
            try:
                client = await ControlClient.connect(self.socket_path)
            except ControlClientError as exc:
                text["value"] = f"no live stream: {printable(str(exc))}"
                app.invalidate()
                return
            try:
                async for snapshot in client.stream("subscribe"):
                    text["value"] = render_panel(snapshot, self.sections)
                    self.last_panel = text["value"]
                    app.invalidate()
                ended = printable(client.end_reason or "ended")
                text["value"] = f"the live stream ended ({ended})"
                app.invalidate()
            except ControlClientError as exc:
                text["value"] = f"the live stream ended: {printable(str(exc))}"
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


@contextlib.contextmanager
def _interrupts(task: asyncio.Future[Any]) -> Iterator[None]:
    """While a command runs there is no prompt, so the terminal sends Ctrl-C as
    SIGINT: cancel the command (pgcli cancels the query) instead of the console."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(task.cancel))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
