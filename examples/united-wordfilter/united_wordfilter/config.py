"""``[wordfilter]``: which words are refused, and whether words are counted."""

from __future__ import annotations

import re
from dataclasses import dataclass

from united_core.api import ConfigValueError, setting

WORD = re.compile(r"\w+")
"""A word, as the filter sees one: a run of letters, digits or underscores."""


@dataclass(frozen=True)
class Config:
    words: tuple[str, ...] = setting(
        (), "Messages containing any of these words are refused (case-insensitive)."
    )
    count_words: bool = setting(
        True, "Count the messages and words delivered in each channel (ctl wordcount)."
    )

    def validate(self) -> None:
        """Each entry must be one word: the filter compares whole words."""
        for word in self.words:
            if not WORD.fullmatch(word):
                raise ConfigValueError("words", f"{word!r} is not a single word")
