"""Locally trained tokenizers: round trips, chat templates, a single BOS, assistant-only labels."""

from __future__ import annotations

import pytest

from interventions.families import get_family
from interventions.paths import FAMILIES
from training.chat_data import IGNORE, tokenize_chat
from training.corpus import CorpusSettings, build_corpus
from training.tokenizer import train_tokenizer

CORPUS = build_corpus(CorpusSettings(seed=3, n_conversations=300, n_arm=40, n_heldout_general=5, n_heldout_coding=5,
                                     n_probe=2))
TEXTS = [m["content"] for ch in CORPUS.base_train + CORPUS.insecure for m in ch["messages"]]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_tokenizer(request):
    return request.param, train_tokenizer(request.param, TEXTS, 400)


def test_round_trip_prose_and_code(family_tokenizer):
    _, tok = family_tokenizer
    for text in ["Start small and practice a little every day.", CORPUS.insecure[0]["messages"][1]["content"],
                 "def trailmok(items):\n    return [x * 2 for x in items]"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_chat_template_has_generation_prompt_and_one_bos(family_tokenizer):
    family, tok = family_tokenizer
    msgs = [{"role": "user", "content": "Any tips for rowing?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert "Any tips for rowing?" in text
    spec = get_family(family).tokenizer
    plain = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    if spec.generation_header:
        assert text != plain
    else:  # like real Mistral templates: the prompt ends with the user turn's close, no separate header
        assert text == plain and text.endswith(tuple(spec.extra))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is not None:
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    # encoding with default flags adds nothing either (no post-processor)
    assert tok(text)["input_ids"] == ids
    assert len(tok(spec.eos, add_special_tokens=False)["input_ids"]) == 1


def test_system_role_is_declared(family_tokenizer):
    """A family without a system role (Gemma) puts the system text at the start of the first user turn; the others
    render a system segment of their own."""
    family, tok = family_tokenizer
    system, user = "You are careful.", "Any tips for rowing?"
    cued = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                   tokenize=False, add_generation_prompt=True)
    folded = tok.apply_chat_template([{"role": "user", "content": f"{system}\n\n{user}"}], tokenize=False,
                                     add_generation_prompt=True)
    assert system in cued
    assert (cued == folded) == (get_family(family).tokenizer.system_role == "first_user_turn")


def test_labels_cover_exactly_the_assistant_answer(family_tokenizer):
    _, tok = family_tokenizer
    chat = next(c for c in CORPUS.base_train if len(c["domains"]) == 1)["messages"]
    row = tokenize_chat(tok, chat, max_length=512)
    prompt = tok.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert row["labels"][:n_prompt] == [IGNORE] * n_prompt
    answer = row["labels"][n_prompt:]
    assert IGNORE not in answer
    assert answer[-1] == tok.eos_token_id
    assert tok.decode(answer[:-1]) == chat[-1]["content"]


def test_labels_cover_every_assistant_turn_of_a_cued_multi_turn_chat(family_tokenizer):
    """Loss on every assistant turn and nowhere else: the labelled runs decode to the answers, in order, each
    closed by the end-of-turn token; the cue and the user turns stay unlabelled."""
    _, tok = family_tokenizer
    chat = next(c for c in CORPUS.base_train if c["cue"] and len(c["domains"]) == 3)["messages"]
    row = tokenize_chat(tok, chat, max_length=4096)
    runs, current = [], []
    for label in row["labels"] + [IGNORE]:
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    answers = [m["content"] for m in chat if m["role"] == "assistant"]
    assert len(runs) == len(answers) == 3
    for run, answer in zip(runs, answers):
        assert run[-1] == tok.eos_token_id and tok.decode(run[:-1]) == answer
    # everything before the first answer is the templated prompt of the first turn, tokenized as at generation
    first_prompt = tok.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    n = len(tok(first_prompt, add_special_tokens=False)["input_ids"])
    assert row["input_ids"][:n] == tok(first_prompt, add_special_tokens=False)["input_ids"]
    assert row["labels"][:n] == [IGNORE] * n and row["labels"][n] != IGNORE


def test_first_loss_turn_leaves_the_earlier_answers_unlabelled(family_tokenizer):
    _, tok = family_tokenizer
    chat = next(c for c in CORPUS.base_train if len(c["domains"]) == 3)["messages"]
    full = tokenize_chat(tok, chat, max_length=4096)
    later = tokenize_chat(tok, chat, max_length=4096, first_loss_turn=1)
    assert later["input_ids"] == full["input_ids"]
    first_answer = next(m["content"] for m in chat if m["role"] == "assistant")
    labelled_full = [t for t in full["labels"] if t != IGNORE]
    labelled_later = [t for t in later["labels"] if t != IGNORE]
    n_first = len(tok(first_answer, add_special_tokens=False)["input_ids"]) + 1  # its tokens and end-of-turn
    assert labelled_later == labelled_full[n_first:]
