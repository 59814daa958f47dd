"""`interventions.workers.run_in_workers`: results in call order, failures handed to `on_error` (or raised),
`on_done` for every call; the same in this process and on worker processes."""

from __future__ import annotations

import math

import pytest

from interventions.workers import run_in_workers


@pytest.mark.parametrize("jobs", [1, 2])
def test_results_in_order_and_failures_to_on_error(jobs):
    done: list[tuple[int, float]] = []
    out = run_in_workers(math.sqrt, [(4.0,), (-1.0,), (9.0,)], jobs, on_done=lambda i, r: done.append((i, r)),
                         on_error=lambda i, err: -i if isinstance(err, ValueError) else None)
    assert out == [2.0, -1, 3.0]  # sqrt(-1) raised ValueError: on_error gave -1 for call 1
    assert sorted(done) == [(0, 2.0), (1, -1), (2, 3.0)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_without_on_error_the_failure_is_raised(jobs):
    with pytest.raises(ValueError):
        run_in_workers(math.sqrt, [(4.0,), (-1.0,)], jobs)


def test_worker_output_goes_to_its_own_log_file(tmp_path, capfd):
    """With `log_files`, each call's worker output (file descriptors 1 and 2) lands in its own file, never on the
    terminal, and a bad-input error names the log."""
    from interventions.errors import EmsteerError
    from interventions.paths import check_profile

    logs = [tmp_path / "workers" / "a.log", tmp_path / "workers" / "b.log"]
    run_in_workers(print, [("hello from a",), ("hello from b",)], 2, log_files=logs)
    assert [p.read_text() for p in logs] == ["hello from a\n", "hello from b\n"]
    assert "hello from" not in capfd.readouterr().out
    with pytest.raises(EmsteerError, match=r"unknown profile 'zz'.*\(worker log: .*c\.log\)"):
        run_in_workers(check_profile, [("zz",), ("tiny",)], 2, log_files=[tmp_path / "c.log", tmp_path / "d.log"])
