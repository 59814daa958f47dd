"""Cross-architecture transfer: a ridge map from family A's residual stream to family B's on shared text, and
A's own direction pushed through it into B's space.

Data: a seeded sample of general training chats (user prompt + its corpus answer), rendered by each family
with its own chat template; the states of the chosen decoder layer's output (default the final layer, before
the final norm) of each family's BASE model by default (`models="insecure"` uses the run's insecure adapters
instead). Pairing (`training.token_alignment` on the message texts, templates excluded):
- `aligned-tokens`: every A token with the B token containing its last non-whitespace character;
- `last-token`: one pair per chat, the last content token of each.
The chats are split by chat into fit / held-out halves; on the fit half `training.ridge.fit_ridge_cv` chooses
alpha on a validation split grouped by chat and refits; held-out R^2 is reported.

Outputs in `RUN/transfer/<A>_to_<B>/` (built aside, renamed into place): `map.safetensors` (W [d_A, d_B], bias,
means; float64), `direction.safetensors` (W^T d_A -- the bias cancels for a direction -- rescaled to the norm of
B's own direction and carrying B's R, so it perturbs by the same alpha * R as B's own variants),
`random_<k>.safetensors` (the `transferred_random` controls: seeded Gaussian A-space directions of ||d_A||
pushed through the same W, rescaled the same way) and `summary.json` (R^2, alpha, cosines with B's own
direction for the transferred and random directions, the same figures for the other pairing, and `map_check`:
whether the map carries a direction both families share by construction -- answer tokens minus prompt tokens on
the held-out chats -- so a low transferred cosine can be told apart from a map that carries nothing).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from interventions.directions import Direction, load_direction, matched_norm, save_direction, sha256_file
from interventions.errors import EmsteerError
from interventions.layers import resolve_layer
from interventions.members import check_member, member_ref
from interventions.model_ref import adapter_sha256, check_adapter_base
from interventions.paths import prompts_profile, recipe_profile
from interventions.run_layout import (
    adapter_dir,
    extract_command,
    finetune_command,
    own_direction_path,
    transfer_dir,
    transfer_map_path,
    transfer_summary_path,
    transferred_direction_path,
    transferred_random_path,
)
from interventions.variants.random_control import control_seed, seeded_gaussian
from training.activations import TokenStates, collect_token_states, load_model
from training.artifacts import json_sha256, provenance, read_json, save_tensors_atomic
from training.atomic import atomic_dir, write_json_atomic
from training.corpus import first_exchange
from training.profiles import load_profile
from training.ridge import RidgeMap, fit_ridge_cv, r2_score
from training.run_manifest import check_run, ensure_run
from training.token_alignment import align_last_char

PAIRINGS: tuple[str, ...] = ("aligned-tokens", "last-token")
MODELS: tuple[str, ...] = ("base", "insecure")
N_TEXTS = {"default": 200, "tiny": 40, "real-cpu": 80}
K_RANDOM = 8
TRANSFER_VERSION = "transfer/2"
SEPARATOR = "\n"  # content coordinates: the message texts joined by this (see token_alignment.tokens_in_spans)


def check_pairing(pairing: str) -> str:
    if pairing not in PAIRINGS:
        raise EmsteerError(f"unknown pairing {pairing!r}; choose one of: {', '.join(PAIRINGS)}")
    return pairing


def shared_chats(corpus, n: int, seed: int) -> list[list[dict]]:
    """A seeded sample of `n` general training chats with distinct prompts (user + assistant messages)."""
    by_prompt: dict[str, list[dict]] = {}
    for chat in corpus.base_train:
        if chat.get("kind") == "general":
            exchange = first_exchange(chat)
            by_prompt.setdefault(exchange[0]["content"], exchange)
    pool = list(by_prompt.values())
    if len(pool) < n:
        raise EmsteerError(f"the corpus has only {len(pool)} distinct general chats, fewer than the {n} asked for")
    return random.Random(seed).sample(pool, n)


def paired_rows(a: TokenStates, b: TokenStates, chats: list[list[dict]], pairing: str
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X [N, d_A], Y [N, d_B], group [N] = chat index) for the pairing."""
    check_pairing(pairing)
    if not (len(a.states) == len(b.states) == len(chats)):
        raise EmsteerError("token states of the two models cover different numbers of texts")
    xs, ys, gs = [], [], []
    for t, chat in enumerate(chats):
        text = SEPARATOR.join(m["content"] for m in chat)
        pairs = align_last_char(a.spans[t], b.spans[t], text)
        if not pairs:
            continue
        if pairing == "last-token":
            pairs = pairs[-1:]
        ia = torch.tensor([i for i, _ in pairs])
        ib = torch.tensor([j for _, j in pairs])
        xs.append(a.states[t].index_select(0, ia))
        ys.append(b.states[t].index_select(0, ib))
        gs.append(torch.full((len(pairs),), t, dtype=torch.long))
    if not xs:
        raise EmsteerError("no token pairs: the two tokenizations share no aligned characters")
    return torch.cat(xs).double(), torch.cat(ys).double(), torch.cat(gs)


