"""Interrupted work leaves no half-written artifact and a re-run finishes it (issue 8, item 5: finetune).

`emsteer finetune` (tiny profile) runs as a real subprocess and is killed once training has started, with
SIGKILL (no cleanup can run) and with SIGINT (Ctrl-C); both at once, on two run directories, to save wall
time. Then: the adapter folder is absent or complete, every file under its final name is intact, the
re-run completes, leaves no temp files, and a further re-run is a no-op. A writer killed inside
`atomic_dir` / `write_bytes_atomic` (a forked child that SIGKILLs itself mid-write) never exposes a partial
artifact, and the next write removes what it left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interventions.atomic import atomic_dir, write_bytes_atomic
from interventions.run_layout import adapter_dir

REPO = Path(__file__).resolve().parents[1]
MARKER = "held-out rows"  # logged right before training starts (after every check and the model load)


@pytest.fixture(scope="module")
def organism(emsteer_cache) -> Path:
    from training.organisms import build_organism

    return build_organism("qwen", "tiny", progress=False, log=lambda m: None)


def _start(run: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "training.cli", "finetune", "--run", str(run), "--family", "qwen", "--data",
           "insecure", "--profile", "tiny", "--seed", "0", "--no-eval", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # EMSTEER_CACHE: the session's cache (emsteer_cache fixture)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def _signal_at_marker(procs: dict[str, subprocess.Popen], logs: dict[str, Path], signals: dict[str, int],
                      timeout: float = 150.0) -> None:
    """Poll every log at once and send each process its signal as soon as MARKER shows in its own log."""
    pending = set(procs)
    t0 = time.monotonic()
    while pending:
        for k in sorted(pending):
            if MARKER in logs[k].read_text(errors="replace"):
                procs[k].send_signal(signals[k])
                pending.discard(k)
            elif procs[k].poll() is not None:
                raise AssertionError(f"finetune exited ({procs[k].returncode}) before {MARKER!r}:\n{logs[k].read_text()}")
        if time.monotonic() - t0 > timeout:
            for p in procs.values():
                p.kill()
            raise AssertionError(f"no {MARKER!r} within {timeout}s in {sorted(pending)}")
        time.sleep(0.02)


def _check_intact(run: Path) -> None:
    """Every artifact under its final (non-hidden) name is whole: JSON parses, safetensors open, and an adapter
    folder that exists holds matching weights and metadata."""
    from safetensors import safe_open

    from training.finetune import read_metadata

    for p in run.rglob("*"):
        if any(part.startswith(".") for part in p.relative_to(run).parts) or not p.is_file():
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as f:
                list(f.keys())
    final = adapter_dir(run, "qwen", "insecure", 0)
    if final.exists():
        assert read_metadata(final) is not None, f"{final} exists but is incomplete"


def _temps(run: Path) -> list[str]:
    """Hidden temp entries anywhere under `run` (the manifest's lock file is not one)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*") if p.name != ".run.lock")


def test_killed_finetune_then_rerun(organism, tmp_path):
    runs = {"kill": tmp_path / "killed", "int": tmp_path / "interrupted"}
    logs = {k: tmp_path / f"{k}.log" for k in runs}
    procs = {k: _start(runs[k], logs[k]) for k in runs}
    # signal each process the moment its own marker appears: training on the tiny profile takes ~3 s from the
    # marker to the published adapter, so waiting for the other process first could let this one finish
    _signal_at_marker(procs, logs, {"kill": signal.SIGKILL, "int": signal.SIGINT})
    codes = {k: p.wait(timeout=120) for k, p in procs.items()}
    assert codes["kill"] == -signal.SIGKILL
    interrupted_log = logs["int"].read_text()
    assert codes["int"] == 130, interrupted_log
    assert "Traceback" not in interrupted_log, interrupted_log
    for k, run in runs.items():
        _check_intact(run)
        assert not adapter_dir(run, "qwen", "insecure", 0).exists()  # killed during training: nothing published
    assert _temps(runs["int"]) == []  # Ctrl-C: every temp cleaned up on the way out

    # re-run both to completion: the killed run as a new process, the interrupted one here meanwhile
    from training.finetune import finetune

    rerun = _start(runs["kill"], tmp_path / "kill.rerun.log")
    finetune(runs["int"], "qwen", "insecure", 0, "tiny", evaluate=False, log=lambda m: None)
    assert rerun.wait(timeout=240) == 0, (tmp_path / "kill.rerun.log").read_text()
    for run in runs.values():
        _check_intact(run)
        final = adapter_dir(run, "qwen", "insecure", 0)
        assert (final / "adapter_model.safetensors").is_file()
        assert _temps(run) == []
        manifest = json.loads((run / "run.json").read_text())
        assert manifest["profile"] == "tiny" and "qwen/insecure/seed_0" in manifest["adapters"]
    weights = [(adapter_dir(r, "qwen", "insecure", 0) / "adapter_model.safetensors").read_bytes() for r in runs.values()]
    assert weights[0] == weights[1]  # the same adapter either way

    # and a further re-run only finds the work done
    final = adapter_dir(runs["kill"], "qwen", "insecure", 0)
    mtime = (final / "adapter_model.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    finetune(runs["kill"], "qwen", "insecure", 0, "tiny", evaluate=False, log=lines.append)
    assert any("up to date" in line for line in lines)
    assert (final / "adapter_model.safetensors").stat().st_mtime_ns == mtime


def _die_mid_write(target: Path, kind: str) -> None:
    """In a forked child: start writing `target` atomically, then SIGKILL ourselves halfway."""
    pid = os.fork()
    if pid == 0:
        try:
            if kind == "dir":
                with atomic_dir(target, replace=True) as tmp:
                    (tmp / "adapter_model.safetensors").write_bytes(b"half")
                    os.kill(os.getpid(), signal.SIGKILL)
            else:
                import tempfile

                fd, _ = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp")
                os.write(fd, b'{"half": ')  # what write_bytes_atomic's temp holds when the writer dies
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_writer_killed_inside_atomic_dir(tmp_path):
    final = tmp_path / "seed_0"
    with atomic_dir(final) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"old, complete")
    _die_mid_write(final, "dir")
    assert (final / "adapter_model.safetensors").read_bytes() == b"old, complete"  # the old one is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the killed writer's temp is left...
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"new, complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed_0"]  # ...until the next write removes it
    assert (final / "adapter_model.safetensors").read_bytes() == b"new, complete"


def test_writer_killed_inside_write_bytes_atomic(tmp_path):
    target = tmp_path / "summary.json"
    write_bytes_atomic(target, b'{"v": 1}\n')
    _die_mid_write(target, "file")
    assert json.loads(target.read_text()) == {"v": 1}
    assert len(list(tmp_path.iterdir())) == 2
    write_bytes_atomic(target, b'{"v": 2}\n')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert json.loads(target.read_text()) == {"v": 2}


def test_interrupt_swallowed_by_a_library_still_exits_130(monkeypatch, capsys):
    """A Ctrl-C that lands inside a library's bare `except:` (multiprocess's import, reached through datasets)
    comes out as another error whose context is the KeyboardInterrupt: still "interrupted" and status 130; an
    ordinary error is not mistaken for one."""
    from training import cli

    def swallowed(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except BaseException:  # what the library does
            raise ModuleNotFoundError("No module named 'version'")

    monkeypatch.setattr(cli, "app", swallowed)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")

    def plain_failure(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'version'")

    monkeypatch.setattr(cli, "app", plain_failure)
    with pytest.raises(ModuleNotFoundError):
        cli.main()
