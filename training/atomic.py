"""Atomic writes for training code: re-exported from `interventions.atomic`, the one implementation (evals
and training both write artifacts, and evals may not import training)."""

from interventions.atomic import (atomic_dir, ensure_writable_dir, write_bytes_atomic,
                                 write_json_atomic, write_jsonl_atomic, write_text_atomic)

__all__ = ["atomic_dir", "ensure_writable_dir", "write_bytes_atomic", "write_json_atomic", "write_jsonl_atomic", "write_text_atomic"]