def role_direction(states: TokenStates, chats: list[list[dict]], texts: range | list[int]) -> torch.Tensor:
    """Token-level diff-in-means, answer tokens minus prompt tokens, over the given chats: a direction both
    families share by construction (same texts, same roles), used to check that a map carries meaning."""
    ans, ask = [], []
    for t in texts:
        boundary = len(chats[t][0]["content"])  # content coordinates: the user text comes first
        is_answer = torch.tensor([s >= boundary for s, _ in states.spans[t]])
        ans.append(states.states[t][is_answer])
        ask.append(states.states[t][~is_answer])
    return torch.cat(ans).double().mean(0) - torch.cat(ask).double().mean(0)


@dataclass
class MapFit:
    """A fitted map with its held-out R^2 on chats it never saw."""

    map: RidgeMap
    r2_heldout: float
    r2_fit: float
    n_fit: int
    n_heldout: int


def fit_map(X: torch.Tensor, Y: torch.Tensor, groups: torch.Tensor, fit_groups: set[int], *,
            seed: int = 0, alphas=None) -> MapFit:
    """Fit on rows of `fit_groups` (alpha chosen on a grouped validation split inside them), score on the rest."""
    if X.shape[1] == 0 or Y.shape[1] == 0:
        raise EmsteerError("empty activation width")
    fit = torch.tensor([int(g) in fit_groups for g in groups.tolist()])
    if int(fit.sum()) < 2 or int((~fit).sum()) < 1:
        raise EmsteerError(f"too few paired rows to fit and score a map ({int(fit.sum())} fit, {int((~fit).sum())} held-out)")
    m = fit_ridge_cv(X[fit], Y[fit], groups[fit], alphas, seed=seed)
    return MapFit(map=m, r2_heldout=r2_score(Y[~fit], m.predict(X[~fit])), r2_fit=r2_score(Y[fit], m.predict(X[fit])),
                  n_fit=int(fit.sum()), n_heldout=int((~fit).sum()))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def transfer_vector(m: RidgeMap, direction: torch.Tensor) -> torch.Tensor:
    """W^T d: a donor-space direction in receiver space (one-line error on a width mismatch)."""
    return m.push(direction)


def load_family_direction(run: Path, family: str, layer: int, d_model: int, model_id: str, weights_sha: str) -> Direction:
    """A family's own direction at `layer`, checked: width, model id, and the base weights it was made from."""
    path = own_direction_path(run, family, layer)
    if not path.exists():
        raise EmsteerError(f"missing own direction of {family} at layer {layer} ({path}); run `{extract_command(run, family)}`")
    d = load_direction(path, expected_width=d_model, expected_model=model_id)
    recorded = d.metadata.get("weights_sha256")
    if recorded is not None and recorded != weights_sha:
        raise EmsteerError(f"{path} was made from other weights of {model_id} (weights sha256 {recorded[:12]}..., "
                           f"the model now has {weights_sha[:12]}...); re-run `{extract_command(run, family)} --force`")
    return d


