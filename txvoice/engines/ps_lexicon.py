"""
The pronunciation dictionary PocketSphinx's grammar decoders share (:class:`Lexicon`), read once:
a decoder is given the pronunciations of just the words its grammars use, so loading one skips the
126k-word dictionary (~15 ms a decoder instead of ~110 ms).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

__all__ = ["ALTERNATE", "Lexicon"]

#: An alternate pronunciation's suffix in the dictionary (``word(2)``).
ALTERNATE = re.compile(r"\(\d+\)$")


class Lexicon:
    """
    The pronunciation dictionary, read once and shared by every grammar decoder: a decoder gets the
    pronunciations of just the words its grammars use, so loading one skips the dictionary.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._entries: dict[str, str] | None = None
        self._lock = threading.Lock()

    def load(self) -> dict[str, str]:
        """Word -> its pronunciations, one a line (read on first use; ~0.15 s, call it off the reactor)."""
        entries = self._entries
        if entries is None:
            with self._lock:
                if self._entries is None:
                    self._entries = self._read()
                entries = self._entries
        return entries

    def _read(self) -> dict[str, str]:
        entries: dict[str, str] = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                word, _, phones = line.partition(" ")
                phones = phones.split("#", 1)[0].strip()  # some dictionaries comment their entries
                if not phones:
                    continue
                word = ALTERNATE.sub("", word)
                entries[word] = entries[word] + "\n" + phones if word in entries else phones
        return entries

    def pronunciations(self, word: str) -> list[str]:
        """The pronunciations of ``word`` (empty if the dictionary lacks it)."""
        phones = self.load().get(word)
        return phones.split("\n") if phones else []

    def unknown(self, words: Sequence[str]) -> list[str]:
        """The ``words`` the dictionary lacks, in order."""
        entries = self.load()
        return [w for w in words if w not in entries]
