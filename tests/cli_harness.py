"""Run many `emsteer` / `inspect` command lines as real child processes, cheaply.

Starting Python with torch, transformers and Inspect costs several CPU-seconds per command, too much for
dozens of bad-input cases on a 2-core machine. So `run_commands` starts ONE driver subprocess
(`python tests/cli_harness.py`) that imports those libraries once and then `fork()`s a fresh child per
command line: each child has its own stdout/stderr files (file descriptors 1 and 2), its own exit status,
and runs the real console entry point (`training.cli.main` or Inspect's `inspect_ai._cli.main.main`) with
the interpreter's top-level behaviour emulated (an uncaught exception goes through `sys.excepthook`, exit
status 1). Each child also records whether any model weights were loaded: `from_pretrained` of
transformers models and peft adapters is wrapped to write a marker before it runs.

`run_commands(cases, env=..., cwd=...)` -> one `CliResult` per case (exit code, stdout, stderr, seconds,
weights_loaded). A case is {"entry": "emsteer" | "inspect", "argv": [...]}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_MARKER_ENV = "EMSTEER_TEST_WEIGHTS_MARKER"


@dataclass
class CliResult:
    """What one command line did."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float
    weights_loaded: bool

    @property
    def stderr_lines(self) -> list[str]:
        """Non-empty stderr lines (progress-bar carriage returns split too)."""
        return [ln for ln in self.stderr.replace("\r", "\n").splitlines() if ln.strip()]

    def describe(self) -> str:
        """A readable summary for assertion messages."""
        return (f"argv={self.argv}\ncode={self.code} seconds={self.seconds:.2f} weights_loaded={self.weights_loaded}"
                f"\n--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}")


def run_commands(cases: list[dict[str, Any]], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 170.0, warmup: list[dict[str, Any]] | None = None) -> list[CliResult]:
    """Run `cases` in one driver subprocess (fork per case); see the module docstring. `warmup` cases run
    first inside the driver itself (output discarded) so that the imports they trigger happen only once."""
    with tempfile.TemporaryDirectory(prefix="cli-harness-") as tmp:
        spec = Path(tmp) / "cases.json"
        out = Path(tmp) / "results.json"
        spec.write_text(json.dumps({"cases": cases, "workdir": tmp, "warmup": warmup or []}))
        full_env = dict(os.environ if env is None else env)
        full_env.setdefault("OMP_NUM_THREADS", "1")
        full_env["COLUMNS"] = "400"  # no rich line wrapping in what we compare
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p)
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(spec), str(out)],
                              cwd=str(cwd or REPO), env=full_env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"cli harness driver failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return [CliResult(**r) for r in json.loads(out.read_text())]


# ------------------------------------------------------------------------------------------- the driver

def _mark_weight_loads() -> None:
    """Wrap the `from_pretrained` that load weights so that a call leaves a marker file first."""
    import transformers
    from peft import PeftModel

    def wrap(owner: type, name: str) -> None:
        original = owner.__dict__[name].__func__

        def marked(cls: type, *args: Any, **kwargs: Any) -> Any:
            marker = os.environ.get(WEIGHTS_MARKER_ENV)
            if marker:
                Path(marker).write_text(f"{cls.__name__}.{name}")
            return original(cls, *args, **kwargs)

        setattr(owner, name, classmethod(marked))

    wrap(transformers.PreTrainedModel, "from_pretrained")
    wrap(PeftModel, "from_pretrained")
    # AutoModel* classes have their own from_pretrained that dispatches to the concrete class (marked above)


def _entry(name: str):
    if name == "emsteer":
        from training.cli import main
        return main
    if name == "inspect":
        from inspect_ai._cli.main import main
        return main
    raise ValueError(f"unknown entry {name!r}")


def _child(case: dict[str, Any], stdout: str, stderr: str, marker: str) -> None:
    """In the forked child: redirect fds 1/2, run the entry point like the interpreter would, never return."""
    code = 1
    try:
        for fd, path in ((1, stdout), (2, stderr)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        os.environ[WEIGHTS_MARKER_ENV] = marker
        os.environ.update(case.get("env") or {})
        if case.get("cwd"):
            os.chdir(case["cwd"])
        prog = "emsteer" if case["entry"] == "emsteer" else "inspect"
        sys.argv = [prog, *case["argv"]]
        fn = _entry(case["entry"])
        try:
            fn()
            code = 0
        except SystemExit as e:
            code = _exit_code(e)
        except BaseException as e:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            try:
                sys.excepthook(type(e), e, e.__traceback__)
                code = 1
            except SystemExit as e2:
                code = _exit_code(e2)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def _warm(case: dict[str, Any], workdir: Path) -> None:
    """Run `case` in the parent with its output discarded, only so that its imports are done before forking."""
    import contextlib
    import io
    import threading

    saved = sys.argv
    sys.argv = ["emsteer" if case["entry"] == "emsteer" else "inspect", *case["argv"]]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            _entry(case["entry"])()
    except BaseException:  # noqa: BLE001 - a warm-up is expected to fail (bad input)
        pass
    finally:
        sys.argv = saved
    extra = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if extra:
        raise RuntimeError(f"warm-up left threads running (unsafe to fork): {extra}")


def _driver(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    workdir = Path(spec["workdir"])
    # import once in the parent; every child inherits them
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import inspect_ai._cli.main  # noqa: F401
    import inspect_ai._cli.eval  # noqa: F401
    import inspect_ai._eval.eval  # noqa: F401
    import inspect_ai._eval.loader  # noqa: F401
    import peft  # noqa: F401
    import training.cli  # noqa: F401
    import interventions.provider  # noqa: F401
    import evals.spillover  # noqa: F401
    import evals.misalignment  # noqa: F401
    from inspect_ai._util.entrypoints import ensure_entry_points

    ensure_entry_points()  # the `steer` provider's registration, once

    for case in spec.get("warmup", []):  # import what the cases will import, once, in the parent
        _warm(case, workdir)
    _mark_weight_loads()
    results = []
    for i, case in enumerate(spec["cases"]):
        stdout, stderr, marker = (str(workdir / f"{i}.{s}") for s in ("out", "err", "weights"))
        sys.stdout.flush()
        sys.stderr.flush()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(case, stdout, stderr, marker)
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - t0
        code = os.waitstatus_to_exitcode(status)
        results.append({"argv": [case["entry"], *case["argv"]], "code": code, "seconds": seconds,
                        "stdout": Path(stdout).read_text(errors="replace") if Path(stdout).exists() else "",
                        "stderr": Path(stderr).read_text(errors="replace") if Path(stderr).exists() else "",
                        "weights_loaded": Path(marker).exists()})
    Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    _driver(sys.argv[1], sys.argv[2])
