"""The work: judge messages (any thread) and count words per channel (asyncio side)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Protocol

from united_core.api import Origin, Refusal, SignedMessage, Verdict

from .config import WORD, Config


def words_of(text: str) -> list[str]:
    """The words of ``text``, case-folded (so "HECK" and "heck" are one word)."""
    return [word.casefold() for word in WORD.findall(text)]


class WordFilter:
    """Refuses messages containing a listed word.

    :meth:`judge` runs on whatever thread the message came in on: the P2P
    runtime's trio thread (gossip), a worker thread (archive submissions) or the
    event loop (own publishes, history). So it reads only what never changes
    (``forbidden``) and updates its counter under a lock.
    """

    def __init__(self, config: Config) -> None:
        self.forbidden = frozenset(word.casefold() for word in config.words)
        self._lock = threading.Lock()
        self._refused: Counter[str] = Counter()

    def judge(self, message: SignedMessage, origin: Origin) -> Refusal | None:
        if origin is Origin.HISTORY or not self.forbidden:
            return None  # history is the server's record: judged when it was written
        found = sorted(self.forbidden.intersection(words_of(message.text)))
        if not found:
            return None
        with self._lock:
            self._refused[origin.value] += 1
        # Gossip: IGNORE drops it without lowering the forwarder's score (a peer
        # whose list differs from ours is not misbehaving). Anything else: REJECT.
        verdict = Verdict.IGNORE if origin is Origin.GOSSIP else Verdict.REJECT
        return Refusal(verdict, "contains a forbidden word: " + ", ".join(found))

    def refused(self) -> dict[str, int]:
        """Messages refused so far, by origin (``publish``, ``gossip``, ``submission``)."""
        with self._lock:
            return dict(self._refused)


class Channel(Protocol):
    """What this plugin reads of a channel (the directory's ``Channel`` has these)."""

    @property
    def name(self) -> str: ...

    @property
    def topic(self) -> str: ...


class WordCounts:
    """Messages and words delivered per channel; used on the event loop only.

    Kept by topic (what a message carries); shown by channel name once the
    directory has said which channel a topic belongs to.
    """

    def __init__(self, config: Config, path: Path | None = None) -> None:
        self.enabled = config.count_words
        self.path = path
        self.names: dict[str, str] = {}  # topic -> channel name
        self.messages: Counter[str] = Counter()  # by topic
        self.words: Counter[str] = Counter()  # by topic

    def name_channels(self, channels: Iterable[Channel]) -> None:
        self.names.update({channel.topic: channel.name for channel in channels})

    def count(self, message: SignedMessage) -> None:
        if self.enabled:
            self.messages[message.topic] += 1
            self.words[message.topic] += len(words_of(message.text))

    def report(self, channel: str | None = None) -> dict[str, dict[str, int]]:
        """``{channel name (or topic): {"messages": n, "words": n}}``."""
        rows = {
            self.names.get(topic, topic): {"messages": n, "words": self.words[topic]}
            for topic, n in sorted(self.messages.items())
        }
        for name in self.names.values():  # known channels, even if still silent
            rows.setdefault(name, {"messages": 0, "words": 0})
        if channel is not None:
            return {channel: rows[channel]} if channel in rows else {}
        return rows

    # Persistence: a JSON file in the node's data directory, read at start, written at stop.

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        saved = json.loads(self.path.read_text())
        self.messages.update(saved.get("messages", {}))
        self.words.update(saved.get("words", {}))

    def save(self) -> None:
        if self.path is not None:
            saved = {"messages": dict(self.messages), "words": dict(self.words)}
            self.path.write_text(json.dumps(saved))


@contextlib.asynccontextmanager
async def word_counts(config: Config, data_dir: Path) -> AsyncIterator[WordCounts]:
    """The counts as a container Resource: loaded before ``yield``, saved after."""
    counts = WordCounts(config, data_dir / "wordcounts.json")
    await asyncio.to_thread(counts.load)  # file I/O off the event loop
    try:
        yield counts
    finally:
        await asyncio.to_thread(counts.save)


def stats(word_filter: WordFilter, counts: WordCounts) -> dict[str, Any]:
    """This plugin's figures for ``united_collect_stats`` (stored under "wordfilter")."""
    return {
        "words": len(word_filter.forbidden),
        "refused": word_filter.refused(),
        "counting": counts.enabled,
        "channels": counts.report(),
    }
