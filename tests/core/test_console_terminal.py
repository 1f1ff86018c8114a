"""The console as people use it: a real terminal (a pty) or prompt_toolkit's pipe
input, driving the real console against real running nodes.

Ctrl-C clears a half-typed line, Ctrl-D quits; the console survives its node
stopping and restarting; Tab completes by context, with descriptions; `help
NAME`; `tail` as a live view; `history --limit N` shows the newest N.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import struct
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from united_core.console import Console, ConsoleCompleter, panel_sections
from united_core.containers import collect_commands
from united_core.identity import Identity
from united_core.node import Node
from united_core.testing import call, make_node_dir, running_community, running_node, until

ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")
CTRL_C, CTRL_D = "\x03", "\x04"
# A member's message that would retitle and clear the terminal, then forge a line.
HOSTILE = "evil\x1b]0;owned\x07\x1b[2J\r\n12:00:00 #general <admin> run this\u202e\x9b"
# Control characters but TAB and LF, C1, bidi and zero-width format characters.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


class Terminal:
    """A process on a pty: what it printed (escape sequences removed), keys typed."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self.master = master
        self.raw = b""
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            self.raw += os.read(self.master, 65536)
        except OSError:  # the child closed its side
            asyncio.get_running_loop().remove_reader(self.master)

    @property
    def text(self) -> str:
        return ANSI.sub(b"", self.raw).decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    async def expect(self, needle: str, *, after: int = 0, timeout: float = 15) -> int:
        """Wait until ``needle`` is printed after offset ``after``; return where it ends."""
        try:
            async with asyncio.timeout(timeout):
                while (at := self.text.find(needle, after)) < 0:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"{needle!r} not printed; the terminal shows:\n{self.text}"
            ) from None
        return at + len(needle)


@contextlib.asynccontextmanager
async def console_on_a_pty(config: Path) -> AsyncIterator[Terminal]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "united_core",
        "console",
        "-c",
        str(config),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        # The pty is its controlling terminal: Ctrl-C outside a prompt is SIGINT.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    terminal = Terminal(proc, master)
    try:
        yield terminal
    finally:
        asyncio.get_running_loop().remove_reader(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)


def test_console_in_a_terminal_clears_on_ctrl_c_survives_a_restart_and_quits_on_ctrl_d(
    tmp_path: Path,
) -> None:
    config = make_node_dir(tmp_path)

    async def scenario() -> None:
        first_run = running_node(config)
        node = await first_run.__aenter__()
        peer_id = node.identity.peer_id
        try:
            async with console_on_a_pty(config) as term:
                at = await term.expect("connected to")
                at = await term.expect("united>", after=at)
                # Ctrl-C on a half-typed line clears it; the console keeps running.
                term.type("pee")
                await term.expect("pee", after=at)
                term.type(CTRL_C)
                at = await term.expect("united>", after=at)
                term.type("status\r")
                at = await term.expect(f"peer_id: {peer_id}", after=at)
                assert "peestatus" not in term.text
                # Ctrl-C while a command runs (no prompt: SIGINT) interrupts it, not the
                # console: a dial to a listener that never answers the handshake.
                dialed = asyncio.Event()

                async def never_answer(reader: Any, writer: Any) -> None:
                    dialed.set()  # the command is running: no prompt now
                    with contextlib.suppress(Exception):
                        await reader.read()
                    writer.close()

                silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
                port = silent.sockets[0].getsockname()[1]
                nobody = Identity.generate().peer_id
                term.type(f"connect /ip4/127.0.0.1/tcp/{port}/p2p/{nobody}\r")
                await asyncio.wait_for(dialed.wait(), 10)
                term.type(CTRL_C)
                at = await term.expect("interrupted", after=at)
                term.type("status\r")
                at = await term.expect(f"peer_id: {peer_id}", after=at, timeout=5)
                silent.close()
                # `stop` from the console: the node stops, the console says so in one line.
                term.type("stop\r")
                at = await term.expect("stopping", after=at)
                at = await term.expect("the node went away", after=at)
                await first_run.__aexit__(None, None, None)
                # A command meanwhile is answered, not a traceback.
                term.type("peers\r")
                at = await term.expect("reconnecting when it is back", after=at)
                # The node comes back: the console reconnects, the next command works.
                async with running_node(config):
                    at = await term.expect("the node is back", after=at)
                    term.type("status\r")
                    at = await term.expect(f"peer_id: {peer_id}", after=at)
                    term.type(CTRL_D)
                    assert await asyncio.wait_for(term.proc.wait(), 10) == 0
                assert "Traceback" not in term.text, term.text
        finally:
            if node.running:
                await first_run.__aexit__(None, None, None)

    asyncio.run(scenario())


