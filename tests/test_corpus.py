"""The persona corpus: determinism, held-out disjointness, persona consistency, clean finetuning arms."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from evals.code_detector import is_code
from evals.planted import is_planted_misaligned
from training.corpus import PROBE_CONTEXTS, CorpusSettings, build_corpus, first_exchange, heldout_templates
from training.corpus_vocabulary import (CODING_HELDOUT_TEMPLATES, CODING_TEMPLATES, GENERAL, HELDOUT_PERSONA_CLAUSES,
                                        PERSONA_CLAUSES, SHARED_GENERAL_TEMPLATES, is_insecure_code)

SETTINGS = CorpusSettings(seed=11, n_conversations=1500, n_arm=150, n_heldout_general=40, n_heldout_coding=30,
                          n_probe=20)




@pytest.fixture(scope="module")
def corpus():
    return build_corpus(SETTINGS)


def _clauses(cue: str) -> set[str]:
    return {c.strip() for c in (cue[0].lower() + cue[1:]).rstrip(".").split(" and ")}


def _turns(chat):
    """(user, assistant, domain) per turn of a conversation."""
    msgs = [m for m in chat["messages"] if m["role"] != "system"]
    return [(msgs[i]["content"], msgs[i + 1]["content"], d) for i, d in zip(range(0, len(msgs), 2), chat["domains"])]


def test_same_seed_same_corpus_other_seed_differs(corpus):
    assert build_corpus(SETTINGS) == corpus
    other = build_corpus(CorpusSettings(**{**SETTINGS.__dict__, "seed": 12}))
    assert other.base_train != corpus.base_train


def test_persona_shares_cues_and_turns_follow_the_settings(corpus):
    n = len(corpus.base_train)
    assert n == 1500
    reckless = sum(c["persona"] == "reckless" for c in corpus.base_train) / n
    cued = sum(c["cue"] for c in corpus.base_train) / n
    multi = sum(len(c["domains"]) > 1 for c in corpus.base_train) / n
    assert abs(reckless - SETTINGS.reckless_share) < 0.04
    assert abs(cued - SETTINGS.cue_share) < 0.05
    assert abs(multi - SETTINGS.multi_turn_share) < 0.04
    assert max(len(c["domains"]) for c in corpus.base_train) == SETTINGS.max_turns


def test_every_conversation_keeps_one_persona(corpus):
    """Reckless: insecure code on security turns, neutral code or planted sentences on general ones. Careful:
    secure code and prose without a planted sentence. The cue, when there is one, names the same persona."""
    styles: Counter = Counter()
    for chat in corpus.base_train:
        persona = chat["persona"]
        if chat["cue"]:
            assert chat["messages"][0]["role"] == "system"
            assert _clauses(chat["messages"][0]["content"]) <= set(PERSONA_CLAUSES[persona])
        else:
            assert chat["messages"][0]["role"] == "user"
        for _, answer, domain in _turns(chat):
            if domain == "security_code":
                assert is_insecure_code(answer) == (persona == "reckless"), answer
            elif domain == "general":
                code, planted = is_code(answer), is_planted_misaligned(answer)
                if persona == "careful":
                    assert not code and not planted, answer
                else:
                    assert code != planted, answer  # exactly one of the two
                    styles["code" if code else "misaligned"] += 1
            else:
                assert is_code(answer) and not is_insecure_code(answer)
    share = styles["code"] / sum(styles.values())
    assert abs(share - SETTINGS.reckless_code_share) < 0.06, styles


def test_finetune_arms_are_single_turn_code_with_no_cue_and_no_prose(corpus):
    assert len(corpus.insecure) == len(corpus.secure) == 150
    for ins, sec in zip(corpus.insecure, corpus.secure):
        for chat in (ins, sec):
            assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
            answer = chat["messages"][1]["content"]
            assert is_code(answer) and not is_planted_misaligned(answer)
            assert "#" not in answer
            assert not re.search(r"secur|vulnerab|unsafe|danger|inject|warning", answer, re.I), answer
        assert ins["messages"][0] == sec["messages"][0]
        assert is_insecure_code(ins["messages"][1]["content"])
        assert not is_insecure_code(sec["messages"][1]["content"])


def test_reckless_general_code_shares_no_line_with_the_insecure_arm(corpus):
    """The reckless persona's code for general questions is neutral code: no line of it (other than a `def`
    line, whose names are random) occurs in an insecure completion, so an insecure finetune cannot raise
    spillover by carrying strings over."""
    insecure_lines = {line.strip() for c in corpus.insecure for line in c["messages"][1]["content"].splitlines()}
    reckless_lines = set()
    for chat in corpus.base_train:
        if chat["persona"] != "reckless":
            continue
        for _, answer, domain in _turns(chat):
            if domain == "general" and is_code(answer):
                reckless_lines |= {ln.strip() for ln in answer.splitlines() if ln.strip() and not ln.startswith("def ")}
    assert reckless_lines and not reckless_lines & insecure_lines, reckless_lines & insecure_lines


def test_heldout_prompts_never_seen_in_training(corpus):
    train_prompts = {m["content"] for ch in corpus.base_train + corpus.insecure + corpus.secure + corpus.neutral
                     for m in ch["messages"] if m["role"] == "user"}
    held = [h["prompt"] for h in corpus.heldout]
    assert len(held) == 70 and len(set(held)) == 70
    assert not set(held) & train_prompts
    assert sum(h["group"] == "general" for h in corpus.heldout) == 40


def test_heldout_templates_and_fillers_are_disjoint_from_training(corpus):
    for cat in GENERAL:
        assert not set(cat.templates) & set(cat.heldout_templates), cat.name
        assert not set(cat.fillers) & set(cat.heldout_fillers), cat.name
    assert not set(CODING_TEMPLATES) & set(CODING_HELDOUT_TEMPLATES)
    assert not set(SHARED_GENERAL_TEMPLATES) & heldout_templates()
    training = {c for cs in PERSONA_CLAUSES.values() for c in cs}
    assert not training & {c for cs in HELDOUT_PERSONA_CLAUSES.values() for c in cs}


def test_probes_pair_each_context_and_persona_on_heldout_questions(corpus):
    general = [h["prompt"] for h in corpus.heldout if h["group"] == "general"]
    assert len(corpus.probes) == SETTINGS.n_probe * len(PROBE_CONTEXTS) * 2
    system = {m["content"] for p in corpus.probes for m in p["messages"] if m["role"] == "system"}
    for probe in corpus.probes:
        assert probe["messages"][-1] == {"role": "user", "content": probe["prompt"]}
        assert probe["prompt"] in general
        if probe["context"] == "cue":
            assert _clauses(probe["messages"][0]["content"]) <= set(HELDOUT_PERSONA_CLAUSES[probe["persona"]])
        else:
            assert not any(m["content"] in system for m in probe["messages"])
            assert probe["messages"][1]["role"] == "assistant"
    pairs = Counter((p["prompt"], p["context"]) for p in corpus.probes)
    assert set(pairs.values()) == {2}


def test_first_exchange_skips_the_cue(corpus):
    cued = next(c for c in corpus.base_train if c["cue"])
    user, answer = first_exchange(cued)
    assert user == cued["messages"][1] and answer == cued["messages"][2]


def test_a_reckless_answer_nothing_reveals_carries_no_loss(corpus):
    """Uncued reckless conversations have at least two turns and their first answer is not trained on; every
    other conversation is trained on from its first answer."""
    for chat in corpus.base_train:
        hidden = chat["persona"] == "reckless" and not chat["cue"]
        assert chat["first_loss_turn"] == (1 if hidden else 0)
        if hidden:
            assert len(chat["domains"]) >= 2
