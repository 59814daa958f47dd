"""The README's "first ten minutes" commands, run verbatim on the tiny profile (`inspect view` excepted)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def first_ten_minutes_commands() -> list[str]:
    """The commands of the README's "The first ten minutes" bash block."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The first ten minutes", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the section has no bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_first_ten_minutes_run_verbatim(tiny_organisms, tmp_path) -> None:
    from inspect_ai.log import list_eval_logs, read_eval_log

    commands = first_ten_minutes_commands()
    assert commands[0] == "emsteer reproduce --profile tiny --out runs/tiny" and commands[-1] == "inspect view"
    (tmp_path / "evals").symlink_to(REPO / "evals")  # the commands name evals/spillover.py from the repo root
    env = {**os.environ, "INSPECT_LOG_DIR": str(tmp_path / "logs")}
    for command in commands[:-1]:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        if command.startswith("emsteer reproduce"):
            assert done.stderr.startswith("plan: profile tiny, grid tiny") and "estimate: ~" in done.stderr
    summary = (tmp_path / "runs" / "tiny" / "report" / "tables.md").read_text()
    assert "smoke test: not evidence" in summary
    logs = list_eval_logs(str(tmp_path / "logs"))
    assert len(logs) == 1
    log = read_eval_log(logs[0], header_only=True)
    assert log.status == "success" and log.results.total_samples == 10
    head = log.eval.metadata["steer"]
    assert head["variant"] == "own" and head["profile"] == "tiny" and head["alpha_source"].endswith("qwen.json")
