"""Pair the tokens of two different tokenizers over the same text by character offsets.

Each family renders a chat with its own template (different special tokens, different prefixes), so offsets
are compared in the coordinates of the shared CONTENT (the user's and the assistant's message text), never
of the template: `content_spans` finds where each message's text sits in a rendered chat, and
`tokens_in_spans` turns a fast tokenizer's `return_offsets_mapping` into content coordinates, dropping
special tokens, template text and whitespace-only tokens.

Rule (`align_last_char`): every token of A is paired with the token of B whose character span contains A's
last non-whitespace character. Two tokenizers split words differently, but a word's last character always
falls in exactly one token of each, so word-final tokens pair up exactly and a word-internal piece of A pairs
with the B piece covering the same characters. Many A tokens may share one B token.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Sequence

from interventions.errors import EmsteerError

Span = tuple[int, int]


def content_spans(rendered: str, contents: Sequence[str]) -> list[Span]:
    """(start, end) of each message text in a rendered chat, found in order (each after the previous)."""
    spans: list[Span] = []
    pos = 0
    for text in contents:
        start = rendered.find(text, pos)
        if start < 0 or not text:
            raise EmsteerError(f"message text {text[:40]!r} not found in the rendered chat")
        spans.append((start, start + len(text)))
        pos = start + len(text)
    return spans


@dataclass
class ContentTokens:
    """Tokens of one rendered text that lie in its content spans: their positions in the tokenized sequence and
    their (start, end) in CONTENT coordinates (the message texts joined by `separator`)."""

    positions: list[int]
    spans: list[Span]


def tokens_in_spans(offsets: Sequence[Span], spans: Sequence[Span], rendered: str, separator: int = 1) -> ContentTokens:
    """Keep the tokens whose offsets lie inside one of `spans` (in the rendered text) and are not whitespace
    only; report their spans shifted into content coordinates (message k starts at sum of the previous
    messages' lengths plus `separator` per message)."""
    positions: list[int] = []
    out: list[Span] = []
    bases = []
    acc = 0
    for s, e in spans:
        bases.append(acc - s)
        acc += (e - s) + separator
    for pos, (a, b) in enumerate(offsets):
        if b <= a or not rendered[a:b].strip():
            continue
        for k, (s, e) in enumerate(spans):
            if s <= a and b <= e:
                positions.append(pos)
                out.append((a + bases[k], b + bases[k]))
                break
    return ContentTokens(positions, out)


def _last_nonspace(text: str, span: Span) -> int | None:
    a, b = span
    for c in range(b - 1, a - 1, -1):
        if not text[c].isspace():
            return c
    return None


def align_last_char(spans_a: Sequence[Span], spans_b: Sequence[Span], text: str) -> list[tuple[int, int]]:
    """Pairs (i, j): token i of A with the token j of B whose span contains A-token i's last non-whitespace
    character (both span lists in the coordinates of `text`, sorted, non-overlapping). A tokens with no such
    B token (e.g. B dropped that character) are left out."""
    starts_b = [s for s, _ in spans_b]
    pairs: list[tuple[int, int]] = []
    for i, span in enumerate(spans_a):
        c = _last_nonspace(text, span)
        if c is None:
            continue
        j = bisect_right(starts_b, c) - 1
        if j >= 0 and spans_b[j][0] <= c < spans_b[j][1]:
            pairs.append((i, j))
    return pairs


def content_text(rendered: str, spans: Sequence[Span], separator: str = "\n") -> str:
    """The message texts joined by `separator` (the coordinate system of `tokens_in_spans`)."""
    return separator.join(rendered[s:e] for s, e in spans)
