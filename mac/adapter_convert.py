"""LoRA adapters between mlx-lm and PEFT, both directions, exactly.

mlx-lm:  `adapters.safetensors` with `model.layers.N.self_attn.q_proj.lora_a` (in, r) and `.lora_b`
         (r, out); `adapter_config.json` with `num_layers` (the last N blocks) and
         `lora_parameters: {rank, scale, dropout, keys}`;  y = Wx + scale · (x·A)·B
PEFT:    `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight` (r, in) and
         `.lora_B.weight` (out, r); `adapter_config.json` with r, lora_alpha, target_modules,
         layers_to_transform;  y = Wx + (alpha / r) · B·A·x   (alpha / √r with rslora)

So A and B are transposed, `lora_alpha = scale × r`, the keys become target modules and the last
`num_layers` blocks become `layers_to_transform`. Nothing here needs mlx: tensors go through torch,
so the trainer's image can convert too. Module names are the same on both sides for the text
models mlx-lm ports from transformers (llama, qwen2, mistral, phi3, gemma, ...).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from trainer import builtin_model
from trainer.errors import BadInput

MLX_WEIGHTS = "adapters.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
_MLX_NAME = re.compile(r"^(?P<module>.+)\.(?P<leaf>lora_a|lora_b)$")
_PEFT_NAME = re.compile(r"^(?P<module>.+)\.(?P<leaf>lora_A|lora_B)(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"^(?P<stem>(?:.*\.)?(?P<pattern>[^.]+))\.(?P<idx>\d+)\.(?P<rel>.+)$")


class AdapterConvertError(BadInput):
    """An adapter (or its base model's config) that does not convert: the message names the file and why."""


# ----------------------------------------------------------------------------------- helpers
def base_config(base: str) -> dict[str, Any]:
    """The base model's config.json as a dict: local folder (transformers or MLX) or the built-in."""
    if builtin_model.is_builtin(base):
        return builtin_model.load_config().to_dict()
    path = Path(base).expanduser()
    if (path / "config.json").exists():
        return json.loads((path / "config.json").read_text())
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(base, "config.json")).read_text())
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, ...: say which base failed
        raise AdapterConvertError(f"cannot read the config of base model {base!r}: {e}") from None


