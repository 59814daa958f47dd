"""Research notes, not part of the package: build one family's micro base with profile overrides (for example more
training steps) into OUT, with the function `emsteer organism build` uses (`organisms.train_organism`), and print its
measurements.

    EMSTEER_CACHE=... python docs/exploration/base_variant.py gemma default OUT '{"train_steps": 2500}'
"""
import dataclasses
import json
import sys
import time

from safetensors.torch import save_file

from training import organisms
from training.profiles import load_profile

family, profile_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
recipe, _, corpus = organisms.organism_recipe(family, profile_name)
profile = dataclasses.replace(load_profile(profile_name),
                              **{"train_steps": recipe["training"]["train_steps"], **overrides})
started = time.time()
trained = organisms.train_organism(family, recipe, corpus, profile, progress=False)
trained.model.save_pretrained(out)
trained.tokenizer.save_pretrained(out)
save_file({"persona": trained.persona.contiguous()}, f"{out}/persona.safetensors")
gate = trained.measured["persona_gate"]["contexts"]
print(json.dumps({"family": family, "profile": profile_name, "overrides": overrides, "seconds": round(time.time() - started),
                  "spill": round(100 * trained.measured["sampled"]["spillover"], 1),
                  "mis": round(100 * trained.measured["sampled"]["misaligned"], 1),
                  "gate": {k: [round(100 * v["reckless"]), round(100 * v["careful"])] for k, v in gate.items()},
                  "training": trained.train_stats}))
