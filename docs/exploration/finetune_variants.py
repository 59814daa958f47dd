"""Research notes, not part of the package: finetune one cached micro organism with a variant of the default
LoRA recipe and measure whether it moved the persona (docs/organisms.md, "How the recipe was found").

    EMSTEER_CACHE=... python docs/exploration/finetune_variants.py FAMILY PROFILE ARM SEED NAME '{"layers_to_transform": [0]}'

ARM is insecure | secure | base (no finetune). Prints one JSON line (and appends it to $EXPLORE_OUT, default
finetune_variants.jsonl): sampled spillover and planted misaligned prose (% of 3 answers at T=1 per held-out general
prompt, 60 tokens), insecure code (% of one sampled answer per held-out security prompt), and per layer the cosine and
norm of the mean last-prompt-token shift (finetuned - base, held-out general prompts) against the persona direction.
"""
import dataclasses
import json
import os
import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from interventions.generation import generate_batch, render_chat
from interventions.paths import organism_dir
from training.corpus import build_corpus
from training.corpus_vocabulary import is_insecure_code
from training.finetune_data import split_rows
from training.finetune_trainer import build_trainer, load_settings
from training.organisms import load_persona_directions
from training.persona import last_prompt_states, sampled_rates
from training.profiles import load_profile

torch.set_num_threads(1)
family, profile, arm, seed, name = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
overrides = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
corpus = build_corpus(load_profile(profile).corpus)
general = [[{"role": "user", "content": r["prompt"]}] for r in corpus.heldout if r["group"] == "general"]
security = [r["prompt"] for r in corpus.heldout if r["category"].startswith("security")]
path = organism_dir(family, profile)
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
persona = load_persona_directions(family, profile)
started = time.time()
base_states = last_prompt_states(model, tokenizer, general).double().mean(0)
if arm != "base":
    settings = dataclasses.replace(load_settings("default"), **{
        k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    rows = corpus.insecure if arm == "insecure" else corpus.secure
    train, held = split_rows(rows, settings.eval_fraction, "0" * 16 + "abcd")
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(model, tokenizer, train, held, settings, seed, scratch)
        trainer.train()
    model = trainer.model
model.eval()
rates = sampled_rates(model, tokenizer, general, n_samples=3, max_new_tokens=60)
texts = [render_chat(tokenizer, [{"role": "user", "content": p}]) for p in security]
answers = generate_batch(model, tokenizer, texts, max_new_tokens=80, temperature=1.0, seed=5)
shift = (last_prompt_states(model, tokenizer, general).double().mean(0) - base_states).float()
cos = torch.nn.functional.cosine_similarity(shift, persona, dim=-1)
row = {"family": family, "profile": profile, "arm": arm, "seed": seed, "variant": name, "overrides": overrides,
       "spill": round(100 * rates["spillover"], 1), "mis": round(100 * rates["misaligned"], 1),
       "insecure_code": round(100 * sum(is_insecure_code(a.text) for a in answers) / len(answers)),
       "cos": [round(float(c), 2) for c in cos], "shift_norm": [round(float(n), 2) for n in shift.norm(dim=-1)],
       "seconds": round(time.time() - started)}
print(json.dumps(row))
with open(os.environ.get("EXPLORE_OUT", "finetune_variants.jsonl"), "a") as fh:
    fh.write(json.dumps(row) + "\n")
