"""Model → MLX: a Hub or local transformers model, or the built-in GGUF, into a folder mlx-lm loads.

mlx-lm reads a handful of config keys that transformers 5 moved: `rope_theta` now lives in
`rope_parameters` and mlx-lm's llama silently falls back to 10000 without a top-level copy (SmolLM2
needs 100000). The source config is fixed in a staging folder (the source is never touched) and the
written MLX config is checked again afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainer import builtin_model
from trainer.errors import BadInput

SOURCE_FILE = "ft_source.json"


class ConvertError(BadInput):
    """The model or the options cannot be converted as given (no such folder, bad bits, an existing output)."""


def fix_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config with the keys mlx-lm reads restored at the top level; returns (config, changes)."""
    out = dict(config)
    changes: list[str] = []
    for holder in (out, out.get("text_config")):
        if not isinstance(holder, dict):
            continue
        params = holder.get("rope_parameters")
        if not isinstance(params, dict):
            continue
        if "rope_theta" in params and "rope_theta" not in holder:
            holder["rope_theta"] = params["rope_theta"]
            changes.append(f"rope_theta = {params['rope_theta']:g} (from rope_parameters)")
        rope_type = params.get("rope_type", params.get("type"))
        if rope_type not in (None, "default") and not holder.get("rope_scaling"):
            holder["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
            changes.append(f"rope_scaling = {rope_type} (from rope_parameters)")
        if "partial_rotary_factor" in params and "partial_rotary_factor" not in holder:
            holder["partial_rotary_factor"] = params["partial_rotary_factor"]
            changes.append("partial_rotary_factor (from rope_parameters)")
    if "torch_dtype" not in out and "dtype" in out:
        out["torch_dtype"] = out["dtype"]  # mlx-lm's convert picks its dtype from torch_dtype
    for key in ("quantization_config",):
        qc = out.get(key)
        if isinstance(qc, dict) and qc.get("quant_method") == "gguf":
            out.pop(key)
            changes.append("dropped the GGUF quantization marker")
    return out, changes


def _local_source(model: str, revision: str | None) -> Path:
    if builtin_model.is_builtin(model):
        return builtin_model.materialize()
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ConvertError(f"{path}: no config.json; not a transformers model folder")
        return path
    if model.startswith((".", "/", "~")):
        raise ConvertError(f"{model}: no such folder")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(
        model, revision=revision,
        allow_patterns=["*.json", "*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"],
    ))


def _stage(src: Path, staging: Path) -> list[str]:
    """Link every file of `src` into `staging` except config.json, which is written fixed."""
    for item in src.iterdir():
        if item.name != "config.json":
            (staging / item.name).symlink_to(item.resolve())
    config, changes = fix_config(json.loads((src / "config.json").read_text()))
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    return changes


def convert_model(model: str, out: Path, quantize: int | None = None, group_size: int = 64,
                  dtype: str | None = None, revision: str | None = None, force: bool = False) -> dict[str, Any]:
    """Convert `model` (Hub id, local folder or `builtin:smollm2-135m`) into the MLX folder `out`.

    quantize: bits (2, 3, 4, 6, 8) for an affine-quantized model; dtype: float32/bfloat16/float16
    for the unquantized weights (default: the source's; fp32 is best on a CPU).
    Returns what was done (also written to `out/ft_source.json`).
    """
    from mlx_lm.convert import convert

    out = Path(out)
    if out.exists():
        if not force:
            raise ConvertError(f"{out} already exists (pass --force to replace it)")
        shutil.rmtree(out)
    if quantize is not None and quantize not in (2, 3, 4, 5, 6, 8):
        raise ConvertError(f"--quantize {quantize}: MLX quantizes to 2, 3, 4, 5, 6 or 8 bits")
    src = _local_source(model, revision)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ft-mlx-stage-") as staging, \
            tempfile.TemporaryDirectory(prefix=".ft-mlx-", dir=out.parent) as tmp_root:
        changes = _stage(src, Path(staging))
        tmp_out = Path(tmp_root) / "model"
        convert(staging, str(tmp_out), quantize=quantize is not None, q_bits=quantize,
                q_group_size=group_size if quantize is not None else None, dtype=dtype)
        written = json.loads((tmp_out / "config.json").read_text())
        fixed, late = fix_config(written)
        if late:
            (tmp_out / "config.json").write_text(json.dumps(fixed, indent=4))
        info = {"source": model, "source_path": str(src), "quantize_bits": quantize,
                "group_size": group_size if quantize is not None else None, "dtype": dtype,
                "config_fixes": changes + late, "model_type": fixed.get("model_type"),
                "rope_theta": fixed.get("rope_theta")}
        (tmp_out / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp_out, out)
    return info
