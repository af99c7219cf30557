"""Builders for the evaluation/merge/report tests: a tiny random Llama with the real SmolLM2
tokenizer (chat template included), a real PEFT LoRA adapter on it, and a finished run in a local
store laid out exactly as the trainer writes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GSM8K_SAMPLE = REPO / "data" / "samples" / "gsm8k" / "test.jsonl"
KO_EN = REPO / "data" / "samples" / "ko-en" / "korean-english-park.dev"


def make_tiny_model(out: Path, seed: int = 0) -> Path:
    """2-layer Llama, hidden 64, SmolLM2's 49k-token vocabulary and tokenizer; saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.builtin_model import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_adapter(base: Path, out: Path, seed: int = 1, r: int = 4) -> Path:
    """A PEFT LoRA adapter with non-zero B matrices (a fresh adapter is a no-op, useless to test)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def gsm8k_test_rows(n: int = 4) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in GSM8K_SAMPLE.read_text().splitlines()[:n]]
    system = "Solve the problem step by step. End with '#### <number>'."
    return [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": r["question"]}],
             "answer": r["answer"]} for r in rows]


def metrics_lines(method: str, steps: int, seed: int) -> list[dict[str, Any]]:
    """Plausible per-step training logs (decreasing loss; GRPO rewards rising with spread)."""
    import random

    rnd = random.Random(seed)
    lines: list[dict[str, Any]] = []
    for step in range(1, steps + 1):
        row: dict[str, Any] = {"step": step, "epoch": step / steps, "learning_rate": 1e-4 * (1 - step / steps),
                               "grad_norm": 1 + rnd.random(), "tokens_per_s": 900 + 50 * rnd.random(),
                               "step_time": 0.2 + 0.05 * rnd.random()}
        row["loss"] = 2.5 * (0.9**step) + 0.1 * rnd.random()
        if method == "grpo":
            row["reward_mean"] = min(1.0, 0.2 + step * 0.05 + 0.05 * rnd.random())
            row["reward_std"] = 0.3 - step * 0.01
            row["rewards/math_correctness/mean"] = row["reward_mean"] * 0.7
            row["rewards/format/mean"] = row["reward_mean"] * 0.3
        lines.append(row)
    lines.append({"final": True, "train_runtime": steps * 0.2, "train_loss": lines[-1]["loss"]})
    return lines


def make_run(
    tmp: Path,
    base_dir: Path,
    stages: tuple[str, ...] = ("sft", "dpo", "grpo"),
    run_id: str = "demo-run-1",
    test_rows: list[dict[str, Any]] | None = None,
    adapters: dict[str, Path] | None = None,
    task: str = "math",
) -> tuple[Path, str]:
    """A finished run in a local store at `tmp/store`: a real bundle (test + SFT valid data), a real
    adapter per stage, metrics.jsonl per stage, run.json. Returns (store root, run id)."""
    from trainer.bundle import push_bundle, write_bundle
    from trainer.spec import parse_spec
    from trainer.store import open_store

    data = tmp / "data"
    write_jsonl(data / "test.jsonl", test_rows or gsm8k_test_rows())
    valid = [{"messages": [{"role": "user", "content": r["prompt"][-1]["content"]},
                           {"role": "assistant", "content": r["answer"]}]} for r in (test_rows or gsm8k_test_rows(20))]
    write_jsonl(data / "sft_val.jsonl", valid)
    for name in ("sft_train", "dpo_train", "grpo_train"):
        write_jsonl(data / f"{name}.jsonl", valid)
    stage_cfg = {
        "sft": {"method": "sft", "learning_rate": 1e-4, "max_length": 256},
        "dpo": {"method": "dpo", "learning_rate": 1e-5, "max_length": 256},
        "grpo": {"method": "grpo", "learning_rate": 1e-6, "num_generations": 2, "max_length": 256},
    }
    raw = {
        "name": "eval-test",
        "model": {"base": str(base_dir)},
        "data": {"task": task, "sft_train": "data/sft_train.jsonl", "sft_valid": "data/sft_val.jsonl",
                 "dpo_train": "data/dpo_train.jsonl", "grpo_train": "data/grpo_train.jsonl",
                 "test": "data/test.jsonl"},
        "finetune": {"method": "lora", "lora": {"r": 4, "alpha": 8}},
        "stages": [stage_cfg[s] for s in stages],
        "evaluation": {"limit": 4, "max_new_tokens": 8},
        "store": {"uri": str(tmp / "store")},
    }
    spec = parse_spec(raw)
    bundle = write_bundle(spec, tmp, tmp / "bundles")
    store_uri = str(tmp / "store")
    bundle_uri = push_bundle(bundle, store_uri, progress=False)
    store = open_store(store_uri)
    info: dict[str, Any] = {"run_id": run_id, "bundle_id": bundle.bundle_id, "bundle_uri": bundle_uri,
                            "spec": spec.resolved(), "stages": {}}
    for i, stage in enumerate(stages):
        final = f"runs/{run_id}/{stage}/final"
        adapter = (adapters or {}).get(stage) or make_adapter(base_dir, tmp / "adapters" / stage, seed=10 + i)
        store.upload_dir(adapter, final, progress=False)
        lines = metrics_lines(stage, 12, seed=i)
        store.write_text(f"runs/{run_id}/{stage}/metrics.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
        info["stages"][stage] = {"status": "done", "final": final, "method": stage, "steps": 12,
                                 "seconds": 30.0 + 10 * i}
    store.write_text(f"runs/{run_id}/run.json", json.dumps(info, indent=2))
    return Path(store_uri), run_id