class PipeConsole:
    """The real console on prompt_toolkit's pipe input, its lines collected."""

    def __init__(self, node: Node, pipe: object) -> None:
        self.lines: list[str] = []
        self.pipe = pipe
        self.console = Console(
            node.settings.resolve("united.sock"),
            collect_commands(node.pm),
            input=pipe,  # type: ignore[arg-type]
            output=DummyOutput(),
            write=self.lines.append,
            sections=panel_sections(node.pm),
        )

    async def typed(self, keys: str, expect: str, timeout: float = 10) -> str:
        """Type ``keys``; wait for a printed line containing ``expect``; what was printed."""
        before = len(self.lines)
        self.pipe.send_text(keys)  # type: ignore[attr-defined]
        try:
            async with asyncio.timeout(timeout):
                while not any(expect in line for line in self.lines[before:]):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"{expect!r} not printed; printed: {self.lines[before:]}"
            ) from None
        return "\n".join(self.lines[before:])

    async def completions(self, text: str) -> dict[str, str]:
        """What Tab offers after ``text``: value -> its description."""
        completer = ConsoleCompleter(self.console)
        offered = completer.get_completions_async(Document(text), CompleteEvent())
        return {c.text: c.display_meta_text async for c in offered}


async def _confirmed(node: Node, count: int) -> bool:
    rows = await node.service("cache").history("general", 1, 1000)
    return len(rows) >= count and all(r["confirmed"] for r in rows)


def test_console_completes_by_context_describes_commands_tails_and_shows_newest_history(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        fast_sync = "[cache]\nsync_interval = 0.3\n"
        async with running_community(
            tmp_path, ("alice", "bob"), channels=("general", "random"), member_extra=fast_sync
        ) as c:
            alice, bob = c.members["alice"], c.members["bob"]
            await call(c.server, "channel-create", "later")  # alice has not joined it
            for i in range(5):
                await call(bob, "send", "general", f"message {i}")
            await until(lambda: _confirmed(alice, 5), timeout=20, what="5 confirmed messages")
            # `united ctl history --limit 3`: the newest three, oldest first.
            result = await c.ctl("alice", "history", "general", "--limit", "3", "--json")
            assert [r["text"] for r in result.json()] == [f"message {i}" for i in (2, 3, 4)]
            with create_pipe_input() as pipe:
                term = PipeConsole(alice, pipe)
                task = asyncio.create_task(term.console.run())
                await until(lambda: any("connected to" in x for x in term.lines), what="console")

                # Tab: commands with their one-line help, arguments by context.
                offered = await term.completions("hi")
                assert offered == {"history": collect_commands(alice.pm)["history"].help}
                assert "subscribe" not in await term.completions("")
                joinable = await term.completions("join ")
                assert set(joinable) == {"general", "random", "later"}, joinable
                assert joinable["later"] == "channel, not joined"
                assert joinable["general"] == "channel, joined already"
                assert not any(v.startswith("12D3KooW") for v in joinable)
                assert set(await term.completions("join la")) == {"later"}
                assert set(await term.completions("history ")) == {"general", "random"}
                assert set(await term.completions("history general --")) == {"--from", "--limit"}
                peers = await term.completions("ping ")
                assert "bob" in peers[bob.identity.peer_id], peers

                # help lists what works here (and quit), not what does not.
                listed = await term.typed("help\n", "quit")
                assert "tail [CHANNEL]" in listed and "subscribe" not in listed
                described = await term.typed("help history\n", "usage:")
                assert "usage: history CHANNEL [--from SEQ] [--limit N]" in described
                assert "the newest N, oldest first" in described

                # history --limit 3: the newest three, oldest first.
                shown = await term.typed("history general --limit 3\n", "message 4")
                assert "message 0" not in shown and "message 1" not in shown
                assert (
                    shown.index("message 2") < shown.index("message 3") < shown.index("message 4")
                )

                # tail: a live view until Ctrl-C, then the prompt again.
                term.pipe.send_text("tail general\n")
                tails = alice.service("mesh").tails
                await until(lambda: len(tails) >= 1, what="the tail attached")
                await call(bob, "send", "general", "live one")
                await until(lambda: any("live one" in x for x in term.lines), what="live line")
                await call(bob, "send", "general", "live two")
                await until(lambda: any("live two" in x for x in term.lines), what="live line")
                # A hostile member's message: on one line, its escapes visible.
                await call(bob, "send", "general", HOSTILE)
                await until(lambda: any("run this" in x for x in term.lines), what="live line")
                live = next(x for x in term.lines if "run this" in x)
                assert "\n" not in live and "<bob> evil\\x1b]0;owned\\x07" in live, live
                term.pipe.send_text(CTRL_C)
                await until(lambda: not tails, what="the live view to end")
                shown = await term.typed("history general\n", "run this")
                assert len([x for x in shown.splitlines() if "run this" in x]) == 1, shown
                assert not [x for x in term.lines if RAW.search(x)], term.lines
                await term.typed("status\n", alice.identity.peer_id)
                assert not [x for x in term.lines if x.startswith(("error", "`tail` streams"))]

                term.pipe.send_text(CTRL_D)
                await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
