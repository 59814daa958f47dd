"""Is a non-code answer still well-formed prose? The coherence side of a steering result.

Steering can lower code spillover by breaking the model: empty answers, one word repeated, token soup.
`prose_evidence(text)` judges an answer deterministically as *well-formed prose* when all of these hold:

- at least `MIN_WORDS` words (letters and apostrophes);
- at least `MIN_WORD_SHARE` of its whitespace-separated tokens are words (with trailing/leading punctuation);
- it contains a sentence end (`.`, `!` or `?`);
- no degenerate repetition: no word three or more times in a row, and (with 8+ words) no single word
  making up more than `MAX_TOP_WORD_SHARE` of the words, and at least `MIN_DISTINCT_SHARE` distinct words.

The thresholds are deliberately loose: they pass every prose answer of the unsteered micro organisms and
reject the failure modes seen when steering too hard (measured numbers are in the report, per cell).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

__all__ = ["prose_evidence", "is_well_formed_prose", "MIN_WORDS"]

MIN_WORDS = 4
MIN_WORD_SHARE = 0.8
MAX_TOP_WORD_SHARE = 0.34
MIN_DISTINCT_SHARE = 0.35
_WORD = re.compile(r"^[\"'(\[]*[A-Za-z][A-Za-z'-]*[\"')\].,;:!?]*$")
_LETTERS = re.compile(r"[A-Za-z][A-Za-z'-]*")


def prose_evidence(text: str) -> dict[str, Any]:
    """The checks above with their measured values, and the verdict `well_formed` with the first failed rule."""
    tokens = text.split()
    words = [w.lower().strip("'-") for w in _LETTERS.findall(text)]
    words = [w for w in words if w]
    word_share = (sum(1 for t in tokens if _WORD.match(t)) / len(tokens)) if tokens else 0.0
    counts = Counter(words)
    top_share = (counts.most_common(1)[0][1] / len(words)) if words else 0.0
    distinct_share = (len(counts) / len(words)) if words else 0.0
    longest_run = _longest_run(words)
    checks = [
        ("too_few_words", len(words) >= MIN_WORDS),
        ("not_words", word_share >= MIN_WORD_SHARE),
        ("no_sentence_end", bool(re.search(r"[.!?]", text))),
        ("repeated_word_run", longest_run < 3),
        ("one_word_dominates", len(words) < 8 or top_share <= MAX_TOP_WORD_SHARE),
        ("few_distinct_words", len(words) < 8 or distinct_share >= MIN_DISTINCT_SHARE),
    ]
    failed = next((name for name, ok in checks if not ok), None)
    return {"well_formed": failed is None, "rule": failed or "prose", "n_words": len(words),
            "word_share": round(word_share, 4), "top_word_share": round(top_share, 4),
            "distinct_share": round(distinct_share, 4), "longest_run": longest_run}


def is_well_formed_prose(text: str) -> bool:
    """True when `prose_evidence(text)` finds well-formed prose."""
    return bool(prose_evidence(text)["well_formed"])


def _longest_run(words: list[str]) -> int:
    best, run = 0, 0
    for i, w in enumerate(words):
        run = run + 1 if i and w == words[i - 1] else 1
        best = max(best, run)
    return best
