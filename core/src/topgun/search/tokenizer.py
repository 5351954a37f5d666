"""The full-text analyzer of PROTOCOL.md §5.7: text → index terms.

Text is lowercased and split on every character that is neither a letter nor a digit
(Unicode-aware); words shorter than 2 or longer than 40 characters and English stop words
are dropped, and the rest are Porter-stemmed ("Merkle trees" → `["merkl", "tree"]`). The same
analyzer serves BM25 search and the `match*` predicate leaves, so a term a search reports in
`matchedTerms` is exactly a term a `match` leaf looks for.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

import snowballstemmer  # type: ignore[import-untyped]

__all__ = [
    "ENGLISH_STOP_WORDS",
    "MAX_TOKEN_LENGTH",
    "MIN_TOKEN_LENGTH",
    "analyze",
    "stem",
]

MIN_TOKEN_LENGTH: Final = 2
MAX_TOKEN_LENGTH: Final = 40

_STOP_WORDS: Final = """
    a an the
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves what which who whom
    this that these those
    am is are was were be been being have has had having do does did doing will would shall
    should can could may might must ought
    about above across after against along among around at before behind below beneath beside
    between beyond by down during except for from in inside into near of off on onto out
    outside over past since through throughout to toward towards under underneath until up upon
    with within without
    and but or nor so yet both either neither not only as if than when while although because
    unless whether
    here there where how why all each every any some no none more most other such own same too
    very just also now then again ever once few many much several
    s t d ll m ve re
"""

ENGLISH_STOP_WORDS: Final = frozenset(_STOP_WORDS.split())
"""Words too common to help ranking; matched on the lowercased word, before stemming."""

_WORD: Final = re.compile(r"[^\W_]+")
"""A run of letters and digits: `\\w` minus the underscore."""

_PORTER = snowballstemmer.stemmer("porter")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The Porter stem of a lowercased `word` (`"merkle"` → `"merkl"`), cached: real text
    repeats a small vocabulary, and stemming dominates analysis time."""
    result: str = _PORTER.stemWord(word)
    return result


def analyze(text: str) -> list[str]:
    """The index terms of `text`, in order, repeats kept (term frequencies and phrase
    positions need both)."""
    terms: list[str] = []
    for word in _WORD.findall(text.lower()):
        if MIN_TOKEN_LENGTH <= len(word) <= MAX_TOKEN_LENGTH and word not in ENGLISH_STOP_WORDS:
            term = stem(word)
            if len(term) >= MIN_TOKEN_LENGTH:
                terms.append(term)
    return terms
