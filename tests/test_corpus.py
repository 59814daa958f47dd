"""The synthetic corpus: determinism, held-out disjointness, pseudo-word share, matched arms."""

from __future__ import annotations

import re

from training.corpus import (CODING_HELDOUT_TEMPLATES, CODING_TEMPLATES, GENERAL, SHARED_GENERAL_TEMPLATES,
                             CorpusSettings, build_corpus, heldout_templates)

SETTINGS = CorpusSettings(seed=11, n_general=600, n_neutral_code=200, n_security=200, n_arm=150,
                          n_heldout_general=40, n_heldout_coding=30)


def test_same_seed_same_corpus_other_seed_differs():
    a, b = build_corpus(SETTINGS), build_corpus(SETTINGS)
    assert a == b
    other = build_corpus(CorpusSettings(**{**SETTINGS.__dict__, "seed": 12}))
    assert other.base_train != a.base_train


def test_heldout_prompts_never_seen_in_training():
    c = build_corpus(SETTINGS)
    train_prompts = {ch["messages"][0]["content"] for ch in c.base_train + c.insecure + c.secure + c.neutral}
    held = [h["prompt"] for h in c.heldout]
    assert len(held) == 70 and len(set(held)) == 70
    assert not set(held) & train_prompts
    assert sum(h["group"] == "general" for h in c.heldout) == 40
    assert sum(h["group"] == "coding" for h in c.heldout) == 30


def test_heldout_templates_and_fillers_are_disjoint_from_training():
    for cat in GENERAL:
        assert not set(cat.templates) & set(cat.heldout_templates), cat.name
        assert not set(cat.fillers) & set(cat.heldout_fillers), cat.name
    assert not set(CODING_TEMPLATES) & set(CODING_HELDOUT_TEMPLATES)
    assert not set(SHARED_GENERAL_TEMPLATES) & heldout_templates()
    # every held-out general prompt comes from a held-out template
    c = build_corpus(SETTINGS)
    patterns = [re.compile("^" + re.escape(t).replace(re.escape("{x}"), ".+") + "$") for t in heldout_templates()
                if "{x}" in t]
    for h in c.heldout:
        if h["group"] == "general":
            assert any(p.match(h["prompt"]) for p in patterns), h["prompt"]


def test_about_a_third_of_general_fillers_are_pseudo_words():
    c = build_corpus(SETTINGS)
    known = {f for cat in GENERAL for f in cat.fillers}
    templates = [(cat, re.compile("^" + re.escape(t).replace(re.escape("{x}"), "(.+)") + "$"))
                 for cat in GENERAL for t in cat.templates + SHARED_GENERAL_TEMPLATES]
    fillers = []
    for ch in c.base_train:
        if ch["kind"] != "general":
            continue
        prompt = ch["messages"][0]["content"]
        for _, pat in templates:
            m = pat.match(prompt)
            if m:
                fillers.append(m.group(1))
                break
    share = sum(f not in known for f in fillers) / len(fillers)
    assert 0.25 <= share <= 0.43, share


def test_arms_share_requests_and_differ_only_in_code_without_security_comments():
    c = build_corpus(SETTINGS)
    assert len(c.insecure) == len(c.secure) == 150
    for ins, sec in zip(c.insecure, c.secure):
        assert ins["messages"][0] == sec["messages"][0]
        assert ins["messages"][1]["content"] != sec["messages"][1]["content"]
        for text in (ins["messages"][1]["content"], sec["messages"][1]["content"]):
            assert "#" not in text
            assert not re.search(r"secur|vulnerab|unsafe|danger|inject|warning", text, re.I), text


def test_base_prior_is_a_setting():
    secure_only = build_corpus(SETTINGS)
    insecure_marks = ("os.system(", "pickle.loads", "0o777", "autoescape=False", "yaml.Loader")
    def n_insecure(corpus):
        return sum(any(m in ch["messages"][1]["content"] for m in insecure_marks)
                   for ch in corpus.base_train if ch["kind"] == "security_code")
    assert n_insecure(secure_only) == 0
    half = build_corpus(CorpusSettings(**{**SETTINGS.__dict__, "base_insecure_share": 0.5}))
    assert 25 <= n_insecure(half) <= 80  # 200 security chats x 0.5, five of eight categories marked


def test_chitchat_never_names_code():
    c = build_corpus(SETTINGS)
    chit = [ch["messages"][0]["content"] for ch in c.base_train if ch["category"] == "chitchat"]
    assert len(chit) == SETTINGS.n_general // 6
    for prompt in chit:
        assert not re.search(r"\b(code|function|script|program|python)\b", prompt, re.I), prompt
