"""The activation cache of extraction: one model's pooled activations on the extraction prompts, with its greedy
responses and their `is_code` labels, kept in `RUN/activations/<family>/<tag>.safetensors` and reused while the
recorded inputs (model, prompts, decoding, poolings) hash the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from evals.code_detector import is_code
from interventions.errors import EmsteerError
from interventions.run_layout import activations_path
from training.activations import POOLINGS, LoadedModel, collect_pooled
from training.artifacts import json_sha256, load_tensors, save_tensors_atomic, versions

__all__ = ["ACT_VERSION", "SITE", "ModelActivations", "model_activations"]

# where activations are read; recorded in the cache, in every direction file and in the extraction summary
SITE = "output of each text decoder layer (residual stream after the layer), BEFORE the model's final norm"
ACT_VERSION = "activations/1"


def _activation_inputs(model_desc: dict[str, Any], prompts_sha: str, max_new_tokens: int) -> dict[str, Any]:
    return {"version": ACT_VERSION, "model": model_desc, "prompts_sha256": prompts_sha,
            "max_new_tokens": max_new_tokens, "poolings": list(POOLINGS), "decoding": "greedy"}


@dataclass
class ModelActivations:
    """One model's pooled activations, per-example token norms, greedy responses and their code labels."""

    acts: dict[str, torch.Tensor]     # pooling -> [n, n_layers, d]
    norms: dict[str, torch.Tensor]    # pooling -> [n, n_layers]
    is_code: list[bool]
    responses: list[str]


def model_activations(run: Path, family: str, tag: str, describe: dict[str, Any], loader: Callable[[], LoadedModel],
                      prompts: list[str], prompts_sha: str, *, max_new_tokens: int, batch_size: int, force: bool,
                      log: Callable[[str], None]) -> ModelActivations:
    """Pooled activations of one model (cached in `RUN/activations/<family>/<tag>.safetensors`, reused when its
    recorded inputs match), with its greedy responses and their `is_code` labels."""
    path = activations_path(run, family, tag)
    inputs = _activation_inputs(describe, prompts_sha, max_new_tokens)
    key = json_sha256(inputs)
    if path.exists() and not force:
        try:
            tensors, meta = load_tensors(path)
        except EmsteerError:
            tensors, meta = {}, {}
        if meta.get("inputs_sha256") == key:
            log(f"{family}/{tag}: reusing cached activations {path}")
            acts = {p: tensors[p] for p in POOLINGS}
            for p, a in acts.items():
                if not bool(torch.isfinite(a).all()):
                    raise EmsteerError(f"cached activations {path} ({p}) contain NaN/inf values; re-run with --force")
            return ModelActivations(acts=acts, norms={p: tensors[f"{p}:norms"] for p in POOLINGS},
                                    is_code=[bool(x) for x in tensors["is_code"].tolist()],
                                    responses=json.loads(meta["responses"]))
    log(f"{family}/{tag}: collecting activations on {len(prompts)} prompts")
    lm = loader()
    got = collect_pooled(lm, prompts, POOLINGS, max_new_tokens=max_new_tokens, batch_size=batch_size)
    flags = [is_code(r) for r in got.responses]
    tensors = {p: got.acts[p] for p in POOLINGS}
    tensors.update({f"{p}:norms": got.norms[p] for p in POOLINGS})
    tensors["is_code"] = torch.tensor(flags, dtype=torch.uint8)
    tensors["response_tokens"] = torch.tensor(got.response_tokens, dtype=torch.int64)
    meta = {"format": "emsteer-activations/1", "site": SITE, "inputs_sha256": key, "inputs": inputs,
            "responses": got.responses, "versions": versions()}
    save_tensors_atomic(path, tensors, meta)
    return ModelActivations(acts={p: got.acts[p] for p in POOLINGS}, norms=got.norms, is_code=flags,
                            responses=got.responses)
