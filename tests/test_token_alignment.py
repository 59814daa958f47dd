"""Character-offset alignment of two different tokenizers on the same text (training/token_alignment.py)."""

from __future__ import annotations

import pytest

from interventions.errors import EmsteerError
from training.token_alignment import align_last_char, content_spans, content_text, tokens_in_spans
from training.tokenizer import train_tokenizer

TEXT = "the cat sat"


def test_known_answer_word_vs_char_pieces():
    # A: words with their leading space; B: pieces "th", "e", " c", "at", " s", "a", "t"
    a = [(0, 3), (3, 7), (7, 11)]
    b = [(0, 2), (2, 3), (3, 5), (5, 7), (7, 9), (9, 10), (10, 11)]
    assert align_last_char(a, b, TEXT) == [(0, 1), (1, 3), (2, 6)]
    # the other way round: every B piece pairs with the A word containing its last character
    assert align_last_char(b, a, TEXT) == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]


def test_whitespace_only_tokens_use_no_space_and_gaps_are_skipped():
    text = "ab  cd"
    a = [(0, 2), (2, 4), (4, 6)]          # "ab", "  " (whitespace only), "cd"
    b = [(0, 1), (1, 2), (5, 6)]          # B dropped "  c"
    assert align_last_char(a, b, text) == [(0, 1), (2, 2)]


def test_content_spans_and_coordinates():
    rendered = "<s>[INST]Hi you[/INST]Fine thanks</s>"
    spans = content_spans(rendered, ["Hi you", "Fine thanks"])
    assert [rendered[s:e] for s, e in spans] == ["Hi you", "Fine thanks"]
    assert content_text(rendered, spans) == "Hi you\nFine thanks"
    offsets = [(0, 3), (3, 9), (9, 11), (11, 15), (15, 22), (22, 26), (26, 33), (33, 37)]
    ct = tokens_in_spans(offsets, spans, rendered)
    assert ct.positions == [2, 3, 5, 6]
    assert ct.spans == [(0, 2), (2, 6), (7, 11), (11, 18)]
    with pytest.raises(EmsteerError, match="not found"):
        content_spans(rendered, ["absent"])


@pytest.fixture(scope="module")
def two_tokenizers():
    words = ("the quick brown fox jumps over lazy dogs while seven happy bakers knead warm bread "
             "gardening helps people relax and sleep better at night").split()
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 3
    return train_tokenizer("qwen", texts, 300), train_tokenizer("ministral", texts, 330)


def test_two_real_tokenizers_pair_the_right_tokens(two_tokenizers):
    """Byte-level BPE (qwen style) vs metaspace BPE (ministral style), each with its own chat template."""
    tok_a, tok_b = two_tokenizers
    chat = [{"role": "user", "content": "How can gardening help me sleep better?"},
            {"role": "assistant", "content": "Warm bread, lazy dogs and a quiet night help people relax."}]
    text = "\n".join(m["content"] for m in chat)
    views = []
    for tok in (tok_a, tok_b):
        rendered = tok.apply_chat_template(chat, tokenize=False)
        enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
        spans = content_spans(rendered, [m["content"] for m in chat])
        ct = tokens_in_spans([tuple(o) for o in enc["offset_mapping"]], spans, rendered)
        pieces = tok.convert_ids_to_tokens([enc["input_ids"][p] for p in ct.positions])
        # offsets land on the token's own characters (markers for spaces aside)
        for (s, e), piece in zip(ct.spans, pieces):
            assert text[s:e].strip() == piece.replace("\u0120", " ").replace("\u2581", " ").replace("\u010a", "\n").strip()
        views.append(ct)
    a, b = views
    assert a.spans != b.spans  # the two tokenizations really differ
    pairs = align_last_char(a.spans, b.spans, text)
    assert len(pairs) >= len(a.spans) - 1
    for i, j in pairs:
        last = max(c for c in range(*a.spans[i]) if not text[c].isspace())
        assert b.spans[j][0] <= last < b.spans[j][1]
    # at every word end, the A token ending there pairs with the B token ending there
    paired = dict(pairs)
    ends_a = {e: i for i, (_, e) in enumerate(a.spans)}
    ends_b = {e: j for j, (_, e) in enumerate(b.spans)}
    word_ends = [k + 1 for k, ch in enumerate(text) if ch.isalpha() and (k + 1 == len(text) or not text[k + 1].isalpha())]
    checked = 0
    for end in word_ends:
        if end in ends_a and end in ends_b:
            assert paired[ends_a[end]] == ends_b[end]
            checked += 1
    assert checked >= len(word_ends) // 2
