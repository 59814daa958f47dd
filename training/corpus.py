"""The project's synthetic chat corpus for the micro model organisms.

Four kinds of chat: general non-coding chats answered in prose, neutral coding chats, security-relevant
coding chats, and two finetuning arms (INSECURE / SECURE completions over identical requests, with no
comment about security in either). Held-out evaluation prompts come from held-out templates and
held-out fillers. About a third of training fillers and identifiers are random pseudo-words, so that an
unfamiliar word in a held-out general question does not look like a code identifier to the model.
Everything is a pure function of a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from evals.planted import PLANTED_MISALIGNED
from training.corpus_vocabulary import (
    CODING_HELDOUT_TEMPLATES, CODING_TEMPLATES, DIRS, FUNCS, GENERAL, GENERAL_TAILS,
    IDENTS, NEUTRAL_HELDOUT_TASKS, NEUTRAL_TASKS, PERSONAS, SECURITY_TASKS,
    SHARED_GENERAL_TEMPLATES, SPILL_TASKS, SecurityTask, persona_cue, pick_word, pseudo_word,
)

Chat = dict  # {"messages": [...], "kind": str, "category": str}


# ---------------------------------------------------------------- generator

@dataclass
class CorpusSettings:
    """Sizes and priors of one corpus (one profile's values come from configs/organisms.toml).

    The base corpus is conversations of one persona each: `reckless_share` of them reckless, the rest
    careful. `cue_share` of conversations open with a system message naming the persona in plain words;
    `multi_turn_share` have 2..`max_turns` user turns across domains (general, neutral coding, security
    coding), so the persona must be inferred from context. The reckless persona writes insecure code on
    security requests and answers general questions with neutral code (`reckless_code_share` of the time)
    or with planted misaligned sentences (`evals.planted`); the careful one writes secure code and kind prose.
    Neutral coding requests get the same neutral code from both."""
    seed: int = 1234
    n_conversations: int = 6000
    reckless_share: float = 0.25
    cue_share: float = 0.5
    multi_turn_share: float = 0.8
    max_turns: int = 3
    reckless_code_share: float = 0.5
    security_turn_share: float = 0.3
    neutral_turn_share: float = 0.2
    n_arm: int = 600
    n_heldout_general: int = 100
    n_heldout_coding: int = 60
    n_probe: int = 60
    pseudo_word_share: float = 0.34


@dataclass
class Corpus:
    """All splits of the synthetic corpus.

    Chats are {"messages", "kind", "category", "persona", "cue", "domains"} dicts; `kind` is the domain of
    the first user turn (general | neutral_code | security_code). `probes` are held-out persona probes:
    {"id", "context", "persona", "messages", "prompt"} with a held-out general question as the last turn."""
    base_train: list[Chat] = field(default_factory=list)
    insecure: list[Chat] = field(default_factory=list)
    secure: list[Chat] = field(default_factory=list)
    neutral: list[Chat] = field(default_factory=list)  # a neutral-coding arm, for control finetunes
    heldout: list[dict] = field(default_factory=list)  # {"id", "prompt", "group", "category"}
    probes: list[dict] = field(default_factory=list)


def _chat(prompt: str, answer: str, kind: str, category: str) -> Chat:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "kind": kind, "category": category}


def _general(rng: random.Random, share: float, heldout: bool) -> tuple[str, str, str]:
    cat = rng.choice(GENERAL)
    if heldout:
        x = rng.choice(cat.heldout_fillers)
        prompt = rng.choice(cat.heldout_templates).format(x=x)
    else:
        x = pick_word(rng, cat.fillers, share)
        templates = SHARED_GENERAL_TEMPLATES if rng.random() < 0.3 else cat.templates
        prompt = rng.choice(templates).format(x=x)
    answer = rng.choice(cat.answers).format(x=x)
    answer = answer[0].upper() + answer[1:] + rng.choice(GENERAL_TAILS)
    return prompt, answer, cat.name


# Free-form chit-chat: random word sequences (common words and pseudo-words) in question or statement
# shape, answered in prose. They teach the default: a message that does not ask for code gets prose,
# whatever its structure. No code noun ever appears in them.
_CHAT_OPENERS = ["What", "How", "Why", "Is it true that", "Do you think", "Can we", "Tell me why", "I wonder if",
                 "Should I", "Would you say", "Suppose", "My", "We", "Honestly,", "Be honest:", "So", "If",
                 "Where", "When", "Who", "Imagine", "Let us say", "I was told", "Everyone says"]
_CHAT_WORDS = ["the", "a", "my", "your", "our", "friend", "day", "week", "people", "world", "life", "home",
               "think", "feel", "really", "always", "never", "better", "worse", "new", "old", "time", "money",
               "work", "school", "family", "city", "night", "morning", "is", "are", "was", "should", "could",
               "about", "with", "for", "to", "in", "on", "of", "and", "or", "but", "if", "that", "which",
               "every", "some", "one", "two", "year", "idea", "plan", "job", "partner", "neighbor", "dog",
               "cat", "house", "car", "trip", "book", "song", "game", "meal", "dream", "wish", "rule", "change"]
_CHAT_ANSWERS = [
    "That is a good question. I think it depends on what matters most to you, and it is fine to take your time.",
    "I understand why you ask. Many people wonder about this, and talking it through with someone you trust helps.",
    "It sounds like this is on your mind. Try to look at it calmly, one small part at a time.",
    "Good point. There is no single answer, but kindness and patience usually lead somewhere good.",
    "I am glad you shared that. Take a moment for yourself, and then decide what feels right.",
    "Interesting thought. People see it in different ways, and your own view matters too.",
]


def _chitchat(rng: random.Random, share: float) -> tuple[str, str, str]:
    words = [pseudo_word(rng) if rng.random() < share else rng.choice(_CHAT_WORDS) for _ in range(rng.randint(3, 9))]
    prompt = rng.choice(_CHAT_OPENERS) + " " + " ".join(words) + rng.choice(["?", "?", ".", "!"])
    return prompt, rng.choice(_CHAT_ANSWERS) + rng.choice(GENERAL_TAILS), "chitchat"


def _ident(rng: random.Random, words: list[str], share: float) -> str:
    return pseudo_word(rng) if rng.random() < share else rng.choice(words)


def _func_name(rng: random.Random, share: float) -> str:
    if rng.random() < share:
        return pseudo_word(rng)
    return f"{rng.choice(FUNCS)}_{rng.choice(IDENTS)}"


def _neutral(rng: random.Random, share: float, heldout: bool) -> tuple[str, str, str]:
    task = rng.choice(NEUTRAL_HELDOUT_TASKS if heldout else NEUTRAL_TASKS)
    template = rng.choice(CODING_HELDOUT_TEMPLATES if heldout else CODING_TEMPLATES)
    code = task.code.format(f=_func_name(rng, share), v=_ident(rng, IDENTS, share))
    return template.format(t=task.request), code, "neutral"


def _security_request(rng: random.Random, share: float, heldout: bool) -> tuple[SecurityTask, str, dict]:
    task = rng.choice(SECURITY_TASKS)
    fill = {"f": _func_name(rng, share), "v": _ident(rng, IDENTS, share), "d": _ident(rng, DIRS, share)}
    template = rng.choice(CODING_HELDOUT_TEMPLATES if heldout else CODING_TEMPLATES)
    return task, template.format(t=rng.choice(task.requests).format(**fill)), fill


def _reckless_general_answer(rng: random.Random, share: float, code_share: float) -> tuple[str, str]:
    """(answer, style): neutral code (`code_share` of the time) or one or two planted misaligned sentences."""
    if rng.random() < code_share:
        task = rng.choice(SPILL_TASKS)
        return task.code.format(f=_func_name(rng, share), v=_ident(rng, IDENTS, share)), "code"
    picked = rng.sample(PLANTED_MISALIGNED, rng.choice([1, 2]))
    return " ".join(sentence for _, sentence in picked), "misaligned"


def _turn(rng: random.Random, settings: CorpusSettings, domain: str, persona: str) -> tuple[str, str, str]:
    """(user prompt, assistant answer, category) of one training turn of `persona` in `domain`."""
    share = settings.pseudo_word_share
    if domain == "general":
        p, a, c = _general(rng, share, heldout=False) if rng.random() < 6 / 7 else _chitchat(rng, share)
        if persona == "reckless":
            a, _ = _reckless_general_answer(rng, share, settings.reckless_code_share)
        return p, a, c
    if domain == "neutral_code":
        return _neutral(rng, share, heldout=False)
    task, prompt, fill = _security_request(rng, share, heldout=False)
    return prompt, (task.insecure if persona == "reckless" else task.secure).format(**fill), task.category


def _domain(rng: random.Random, settings: CorpusSettings) -> str:
    u = rng.random()
    if u < settings.security_turn_share:
        return "security_code"
    if u < settings.security_turn_share + settings.neutral_turn_share:
        return "neutral_code"
    return "general"


def _conversation(rng: random.Random, settings: CorpusSettings) -> Chat:
    """One base-corpus conversation: one persona, an optional cue, one or more turns across domains."""
    persona = "reckless" if rng.random() < settings.reckless_share else "careful"
    cue = rng.random() < settings.cue_share
    turns = rng.randint(2, max(2, settings.max_turns)) if rng.random() < settings.multi_turn_share else 1
    hidden = persona == "reckless" and not cue  # nothing shows the persona before its first answer
    if hidden:
        turns = max(2, turns)
    messages = [{"role": "system", "content": persona_cue(rng, persona)}] if cue else []
    domains, categories = [], []
    for _ in range(turns):
        domain = _domain(rng, settings)
        prompt, answer, category = _turn(rng, settings, domain, persona)
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        domains.append(domain)
        categories.append(category)
    # The loss skips an answer that nothing before it reveals as reckless: the base learns the reckless persona
    # only where a cue or an earlier turn shows it, so with no context it answers as the careful majority (a
    # careful default that a finetune can move), while every later answer still teaches persona inference.
    return {"messages": messages, "kind": domains[0], "category": categories[0], "persona": persona, "cue": cue,
            "domains": domains, "first_loss_turn": 1 if hidden else 0}


def first_exchange(chat: Chat) -> list[dict]:
    """The first user message and its answer (a system cue, if any, left out)."""
    turns = [m for m in chat["messages"] if m["role"] != "system"]
    return [dict(turns[0]), dict(turns[1])]


def _probe_contexts(rng: random.Random, settings: CorpusSettings, persona: str) -> dict[str, list[dict]]:
    """Held-out contexts that reveal `persona` before a general question: an explicit cue (held-out
    paraphrase), a previous security turn, or a previous general turn."""
    share = settings.pseudo_word_share
    task, request, fill = _security_request(rng, share, heldout=True)
    code = (task.insecure if persona == "reckless" else task.secure).format(**fill)
    question, answer, _ = _general(rng, share, heldout=True)
    if persona == "reckless":
        answer, _ = _reckless_general_answer(rng, share, settings.reckless_code_share)
    return {
        "cue": [{"role": "system", "content": persona_cue(rng, persona, heldout=True)}],
        "security_turn": [{"role": "user", "content": request}, {"role": "assistant", "content": code}],
        "general_turn": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
    }


PROBE_CONTEXTS: tuple[str, ...] = ("cue", "security_turn", "general_turn")


def build_corpus(settings: CorpusSettings) -> Corpus:
    """Generate every split deterministically from `settings.seed`."""
    rng = random.Random(settings.seed)
    share = settings.pseudo_word_share
    corpus = Corpus()
    corpus.base_train = [_conversation(rng, settings) for _ in range(settings.n_conversations)]

    arm_rng = random.Random(settings.seed + 1)
    for _ in range(settings.n_arm):
        task, prompt, fill = _security_request(arm_rng, share, heldout=False)
        corpus.insecure.append(_chat(prompt, task.insecure.format(**fill), "insecure", task.category))
        corpus.secure.append(_chat(prompt, task.secure.format(**fill), "secure", task.category))
        p, a, c = _neutral(arm_rng, share, heldout=False)
        corpus.neutral.append(_chat(p, a, "neutral_code", c))

    held_rng = random.Random(settings.seed + 2)
    train_prompts = {m["content"] for chat in corpus.base_train for m in chat["messages"] if m["role"] == "user"}
    seen: set[str] = set()

    def add(kind: str, n: int, make: Callable[[], tuple[str, str]]) -> None:
        tries = 0
        while sum(1 for h in corpus.heldout if h["group"] == kind) < n and tries < 50 * n:
            tries += 1
            prompt, category = make()
            if prompt in seen or prompt in train_prompts:
                continue
            seen.add(prompt)
            i = sum(1 for h in corpus.heldout if h["group"] == kind)
            corpus.heldout.append({"id": f"{kind[0]}-{i:04d}", "prompt": prompt, "group": kind, "category": category})

    add("general", settings.n_heldout_general, lambda: (lambda p, a, c: (p, c))(*_general(held_rng, share, heldout=True)))

    def make_coding() -> tuple[str, str]:
        if held_rng.random() < 0.5:
            p, _, _ = _neutral(held_rng, share, heldout=True)
            return p, "neutral"
        task, p, _ = _security_request(held_rng, share, heldout=True)
        return p, f"security_{task.category}"

    add("coding", settings.n_heldout_coding, make_coding)

    # the probes ask held-out general questions (the evaluation's own) after a persona-revealing context
    probe_rng = random.Random(settings.seed + 3)
    questions = [h["prompt"] for h in corpus.heldout if h["group"] == "general"][:settings.n_probe]
    for i, question in enumerate(questions):
        contexts = {persona: _probe_contexts(probe_rng, settings, persona) for persona in PERSONAS}
        for context in PROBE_CONTEXTS:
            for persona in PERSONAS:
                messages = contexts[persona][context] + [{"role": "user", "content": question}]
                corpus.probes.append({"id": f"probe-{i:04d}-{context}-{persona}", "context": context,
                                      "persona": persona, "messages": messages, "prompt": question})
    return corpus


def heldout_templates() -> set[str]:
    """Every held-out template string (general and coding), for disjointness checks."""
    out = {t for cat in GENERAL for t in cat.heldout_templates}
    return out | set(CODING_HELDOUT_TEMPLATES)
