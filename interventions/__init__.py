"""Everything that touches a residual stream at inference: layer lookup, hooks, direction files,
the registry of intervention variants and the Inspect `steer` provider.

This package imports neither `evals` nor `training` (see docs/ARCHITECTURE.md)."""
