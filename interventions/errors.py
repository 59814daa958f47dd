"""One exception type for bad input, so every entry point can print a single clear line and exit non-zero.

`emsteer` (training/cli.py) prints an `EmsteerError` itself. Under the `inspect` command line, the steer
provider and the tasks raise inside Inspect, whose top-level hook would print a full traceback:
`install_inspect_cli_hook()` (called when this package is imported and when the provider is built) wraps
that hook so an uncaught `EmsteerError` prints as one line on stderr with exit status 2 instead. It does
nothing outside the `inspect` command line (the Python API, pytest, `emsteer`).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Callable

ERROR_PREFIX = "emsteer: error: "
EXIT_BAD_INPUT = 2


class EmsteerError(ValueError):
    """Bad input or a missing prerequisite, worded for the user (one line, names the problem)."""


def find_emsteer_error(exc: BaseException | None) -> EmsteerError | None:
    """`exc` itself if it is an EmsteerError, else the first one inside an exception group or its causes."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, EmsteerError):
            return e
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        stack.extend([e.__cause__, e.__context__])
    return None


def one_line(message: str) -> str:
    """`message` on one line (newlines folded), as every entry point prints it."""
    return " ".join(str(message).split())


def install_inspect_cli_hook() -> bool:
    """Under the `inspect` CLI, print an uncaught EmsteerError as one stderr line and exit 2 (no traceback).

    Inspect's CLI installs its own `sys.excepthook` at start-up; this wraps it (once). Anywhere else
    (Inspect's own hook not installed) nothing changes. Returns whether the wrapper is in place."""
    inspect_error = sys.modules.get("inspect_ai._util.error")
    if inspect_error is None or not getattr(inspect_error, "_exception_hook_set", False):
        return False
    current: Callable[[type[BaseException], BaseException, TracebackType | None], object] = sys.excepthook
    if getattr(current, "_emsteer_one_line", False):
        return True

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        err = find_emsteer_error(exc)
        if err is None:
            current(kind, exc, tb)
            return
        sys.stdout.flush()
        print(ERROR_PREFIX + one_line(str(err)), file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)

    hook._emsteer_one_line = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    return True
