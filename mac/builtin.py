"""Compatibility name: the built-in model now lives in trainer.builtin_model (one owner for the trainer
and the workstation). Kept only until mac/validate_job.py and mac/mlx_cli.py import it from there."""

from __future__ import annotations

from trainer.builtin_model import (
    BuiltinModelError,
    gguf_location,
    is_builtin,
    load_config,
    load_model,
    load_tokenizer,
    materialize,
)

__all__ = ["BuiltinModelError", "gguf_location", "is_builtin", "load_config", "load_model", "load_tokenizer",
           "materialize"]