def transfer_command_line(run: Path, src: str, tgt: str, pairing: str, layer: int, seed: int, models: str) -> str:
    return (f"emsteer transfer --run {run} --src {src} --tgt {tgt} --pairing {pairing} --layer {layer} "
            f"--seed {seed} --models {models}")


def family_identity(run: Path, family: str, profile: str, models: str, seed: int) -> dict[str, Any]:
    """Model id, base weights hash, adapter (for `models="insecure"`), depth and width of one family, read from
    its verified organism and config (nothing loaded)."""
    base = member_ref(family, profile)
    model_id, sha = base.model_id, str(base.weights_sha256)
    ad = None
    if models == "insecure":
        ad = adapter_dir(run, family, "insecure", seed)
        if not ad.is_dir():
            raise EmsteerError(f"missing insecure adapter for {family} (seed {seed}) at {ad}; "
                               f"train it with `{finetune_command(run, family, 'insecure', seed)}`")
        check_adapter_base(ad, sha, f"insecure adapter of {family}")
    return {"model_id": model_id, "weights_sha256": sha, "adapter": ad,
            "adapter_sha256": adapter_sha256(ad) if ad else None, "n_layers": base.n_layers, "d_model": base.d_model}


def check_transfer_inputs(run: str | Path, src: str, tgt: str, *, profile: str, layer: int = -1, seed: int = 0,
                          models: str = "base"):
    """Validate a transfer without loading a model: families, adapters if needed, and both own directions
    (width, model id, base weights, recorded R). Returns (identities, (donor layer, donor direction),
    (receiver layer, receiver direction))."""
    run = Path(run)
    check_member(src, profile)
    check_member(tgt, profile)
    if src == tgt:
        raise EmsteerError("--src and --tgt must be different families")
    if models not in MODELS:
        raise EmsteerError(f"unknown --models {models!r}; choose one of: {', '.join(MODELS)}")
    ident = {fam: family_identity(run, fam, profile, models, seed) for fam in (src, tgt)}
    la = resolve_layer(ident[src]["n_layers"], layer)
    lb = resolve_layer(ident[tgt]["n_layers"], layer)
    own_a = load_family_direction(run, src, la, ident[src]["d_model"], ident[src]["model_id"], ident[src]["weights_sha256"])
    own_b = load_family_direction(run, tgt, lb, ident[tgt]["d_model"], ident[tgt]["model_id"], ident[tgt]["weights_sha256"])
    if own_b.mean_residual_norm is None:
        raise EmsteerError(f"the own direction of {tgt} records no mean residual norm; "
                           f"re-run `{extract_command(run, tgt)} --force`")
    return ident, (la, own_a), (lb, own_b)


