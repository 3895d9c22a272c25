"""Sentences and words of passages and answers, for the steps that trim, check and repair answers.

Plain regular expressions on purpose: the passages are short Markdown or prose chunks, and what
these steps need is stable, cheap units (a sentence to quote, words to compare), not linguistics.
"""

from __future__ import annotations

import re

# A sentence ends at . ! or ? followed by space and a capital, digit, quote or bracket; a blank line
# or a Markdown line break (heading, list item) ends one too.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[`])|\n\s*\n|\n(?=\s*(?:#|[-*] |\d+\. ))")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.'/-]*[A-Za-z0-9]|[A-Za-z0-9]")
_MARKER = re.compile(r"\[\d{1,3}\]")
_HEADING = re.compile(r"^\s*#+\s")
STOPWORDS = frozenset(
    "a an the of to in on at by for with from into over under and or but if then than so as is are was were be "
    "been being it its this that these those there here which who whom what when where why how do does did done "
    "can could will would should may might must shall not no yes i you he she we they them their our your my "
    "me us his her also only just about all any each every some such very more most other one own same too "
    "has have had having up out off again further once both few nor".split()
)


def sentences(text: str, min_words: int = 4) -> list[str]:
    """The sentences of ``text`` that could answer something: headings and fragments under
    ``min_words`` words (``# Dlq``, ``Topic: kafka.``) are left out."""
    found = []
    for piece in _SENTENCE_END.split(text):
        piece = " ".join(piece.split())
        if piece and not _HEADING.match(piece) and len(words(piece)) >= min_words:
            found.append(piece)
    return found


def words(text: str) -> list[str]:
    """Lower-cased words, citation markers left out."""
    return [w.lower() for w in _WORD.findall(_MARKER.sub(" ", text))]


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS}


def overlap(answer: str, passages: list[str]) -> float:
    """The share of the answer's content words that occur in the passages (0 when it has none)."""
    said = content_words(answer)
    if not said:
        return 0.0
    source: set[str] = set()
    for passage in passages:
        source |= content_words(passage)
    return len(said & source) / len(said)


def first_repeat(text: str, n: int) -> int | None:
    """The character offset where an ``n``-word sequence of ``text`` occurs for the second time, or
    None: a small model stuck in a loop repeats itself word for word."""
    spans = [(m.start(), m.group().lower()) for m in _WORD.finditer(text)]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(spans) - n + 1):
        gram = tuple(w for _, w in spans[i : i + n])
        if gram in seen:
            return spans[i][0]
        seen.add(gram)
    return None


def repeated_ngrams(text: str, n: int) -> int:
    """How many ``n``-word sequences occur more than once in ``text`` (the benchmark's repetition check)."""
    ws = [w for w in _WORD.findall(text.lower())]
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(ws) - n + 1):
        gram = tuple(ws[i : i + n])
        counts[gram] = counts.get(gram, 0) + 1
    return sum(1 for c in counts.values() if c > 1)
