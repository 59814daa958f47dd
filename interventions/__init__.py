"""Everything that touches a residual stream at inference: layer lookup, hooks, direction files,
the registry of intervention variants and the Inspect `steer` provider.

This package imports neither `evals` nor `training` (see docs/ARCHITECTURE.md)."""

from interventions.errors import install_inspect_cli_hook as _install_inspect_cli_hook

# under the `inspect` command line, bad input (EmsteerError) prints one line instead of a traceback
_install_inspect_cli_hook()
