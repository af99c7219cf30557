"""Shared helpers for the mac tests: a tiny random Llama with the SmolLM2 tokenizer, its MLX copy,
small chat data from the bundled GSM8K sample, and an mlx-lm adapter with non-trivial weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
GSM8K = REPO / "data" / "samples" / "gsm8k"
SYSTEM = "Solve the problem step by step and end with '#### <answer>'."


def openblas_env() -> dict[str, str]:
    """Environment for subprocesses running MLX: OpenBLAS preloaded when present (≈10× faster)."""
    env = dict(os.environ)
    if Path(OPENBLAS).exists() and OPENBLAS not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (OPENBLAS, env.get("LD_PRELOAD")) if p)
    return env


def make_tiny_llama(dest: Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A random Llama (transformers folder, fp32) with the SmolLM2 tokenizer; rope_theta 100000 in
    transformers 5's `rope_parameters` only, as a real SmolLM2 config has it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer import builtin_model as builtin

    tok = builtin.load_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random init has tiny logits; spread them so differences are visible
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def gsm8k_rows(split: str, n: int, skip: int = 0) -> list[dict]:
    rows = []
    with open(GSM8K / f"{split}.jsonl") as f:
        for i, line in enumerate(f):
            if i < skip:
                continue
            if len(rows) == n:
                break
            rows.append(json.loads(line))
    return rows


def write_math_data(folder: Path, n_train: int = 16, n_valid: int = 4, n_test: int = 4) -> dict[str, Path]:
    """SFT chat rows and test rows in `ft data prepare`'s format, from the bundled GSM8K sample."""
    folder.mkdir(parents=True, exist_ok=True)

    def chat(r: dict) -> dict:
        return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["question"]},
                             {"role": "assistant", "content": r["answer"]}]}

    files = {
        "sft_train": [chat(r) for r in gsm8k_rows("train", n_train)],
        "sft_val": [chat(r) for r in gsm8k_rows("train", n_valid, skip=n_train)],
        "gsm8k_test": [{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["question"]}],
                        "answer": r["answer"]} for r in gsm8k_rows("test", n_test)],
    }
    out = {}
    for name, rows in files.items():
        out[name] = folder / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def write_random_mlx_adapter(mlx_model: Path, out: Path, rank: int = 4, scale: float = 2.0, num_layers: int = 1,
                             keys: list[str] | None = None, seed: int = 1, std: float = 0.2) -> Path:
    """An mlx-lm adapter folder (as `mlx_lm lora` writes it) with random, clearly non-zero A and B."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(mlx_model))
    model.freeze()
    params = {"rank": rank, "scale": scale, "dropout": 0.0}
    if keys is not None:
        params["keys"] = keys
    mx.random.seed(seed)
    linear_to_lora_layers(model, num_layers, params)
    weights = dict(tree_flatten(model.trainable_parameters()))
    weights = {k: (mx.random.normal(v.shape) * std if k.endswith("lora_b") else v) for k, v in weights.items()}
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    (out / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params, "model": str(mlx_model)}))
    return out


def mlx_logits(mlx_model: Path, tokens: list[int], adapter: Path | None = None):
    """Logits (numpy, float32) of the MLX model, with an mlx-lm adapter folder when given."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load

    model, _ = load(str(mlx_model), adapter_path=str(adapter) if adapter else None)
    out = model(mx.array([tokens]))
    return np.array(out.astype(mx.float32))[0]


def peft_logits(hf_model: Path, tokens: list[int], adapter: Path | None = None):
    """Logits (numpy) of the transformers model, with a PEFT adapter folder when given."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_model, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()
