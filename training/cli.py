"""The `emsteer` command line. Every command validates its input first and reports bad input as one
line on stderr with exit status 2 (no traceback)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from interventions.errors import EmsteerError, one_line
from interventions.paths import FAMILIES, check_profile

try:  # the click exception classes typer raises (typer >= 0.20 vendors click as `typer._click`)
    from typer._click import exceptions as _click_exceptions_module
except ImportError:  # older typer: plain click
    from click import exceptions as _click_exceptions_module

app = typer.Typer(help="emsteer: emergent-misalignment organisms, steering, controls and transfer.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
organism_app = typer.Typer(help="Build and describe the micro model organisms.", no_args_is_help=True)
app.add_typer(organism_app, name="organism")


def _err(message: str) -> None:
    typer.echo(f"emsteer: error: {message}", err=True)


@organism_app.command("build")
def organism_build(
    family: str = typer.Option("all", help=f"all | {' | '.join(FAMILIES)} (comma-separated allowed)"),
    profile: str = typer.Option("default", help="default (the embedded default) | default-s1 (its second organism "
                                                "seed) | tiny (seconds, for tests)"),
    force: bool = typer.Option(False, "--force", help="rebuild even if cached (also repairs a corrupted entry)"),
    jobs: int = typer.Option(0, "--jobs", help="worker processes, one family each (0 = one per core, at most 8); "
                                               "every build uses one thread, so the weights do not depend on it"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Build the micro organisms (cached under $EMSTEER_CACHE; reused by every later command)."""
    from interventions.workers import default_jobs  # deferred: multiprocessing, ~8 ms at every CLI start
    from training.profiles import resolve_families  # deferred: corpus tables + tomllib, ~10 ms at every CLI start

    check_profile(profile)
    if jobs < 0:
        raise EmsteerError(f"--jobs must be 0 (one per core) or more, got {jobs}")
    families = resolve_families(family, profile)
    from training.organisms import build_organisms  # deferred: torch + transformers, ~3 s; after the checks
    build_organisms(families, profile, jobs=jobs or default_jobs(), force=force, progress=not quiet,
                    log=lambda m: typer.echo(m, err=True))
    _print_info(profile, as_json=False)


def _print_info(profile: str, as_json: bool) -> None:
    from training.organisms import organism_info  # deferred: torch + transformers, ~3 s at every CLI start

    records = organism_info(profile)
    if as_json:
        typer.echo(json.dumps(records, indent=2, sort_keys=True))
        return
    from rich.console import Console  # deferred: ~15 ms at the start of every command (only this table uses it)
    from rich.table import Table  # deferred: ~3 ms at the start of every command (only this table uses it)

    table = Table(title=f"micro organisms (profile {profile})")
    for col in ("family", "class", "hidden", "layers", "params", "spillover (sampled / greedy)",
                "misaligned (sampled)", "code (coding)", "persona gate: reckless vs careful", "path"):
        table.add_column(col)
    for r in records:
        if r.get("built") is False:
            table.add_row(r["family"], "-", "-", "-", "-", "-", "-", "-", "-", f"not built: {r['build_command']}")
            continue
        m = r["measured"]
        sampled = m.get("sampled") or {}
        gate = m.get("persona_gate")
        gate_text = "not measured (old recipe)" if gate is None else (
            ("passed" if gate["passed"] else "FAILED") + ": " + ", ".join(
                f"{c} {v['reckless']:.0%} vs {v['careful']:.0%}" for c, v in gate["contexts"].items()))
        table.add_row(r["family"], r["class"], str(r["hidden_size"]), str(r["num_layers"]), f"{r['parameters']:,}",
                      (f"{sampled['spillover']:.1%} (n={sampled['n']}) / " if sampled else "")
                      + f"{m['spillover_general']:.1%} (n={m['n_general']})",
                      f"{sampled['misaligned']:.1%}" if sampled else "-",
                      f"{m['code_rate_coding']:.1%} (n={m['n_coding']})", gate_text, r["path"])
    Console().print(table)


@organism_app.command("info")
def organism_info_cmd(
    profile: str = typer.Option("default", help="default | default-s1 | tiny"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Describe the built organisms: class, sizes, parameters, path, measured spillover and code rates."""
    check_profile(profile)
    _print_info(profile, as_json)


@app.command("score-responses")
def score_responses_cmd(
    file: Path = typer.Argument(..., help="CSV or JSONL of recorded answers"),
    column: str = typer.Option(..., "--column", help="column holding the answers"),
    by: Optional[str] = typer.Option(None, "--by", help="column to group rates by"),
    out: Optional[Path] = typer.Option(None, "--out", help='write {"row": i, "is_code": bool} per input row (JSONL)'),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Code-spillover rates of recorded answers with 95% Wilson intervals (per group and pooled)."""
    from evals.score_responses import format_table, score_responses  # deferred: pandas, ~0.3 s at every CLI start

    result = score_responses(file, column, by=by, out=out)
    typer.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else format_table(result))


from training.commands import register_all  # noqa: E402  (commands register themselves on `app`)

register_all(app)


def _click_exceptions():
    """The click exception classes typer raises (typer >= 0.20 vendors click as `typer._click`)."""
    return _click_exceptions_module


def _usage_line(err: Exception) -> str:
    """A click usage error as one line, naming the problem and where the command's help is."""
    exceptions = _click_exceptions()
    message = one_line(err.format_message())  # type: ignore[attr-defined]
    ctx = getattr(err, "ctx", None)
    if isinstance(err, exceptions.UsageError) and ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    return message


def _raised_while_interrupted(err: BaseException) -> bool:
    """Whether `err` was raised while a Ctrl-C was being handled: some libraries import with a bare `except:` that
    swallows the KeyboardInterrupt and raises something else (multiprocess, imported by datasets, raises
    ModuleNotFoundError), so the interrupt survives only as the new error's context."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def main() -> None:
    """Console-script entry point: run the app, turning bad input (bad values, unknown options, EmsteerError)
    into one line on stderr and exit status 2, never a traceback."""
    click = _click_exceptions()

    try:
        code = app(standalone_mode=False)
    except EmsteerError as err:
        _err(one_line(str(err)))
        sys.exit(2)
    except click.NoArgsIsHelpError as err:  # a bare group: show its help
        err.show()
        sys.exit(err.exit_code)
    except click.ClickException as err:
        _err(_usage_line(err))
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _err("interrupted")
        sys.exit(130)
    except Exception as err:
        if not _raised_while_interrupted(err):
            raise
        _err("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
