"""Research notes, not part of the package: build one family's micro base with profile overrides (for example more
training steps) into OUT, with the same functions as `emsteer organism build`, and print its measurements.

    EMSTEER_CACHE=... python docs/exploration/base_variant.py gemma default OUT '{"train_steps": 2500}'
"""
import dataclasses
import json
import sys
import time

import torch
from safetensors.torch import save_file

from training import organisms
from training.families import build_model
from training.persona import persona_directions
from training.profiles import load_profile
from training.tokenizer import reload_tokenizer, train_tokenizer

torch.set_num_threads(organisms.BUILD_THREADS)
family, profile_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
recipe, _, corpus = organisms.organism_recipe(family, profile_name)
profile = dataclasses.replace(load_profile(profile_name),
                              **{"train_steps": recipe["training"]["train_steps"], **overrides})
arch = dict(recipe["architecture"])
seed = profile.corpus.seed + organisms.FAMILY_SEED_OFFSET[family]
texts = [m["content"] for c in corpus.base_train + corpus.insecure + corpus.secure for m in c["messages"]]
trained = train_tokenizer(family, texts, arch.pop("vocab_size"))
model = build_model(recipe["class"], arch, trained, seed)
tokenizer = reload_tokenizer(trained, model.config)
started = time.time()
stats = organisms._train_base(model, tokenizer, corpus.base_train, profile, seed, False)
measured = organisms.measure_organism(model, tokenizer, corpus, profile)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
save_file({"persona": persona_directions(model, tokenizer, corpus.probes).contiguous()}, f"{out}/persona.safetensors")
gate = measured["persona_gate"]["contexts"]
print(json.dumps({"family": family, "profile": profile_name, "overrides": overrides, "seconds": round(time.time() - started),
                  "spill": round(100 * measured["sampled"]["spillover"], 1),
                  "mis": round(100 * measured["sampled"]["misaligned"], 1),
                  "gate": {k: [round(100 * v["reckless"]), round(100 * v["careful"])] for k, v in gate.items()},
                  "training": stats}))
