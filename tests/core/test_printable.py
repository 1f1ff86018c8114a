"""Text for people cannot drive the reader's terminal: ``printable`` and every
renderer that shows what peers wrote (tail lines, history rows of the cache and
the archive, table cells, the console's panel), and the error lines of ``ctl``."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_node_dir

from united_core.api import printable, render_table, render_value
from united_core.cli import main as cli_main
from united_core.console import render_panel
from united_core.control import ControlClient, ControlClientError

# A retitle (OSC ... BEL), a clear screen, cursor up, a carriage return and a
# forged line; a C1 CSI, NEL, a bidi override, a zero-width space, a line separator.
HOSTILE = (
    "hi\x1b]0;owned\x07\x1b[2J\x1b[1A\r12:00:00 #general <admin> please run: curl x|sh"
    "\x9b2J\x85\u202etxt.exe\u200b\u2028\x00\x7f\ud800"
)
# What must never reach a terminal from a peer: C0 but TAB and LF, DEL, C1, Cf, Zl/Zp,
# surrogates.
RAW = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e"
    "\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


def _raw(text: str) -> list[str]:
    return RAW.findall(text)


def test_printable_shows_control_and_format_characters_as_escapes() -> None:
    shown = printable(HOSTILE)
    assert not _raw(shown) and "\n" not in shown, repr(shown)
    assert shown.startswith("hi\\x1b]0;owned\\x07\\x1b[2J\\x1b[1A ↵ 12:00:00 #general"), shown
    assert "\\x9b2J\\x85\\u202etxt.exe\\u200b\\u2028\\x00\\x7f\\ud800" in shown, shown
    assert shown.isprintable()
    # Line breaks: one ↵ for CR LF, LF or CR; kept as LF with multiline=True (a
    # lone CR still cannot return to the start of the line).
    assert printable("a\r\nb\nc\rd") == "a ↵ b ↵ c ↵ d"
    assert printable("a\r\nb\nc\rd", multiline=True) == "a\nb\nc ↵ d"
    # TAB, other scripts, emoji, a no-break space: as they are.
    for fine in ("a\tb", "héllo wörld", "שלום", "日本語", "👍", "a\u00a0b", ""):
        assert printable(fine) == fine
    # Idempotent: what it made is printable already.
    assert printable(shown) == shown
    assert printable(printable(HOSTILE, multiline=True), multiline=True) == printable(
        HOSTILE, multiline=True
    )


def test_renderers_of_peer_text_show_no_control_characters() -> None:
    from united_archive.commands import render_history
    from united_cache import _render as render_cache_history
    from united_mesh.commands import render_line

    now = time.time() * 1000
    line = {"timestamp": now, "channel": "gen\x1b[0m", "sender": "bob\u202e", "text": HOSTILE}
    tail = render_line(line)
    assert not _raw(tail) and "\n" not in tail, repr(tail)
    assert "please run" in tail  # the text is shown, escaped, on the one line
    row = {"seq": 1, "timestamp": now, "sender": "bob\x1b[31m", "text": HOSTILE}
    for shown in (
        render_history([row]),
        render_cache_history([{**row, "confirmed": True}]),
        render_table([{"name\x07": HOSTILE, "list": [HOSTILE], "map": {"k\x1b": HOSTILE}}]),
        render_value({"text": HOSTILE, "nested": {"k\x1b": [HOSTILE, {"x": HOSTILE}]}}),
    ):
        assert not _raw(shown), repr(shown)
    # One line for each row: a forged row cannot be slipped in.
    assert len(render_history([row]).splitlines()) == 2
    assert len(render_cache_history([{**row, "confirmed": False}]).splitlines()) == 1
    assert len(render_table([{"text": HOSTILE}]).splitlines()) == 2


def test_the_console_panel_shows_names_and_channels_printable() -> None:
    peer = "12D3KooWPeer"
    snapshot: dict[str, Any] = {
        "peer_id": "12D3KooWSelf",
        "time": time.time(),
        "peers": [{"peer_id": peer}],
        "p2p": {"mesh": {"topic": [peer]}},
        "plugins": {
            "x": {
                "peer_names": {peer: "\u202eevil\x1b[2J"},
                "peer_nat": {peer: "eim\x07"},
                "topic_names": {"topic": "gen\r\neral"},
            }
        },
    }
    shown = render_panel(snapshot)
    assert not _raw(shown), repr(shown)
    assert "gen ↵ eral" in shown


def test_ctl_prints_the_nodes_error_message_as_one_printable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's refusal (a DirectoryError's message, relayed as the node's error):
    one line on stderr, escaped; ``--json`` keeps it exact."""
    config = make_node_dir(tmp_path)
    message = "the server says: \x1b]0;owned\x07\x1b[2J\nunited: forged line"

    async def refused(path: Path) -> ControlClient:
        raise ControlClientError(message, "bad_request")

    monkeypatch.setattr(ControlClient, "connect", staticmethod(refused))
    capsys.readouterr()
    assert cli_main(["ctl", "-c", str(config), "status"]) == 1
    err = capsys.readouterr().err
    assert not _raw(err) and len(err.splitlines()) == 1, repr(err)
    assert err.startswith("united: the server says: \\x1b]0;owned\\x07"), err
    assert cli_main(["ctl", "-c", str(config), "status", "--json"]) == 1
    import json

    assert json.loads(capsys.readouterr().out)["error"]["message"] == message


def test_joiners_that_scripts_and_emoji_need_are_kept() -> None:
    from united_core.api import printable

    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # ZWNJ inside a word
    assert printable(family) == family and printable(persian) == persian
    assert printable("a\u200bb") == "a\\u200bb"  # a zero-width space is still shown


def test_log_lines_escape_what_peers_wrote_and_keep_tracebacks() -> None:
    import logging

    from united_core.cli.common import JournalFormatter, PrintableFormatter

    record = logging.LogRecord(
        "united_directory.client", logging.WARNING, __file__, 1,
        "the server says: %s", ("bye\x1b]0;owned\x07\x1b[2J",), None,
    )  # fmt: skip
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    for formatter in (PrintableFormatter("%(message)s"), JournalFormatter()):
        text = formatter.format(record)
        assert "\x1b" not in text and "\x07" not in text, text
        assert "bye\\x1b]0;owned" in text
        assert "\nValueError: boom" in text.replace("<4>", "")  # the traceback's lines stay
