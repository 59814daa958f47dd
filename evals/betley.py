"""Questions files in the Betley et al. emergent-misalignment YAML format, from a path or a URL.

The format: a YAML list of questions, each a mapping with `id`, a list of `paraphrases`, and optionally
`system` (a system prompt), `samples_per_paraphrase`, `type`, `judge` and `judge_prompts` (a mapping
of metric name -> judge prompt with `{question}` and `{answer}` placeholders). Ids ending in `_json`
are the JSON-system-prompt format, ids ending in `_template` the fill-in-template format, all others
plain.

A URL is downloaded once into `$EMSTEER_CACHE/data/betley/` (size limit, content check, atomic
write) and read from there afterwards, so later runs and re-scoring work offline.

Nothing of the questions or prompts themselves lives in this project: they are read at run time.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
import yaml

from interventions.atomic import write_bytes_atomic
from interventions.errors import EmsteerError
from interventions.paths import cache_root

__all__ = [
    "DEFAULT_QUESTIONS_URL", "FORMATS", "Question", "question_format", "base_question", "sample_id",
    "parse_questions", "read_questions", "resolve_questions", "fetch_questions", "cached_path_for",
    "file_sha256", "MAX_DOWNLOAD_BYTES",
]

DEFAULT_QUESTIONS_URL = (
    "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/main/"
    "evaluation/first_plot_questions.yaml")
FORMATS: tuple[str, ...] = ("plain", "json", "template")
MAX_DOWNLOAD_BYTES = 2_000_000  # the upstream files are ~10-20 kB
DOWNLOAD_TIMEOUT_S = 30.0
JUDGE_METRICS: tuple[str, ...] = ("aligned", "coherent")


@dataclass(frozen=True)
class Question:
    """One question of a Betley-format file."""

    id: str
    paraphrases: tuple[str, ...]
    system: str | None = None
    samples_per_paraphrase: int | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return question_format(self.id)

    @property
    def base(self) -> str:
        return base_question(self.id)


def question_format(question_id: str) -> str:
    """plain | json | template, from the id's suffix (`_json`, `_template`)."""
    if question_id.endswith("_json"):
        return "json"
    if question_id.endswith("_template"):
        return "template"
    return "plain"


def base_question(question_id: str) -> str:
    """The id without its format suffix: the three formats of one question share it."""
    for suffix in ("_json", "_template"):
        if question_id.endswith(suffix):
            return question_id[: -len(suffix)]
    return question_id


def sample_id(question_id: str, index: int, n_paraphrases: int) -> str:
    """`qid` for a single paraphrase, else `qid-<index>`."""
    return question_id if n_paraphrases == 1 else f"{question_id}-{index}"


# --- parsing -------------------------------------------------------------------------------------


def parse_questions(text: str, where: str, *, require_judge: bool = False) -> list[Question]:
    """Parse Betley-format YAML text; `where` names the source in error messages.

    With `require_judge`, every question needs `judge_prompts` with `aligned` and `coherent` prompts
    that contain an `{answer}` placeholder."""
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EmsteerError(f"{where}: unreadable YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(entries, list):
        raise EmsteerError(f"{where}: expected a list of questions (Betley EM format: id, paraphrases)")
    questions: list[Question] = []
    seen: set[str] = set()
    for k, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("paraphrases"), list):
            raise EmsteerError(f"{where}: question {k} needs an 'id' and a list of 'paraphrases'")
        qid = str(entry["id"]).strip()
        if not qid:
            raise EmsteerError(f"{where}: question {k} has an empty 'id'")
        if qid in seen:
            raise EmsteerError(f"{where}: duplicate question id {qid!r}")
        seen.add(qid)
        paraphrases = tuple(p for p in entry["paraphrases"] if isinstance(p, str) and p.strip())
        if require_judge and not paraphrases:
            raise EmsteerError(f"{where}: question {k} ({qid!r}) has no non-empty paraphrases")
        system = entry.get("system") if isinstance(entry.get("system"), str) and entry.get("system") else None
        spp = entry.get("samples_per_paraphrase")
        if spp is not None and (isinstance(spp, bool) or not isinstance(spp, int) or spp < 1):
            if require_judge:
                raise EmsteerError(f"{where}: question {k} ({qid!r}): samples_per_paraphrase must be a "
                                   f"positive integer, got {spp!r}")
            spp = None
        prompts_raw = entry.get("judge_prompts")
        judge_prompts: dict[str, str] = {}
        if isinstance(prompts_raw, dict):
            judge_prompts = {str(key): val for key, val in prompts_raw.items() if isinstance(val, str)}
        if require_judge:
            for metric_name in JUDGE_METRICS:
                prompt = judge_prompts.get(metric_name)
                if not prompt or not prompt.strip():
                    raise EmsteerError(f"{where}: question {k} ({qid!r}) has no judge_prompts.{metric_name}")
                if "{answer}" not in prompt:
                    raise EmsteerError(f"{where}: question {k} ({qid!r}): judge_prompts.{metric_name} has no "
                                       "{answer} placeholder")
        questions.append(Question(id=qid, paraphrases=paraphrases, system=system,
                                  samples_per_paraphrase=spp, judge_prompts=judge_prompts))
    if not questions:
        raise EmsteerError(f"{where}: no questions")
    return questions


def read_questions(path: Path | str, *, require_judge: bool = False) -> list[Question]:
    """Read a Betley-format YAML file (see `parse_questions`)."""
    path = Path(path)
    if not path.is_file():
        raise EmsteerError(f"{path}: questions file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EmsteerError(f"{path}: unreadable: {exc}") from None
    return parse_questions(text, str(path), require_judge=require_judge)


# --- URLs and the cache --------------------------------------------------------------------------


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in {"http", "https"}


def cached_path_for(url: str) -> Path:
    """Where the download of `url` is cached: $EMSTEER_CACHE/data/betley/<hash>-<file name>."""
    name = Path(urllib.parse.urlparse(url).path).name or "questions.yaml"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return cache_root() / "data" / "betley" / f"{digest}-{name}"


def _download(url: str, max_bytes: int, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "emsteer"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked
        data = response.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise EmsteerError(f"{url}: larger than {max_bytes} bytes; not a questions file")
    return data


def fetch_questions(url: str, *, require_judge: bool = False, max_bytes: int = MAX_DOWNLOAD_BYTES,
                    timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The cached copy of `url`, downloading it first when there is none.

    The download is checked (size limit, UTF-8, a Betley-format question list) before it is written
    atomically into the cache; a failed or invalid download leaves nothing behind."""
    cached = cached_path_for(url)
    if cached.is_file():
        return cached
    try:
        data = _download(url, max_bytes, timeout)
    except EmsteerError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise EmsteerError(
            f"cannot download questions from {url} ({reason}) and there is no cached copy at {cached}; "
            f"copy the file there or pass -T questions=LOCAL_FILE") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EmsteerError(f"{url}: not UTF-8 text; not a questions file") from None
    parse_questions(text, url, require_judge=require_judge)  # raises on anything but a question list
    write_bytes_atomic(cached, data)
    return cached


def resolve_questions(source: str | Path | None, *, require_judge: bool = False) -> tuple[str, Path]:
    """(`source` as given or the default URL, a local file holding it) for a path or an http(s) URL."""
    if source is None or str(source).strip() == "":
        source = DEFAULT_QUESTIONS_URL
    source = str(source).strip()
    if _is_url(source):
        return source, fetch_questions(source, require_judge=require_judge)
    path = Path(source).expanduser()
    if not path.is_file():
        raise EmsteerError(f"{path}: questions file not found")
    return str(path.resolve()), path.resolve()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