def num_hidden_layers(config: dict[str, Any]) -> int:
    for holder in (config, config.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(holder.get(key), int):
                return holder[key]
    raise AdapterConvertError("the base config names no num_hidden_layers")


def _split_layer(module: str) -> tuple[str, int, str] | None:
    """'model.layers.3.self_attn.q_proj' -> ('model.layers', 3, 'self_attn.q_proj')."""
    m = _LAYER.match(module)
    return (m["stem"], int(m["idx"]), m["rel"]) if m else None


def _load_torch(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.exists():
        raise AdapterConvertError(f"{path}: not found")
    return load_file(str(path))


def _pairs(tensors: dict, pattern: re.Pattern, a: str, b: str, where: Path) -> dict[str, dict]:
    """module -> {'a': tensor, 'b': tensor}; anything else in the file, or nothing, is an error."""
    modules: dict[str, dict] = {}
    for name, t in tensors.items():
        m = pattern.match(name)
        if not m:
            raise AdapterConvertError(f"{where}: {name} is not a LoRA A/B tensor (DoRA magnitudes, "
                                      "biases and fully trained modules are not converted)")
        modules.setdefault(m["module"], {})["a" if m["leaf"] == a else "b"] = t
    for module, ab in modules.items():
        if set(ab) != {"a", "b"}:
            raise AdapterConvertError(f"{where}: {module} has only lora_{next(iter(ab))}")
    if not modules:
        raise AdapterConvertError(f"{where}: no LoRA tensors")
    return modules


def _one_rank(modules: dict[str, dict], axis: int, problem: str) -> int:
    """The LoRA rank (A's dimension `axis`) shared by every module; else AdapterConvertError(problem + ranks)."""
    ranks = {ab["a"].shape[axis] for ab in modules.values()}
    if len(ranks) != 1:
        raise AdapterConvertError(f"{problem} {sorted(ranks)}")
    return ranks.pop()


# -------------------------------------------------------------------------------- MLX -> PEFT
def mlx_to_peft(mlx_dir: Path, out: Path, base: str, check_base: bool = True) -> dict[str, Any]:
    """Convert an mlx-lm adapter folder into a PEFT adapter folder for `base` (written to
    `base_model_name_or_path`). Returns the PEFT adapter config written."""
    import torch
    from safetensors.torch import save_file

    mlx_dir, out = Path(mlx_dir), Path(out)
    try:
        cfg = json.loads((mlx_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise AdapterConvertError(f"{mlx_dir}: no {CONFIG}; not an mlx-lm adapter folder") from None
    kind = cfg.get("fine_tune_type", "lora")
    if kind != "lora":
        raise AdapterConvertError(f"{mlx_dir}: fine_tune_type {kind!r}; only LoRA adapters convert to PEFT")
    params = cfg.get("lora_parameters") or {}
    if "scale" not in params:
        raise AdapterConvertError(f"{mlx_dir}/{CONFIG}: lora_parameters has no scale")
    scale = float(params["scale"])
    modules = _pairs(_load_torch(mlx_dir / MLX_WEIGHTS), _MLX_NAME, "lora_a", "lora_b", mlx_dir / MLX_WEIGHTS)
    rank = _one_rank(modules, 1, f"{mlx_dir}: mixed LoRA ranks")

    state = {}
    for module, ab in sorted(modules.items()):
        a, b = ab["a"], ab["b"]
        if a.ndim != 2 or b.ndim != 2:
            raise AdapterConvertError(f"{module}: {a.ndim}-d LoRA tensors (mixture-of-experts / "
                                      "embedding adapters are not converted)")
        state[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.T.contiguous().to(torch.float32)
        state[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.T.contiguous().to(torch.float32)

    if check_base:
        n = num_hidden_layers(base_config(base))
        top = max((s[1] for m in modules if (s := _split_layer(m))), default=-1)
        if top >= n:
            raise AdapterConvertError(f"the adapter touches layer {top} but {base} has {n} layers")
    peft_cfg = _peft_config(base, rank, scale, float(params.get("dropout", 0.0)), sorted(modules))
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(peft_cfg, indent=2) + "\n")
    return peft_cfg


def _peft_config(base: str, rank: int, scale: float, dropout: float, modules: list[str]) -> dict[str, Any]:
    """PEFT's adapter_config.json for a plain LoRA on exactly `modules` (lora_alpha = scale × r)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": scale * rank,
        "lora_dropout": dropout,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        **_peft_targets(modules),
    }


def _peft_targets(modules: list[str]) -> dict[str, Any]:
    """target_modules (+ layers_to_transform / layers_pattern) selecting exactly `modules`."""
    split = [_split_layer(m) for m in modules]
    if all(split):
        stems = {s[0] for s in split}  # type: ignore[index]
        rels = sorted({s[2] for s in split})  # type: ignore[index]
        layers = sorted({s[1] for s in split})  # type: ignore[index]
        if len(stems) == 1 and len(split) == len(rels) * len(layers):  # a full grid: layers × modules
            leaves = {r.rsplit(".", 1)[-1] for r in rels}
            names = sorted(leaves) if len(leaves) == len(rels) else rels
            return {"target_modules": names, "layers_to_transform": layers,
                    "layers_pattern": next(iter(stems)).rsplit(".", 1)[-1]}
    # Anything irregular (modules outside the blocks, different modules per layer): one exact regex.
    return {"target_modules": "^(" + "|".join(re.escape(m) for m in modules) + ")$",
            "layers_to_transform": None, "layers_pattern": None}


# -------------------------------------------------------------------------------- PEFT -> MLX
def _peft_scales(cfg: dict[str, Any], modules: list[str], rank: int) -> dict[str, float]:
    alpha = float(cfg.get("lora_alpha", rank))
    pattern: dict[str, float] = cfg.get("alpha_pattern") or {}

    def alpha_of(module: str) -> float:
        for key, value in pattern.items():
            if re.match(rf"(.*\.)?({key})$", module):
                return float(value)
        return alpha

    denom = rank ** 0.5 if cfg.get("use_rslora") else rank
    return {m: alpha_of(m) / denom for m in modules}


def peft_to_mlx(peft_dir: Path, out: Path, base: str | None = None) -> dict[str, Any]:
    """Convert a PEFT LoRA adapter into an mlx-lm adapter folder (`mlx_lm.generate --adapter-path`,
    `load_adapters`). `base` (default: the adapter's base_model_name_or_path) gives the layer count."""
    from safetensors.torch import save_file

    peft_dir, out = Path(peft_dir), Path(out)
    cfg = _peft_lora_config(peft_dir)
    tensors = {k.removeprefix(PEFT_PREFIX): v for k, v in _load_torch(peft_dir / PEFT_WEIGHTS).items()}
    modules = _pairs(tensors, _PEFT_NAME, "lora_A", "lora_B", peft_dir / PEFT_WEIGHTS)
    rank = _one_rank(modules, 0, f"{peft_dir}: mlx-lm needs one rank; per-module ranks")
    if cfg.get("fan_in_fan_out"):
        modules = {m: {"a": ab["a"].T, "b": ab["b"].T} for m, ab in modules.items()}
    base = base or cfg.get("base_model_name_or_path")
    if not base:
        raise AdapterConvertError("no base model: pass --base (the adapter config names none)")
    n_layers = num_hidden_layers(base_config(base))
    # mlx-lm puts LoRA on the same keys in each of the last `num_layers` blocks; scales differing per
    # module (alpha_pattern) are folded into B, and (layer, key) cells PEFT left out get zeros.
    scales = _peft_scales(cfg, sorted(modules), rank)
    scale = Counter(scales.values()).most_common(1)[0][0]
    keys, first_layer, stem = _mlx_grid(modules, n_layers, base)
    weights = _mlx_weights(modules, scales, scale, rank, range(first_layer, n_layers), stem)
    mlx_cfg = {
        "fine_tune_type": "lora",
        "model": base,
        "num_layers": n_layers - first_layer if stem is not None else 0,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": float(cfg.get("lora_dropout", 0.0)),
                            "keys": sorted(keys)},
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / MLX_WEIGHTS), metadata={"format": "mlx"})
    (out / CONFIG).write_text(json.dumps(mlx_cfg, indent=2) + "\n")
    return mlx_cfg


def _peft_lora_config(peft_dir: Path) -> dict[str, Any]:
    """The PEFT adapter config, refused when it holds what mlx-lm's LoRA cannot express."""
    try:
        cfg = json.loads((peft_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise AdapterConvertError(f"{peft_dir}: no {CONFIG}; not a PEFT adapter folder") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterConvertError(f"{peft_dir}: peft_type {cfg.get('peft_type')}; only LoRA converts to MLX")
    for key, why in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save (fully trained modules)")):
        if cfg.get(key):
            raise AdapterConvertError(f"{peft_dir}: {why} has no mlx-lm LoRA equivalent")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise AdapterConvertError(f"{peft_dir}: trained biases have no mlx-lm LoRA equivalent")
    return cfg


def _mlx_grid(modules: dict[str, dict], n_layers: int, base: str) -> tuple[set[str], int, str | None]:
    """(mlx-lm keys, the first block with LoRA, the blocks' module stem, None when none is in a block)."""
    keys: set[str] = set()
    first_layer, stem = n_layers, None
    for module in modules:
        s = _split_layer(module)
        if s:
            stem, idx, rel = s
            if idx >= n_layers:
                raise AdapterConvertError(f"{module}: layer {idx}, but {base} has {n_layers} layers")
            first_layer = min(first_layer, idx)
            keys.add(rel)
        else:
            keys.add(module)
    return keys, first_layer, stem


def _mlx_weights(modules: dict[str, dict], scales: dict[str, float], scale: float, rank: int, layers: range,
                 stem: str | None) -> dict[str, Any]:
    """mlx-lm's (in, r) / (r, out) tensors, per-module scales folded into B, zeros for the cells of
    `layers` that PEFT left out."""
    import torch

    weights = {}
    for module, ab in modules.items():
        weights[f"{module}.lora_a"] = ab["a"].T.contiguous().to(torch.float32)
        weights[f"{module}.lora_b"] = (ab["b"].T * (scales[module] / scale)).contiguous().to(torch.float32)
    shapes = {_split_layer(m)[2]: (ab["a"].shape[1], ab["b"].shape[0])  # type: ignore[index]
              for m, ab in modules.items() if _split_layer(m)}
    if stem is not None:
        for idx in layers:
            for rel, (d_in, d_out) in shapes.items():
                name = f"{stem}.{idx}.{rel}"
                if name not in modules:
                    weights[f"{name}.lora_a"] = torch.zeros(d_in, rank)
                    weights[f"{name}.lora_b"] = torch.zeros(rank, d_out)
    return weights