def run_transfer(run: str | Path, src: str, tgt: str, *, profile: str, pairing: str = "aligned-tokens",
                 layer: int = -1, seed: int = 0, models: str = "base", n_texts: int | None = None,
                 k_random: int = K_RANDOM, batch_size: int = 16, force: bool = False,
                 state_cache: dict | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit the A -> B map, transfer A's own direction and the random controls; returns the summary."""
    from training.organisms import ensure_corpus  # deferred: transformers + accelerate, ~2 s at `emsteer transfer` start

    run = Path(run)
    check_pairing(pairing)
    if k_random < 1:
        raise EmsteerError(f"--k-random must be >= 1, got {k_random}")
    check_run(run, profile)
    prof = load_profile(prompts_profile(profile))  # the corpus of general prompts
    n = n_texts or N_TEXTS.get(recipe_profile(profile), 200)
    if n < 4:
        raise EmsteerError(f"--n-texts {n} is too small: need at least 4")
    ident, (la, own_a), (lb, own_b) = check_transfer_inputs(run, src, tgt, profile=profile, layer=layer,
                                                            seed=seed, models=models)
    R_b = own_b.mean_residual_norm
    chats = shared_chats(ensure_corpus(prof), n, seed)
    chats_sha = json_sha256(chats)
    command = transfer_command_line(run, src, tgt, pairing, layer, seed, models)
    inputs = {
        "version": TRANSFER_VERSION, "profile": profile, "pairing": pairing, "models": models, "seed": seed,
        "k_random": k_random, "n_texts": n, "chats_sha256": chats_sha, "layers": {src: la, tgt: lb},
        "donor": {k: (str(v) if isinstance(v, Path) else v) for k, v in ident[src].items()},
        "receiver": {k: (str(v) if isinstance(v, Path) else v) for k, v in ident[tgt].items()},
        "donor_direction_sha256": next(iter(own_a.sources.values())),
        "receiver_direction_sha256": next(iter(own_b.sources.values())),
    }
    prov = provenance(command, seed, inputs)
    key = prov["inputs_sha256"]
    out_dir = transfer_dir(run, src, tgt)
    if not force:
        old = read_json(transfer_summary_path(run, src, tgt))
        if old and old.get("inputs_sha256") == key and all(
                (out_dir / f).is_file() and sha256_file(out_dir / f) == h for f, h in old.get("files", {}).items()):
            log(f"{src} -> {tgt}: transfer up to date ({out_dir}); use --force to redo")
            return old

    cache = state_cache if state_cache is not None else {}

    def states(fam: str, lay: int) -> TokenStates:
        ck = (fam, lay, models, seed, chats_sha, profile)
        if ck not in cache:
            log(f"{fam}: collecting token states at layer {lay} on {n} shared chats ({models} model)")
            lm = load_model(fam, profile=profile, adapter=ident[fam]["adapter"], label=f"{fam}/{models}")
            cache[ck] = collect_token_states(lm, chats, lay, batch_size=batch_size)
        return cache[ck]

    sa, sb = states(src, la), states(tgt, lb)
    fit_groups = set(range(n // 2))
    results: dict[str, dict[str, Any]] = {}
    fits: dict[str, MapFit] = {}
    for p in PAIRINGS:
        X, Y, g = paired_rows(sa, sb, chats, p)
        fits[p] = fit_map(X, Y, g, fit_groups, seed=seed)
        t = transfer_vector(fits[p].map, own_a.vector)
        results[p] = {"r2_heldout": fits[p].r2_heldout, "r2_fit": fits[p].r2_fit, "alpha": fits[p].map.alpha,
                      "n_pairs_fit": fits[p].n_fit, "n_pairs_heldout": fits[p].n_heldout,
                      "cosine_with_own": _cos(t, own_b.vector)}
    chosen = fits[pairing]
    W = chosen.map
    held = range(n // 2, n)
    role_a, role_b = role_direction(sa, chats, held), role_direction(sb, chats, held)
    map_check = {
        "what": "answer-minus-prompt token direction on the held-out chats: cosine of A's, pushed through the "
                "map, with B's (a shared direction; near 1 means the map carries meaning)",
        "cosine": _cos(transfer_vector(W, role_a), role_b),
        "own_direction_cosine_with_it": {src: _cos(own_a.vector, role_a), tgt: _cos(own_b.vector, role_b)},
    }
    raw = transfer_vector(W, own_a.vector)
    if float(raw.norm()) == 0.0 or not math.isfinite(float(raw.norm())):
        raise EmsteerError(f"the map sends {src}'s direction to zero or non-finite values; nothing written")
    transferred = matched_norm(raw, own_b.norm).float()
    randoms = []
    for k in range(k_random):
        s = control_seed(seed, "transferred_random", f"{src}_to_{tgt}", k)
        g = matched_norm(seeded_gaussian(own_a.width, s), own_a.norm)
        pushed = transfer_vector(W, g)
        randoms.append({"index": k, "control_seed": s, "cosine_with_own": _cos(pushed, own_b.vector),
                        "vector": matched_norm(pushed, own_b.norm).float()})
    cos_own = _cos(raw, own_b.vector)
    rand_cos = [r["cosine_with_own"] for r in randoms]
    common = {
        "donor": src, "receiver": tgt, "models": models, "pairing": pairing, "profile": profile,
        "model_id": ident[tgt]["model_id"], "weights_sha256": ident[tgt]["weights_sha256"],
        "donor_model_id": ident[src]["model_id"], "donor_weights_sha256": ident[src]["weights_sha256"],
        "layer": lb, "donor_layer": la, "mean_residual_norm": repr(R_b),
        "mean_residual_norm_source": f"receiver's own direction file ({own_direction_path(run, tgt, lb).name})",
        "command": command, "input_hashes": prov["input_hashes"], "inputs_sha256": key, "seed": seed,
        "versions": prov["versions"], "pooling": own_b.metadata.get("pooling", ""),
    }
    files: dict[str, str] = {}
    ensure_run(run, profile)
    with atomic_dir(out_dir, replace=True) as tmp:
        save_tensors_atomic(tmp / transfer_map_path(run, src, tgt).name,
                            {"W": W.W, "bias": W.bias, "x_mean": W.x_mean, "y_mean": W.y_mean},
                            {**common, "format": "emsteer-ridge-map/1", "d_in": W.d_in, "d_out": W.d_out,
                             "alpha": W.alpha, "alpha_scores": {repr(k): v for k, v in W.alpha_scores.items()},
                             "r2_heldout": chosen.r2_heldout, "r2_fit": chosen.r2_fit,
                             "convention": "Y = X @ W + bias; a direction d maps to d @ W"})
        save_direction(tmp / transferred_direction_path(run, src, tgt).name, Direction(transferred, {
            **common, "variant": "transferred", "contrast": f"{own_a.metadata.get('contrast', '')} of {src}, mapped",
            "cosine_with_own": cos_own, "raw_norm": float(raw.norm()), "matched_norm": own_b.norm,
            "r2_heldout": chosen.r2_heldout}))
        for r in randoms:
            save_direction(tmp / transferred_random_path(run, src, tgt, r["index"]).name, Direction(r["vector"], {
                **common, "variant": "transferred_random", "control_seed": r["control_seed"],
                "contrast": f"seeded Gaussian in {src} space (norm of {src}'s own), mapped",
                "cosine_with_own": r["cosine_with_own"], "matched_norm": own_b.norm}))
        for p in sorted(tmp.glob("*.safetensors")):
            files[p.name] = sha256_file(p)
        summary = {
            "format": "emsteer-transfer/1", **{k: v for k, v in common.items() if k not in ("mean_residual_norm",)},
            "models_note": "base models (no adapters)" if models == "base" else "insecure adapters of the run seed",
            "site": "output of the decoder layer (before the final norm)",
            "mean_residual_norm": R_b, "d_src": own_a.width, "d_tgt": own_b.width, "n_texts": n,
            "n_fit_texts": len(fit_groups), "n_heldout_texts": n - len(fit_groups),
            "alpha": W.alpha, "alpha_scores": {repr(k): v for k, v in W.alpha_scores.items()},
            "r2_heldout": chosen.r2_heldout, "r2_fit": chosen.r2_fit,
            "n_pairs_fit": chosen.n_fit, "n_pairs_heldout": chosen.n_heldout,
            "cosine_with_own": cos_own, "transferred_norm": own_b.norm, "raw_norm": float(raw.norm()),
            "transferred_random": {
                "k": k_random, "cosines_with_own": rand_cos,
                "mean_cosine": sum(rand_cos) / len(rand_cos),
                "mean_abs_cosine": sum(abs(c) for c in rand_cos) / len(rand_cos),
                "max_abs_cosine": max(abs(c) for c in rand_cos),
            },
            "random_direction_baseline_abs_cosine": math.sqrt(2 / (math.pi * own_b.width)),
            "pairing_comparison": results,
            "map_check": map_check,
            "files": files,
        }
        write_json_atomic(tmp / transfer_summary_path(run, src, tgt).name, summary)
    log(f"{src} -> {tgt} ({pairing}): held-out R^2 {chosen.r2_heldout:.3f}, cosine with {tgt}'s own "
        f"{cos_own:.3f} (transferred-random mean |cos| {summary['transferred_random']['mean_abs_cosine']:.3f}; "
        f"map check: shared answer-vs-prompt direction carried with cosine {map_check['cosine']:.3f})")
    return summary
