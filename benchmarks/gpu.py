"""The GPU path, run and measured on whatever device is there: one step each of SFT (LoRA), DPO and
GRPO with TRL, and a batched evaluation generation, on the device and precision trainer.models decides
(CUDA bf16 on Ampere+, fp16 before, CPU fp32), printing tokens/s and MFU with the formula used.

    .venv/bin/python benchmarks/gpu.py --smoke            # a tiny random Llama, a step each (CPU: ~30 s)
    .venv/bin/python benchmarks/gpu.py --steps 5 --hidden 576 --layers 30   # SmolLM2-135M-shaped

Models are built locally from a config (random weights, no download) with SmolLM2's tokenizer (the
built-in model's, or `--tokenizer DIR`).

MFU = achieved FLOP/s / the GPU's dense bf16 peak (PEAK_TFLOPS, from the vendors' data sheets; none for
the CPU). Training FLOPs per token: full fine-tuning 6·N (forward 2N, backward 4N); LoRA 4·N (forward 2N
+ the activation gradients 2N; the frozen base computes no weight gradients), N = the base's parameters
without the embeddings; the adapter's own FLOPs are left out. Generation: 2·N per new token. The field
often quotes 6·N for LoRA too; that figure is printed beside ours (`mfu_6n`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of torch's device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0,
               "A10": 125.0, "RTX 4090": 165.0, "A6000": 155.0, "V100": 125.0, "T4": 65.0}


def peak_tflops(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def build_model(out: Path, hidden: int, layers: int, tokenizer_dir: str | None) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer_dir:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        from trainer.builtin_model import load_tokenizer

        tok = load_tokenizer()
    heads = max(1, hidden // 64)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64 or 128,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=max(1, heads // 3) if heads % 3 == 0 else heads,
                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def rows(n: int) -> list[dict]:
    lines = (REPO / "data" / "samples" / "gsm8k" / "train.jsonl").read_text().splitlines()
    if len(lines) < n:
        lines = (lines * (n // max(len(lines), 1) + 1))
    out = []
    for line in lines[:n]:
        r = json.loads(line)
        prompt = [{"role": "user", "content": r["question"]}]
        reply = [{"role": "assistant", "content": r["answer"]}]
        out.append({"prompt": prompt, "answer": r["answer"], "completion": reply, "chosen": reply,
                    "rejected": [{"role": "assistant", "content": "#### 0"}]})
    return out


def base_flop_params(model) -> int:
    """N for the FLOP formulas: the base's matmul weights. The embedding lookup costs nothing, the LM head's
    matmul as many FLOPs as it has weights (tied: the embedding matrix, counted once)."""
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    tied = model.config.tie_word_embeddings
    return total if tied else total - model.get_input_embeddings().weight.numel()


def report(name: str, tokens: int, seconds: float, flops_per_token: float, peak: float | None,
           extra: dict | None = None, full_flops_per_token: float | None = None) -> dict:
    tps = tokens / seconds if seconds > 0 else 0.0
    row = {"benchmark": name, "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tps, 1)}
    if peak:
        row["mfu"] = round(tps * flops_per_token / (peak * 1e12), 4)
        if full_flops_per_token:
            row["mfu_6n"] = round(tps * full_flops_per_token / (peak * 1e12), 4)
    else:
        row["mfu"] = None
    row.update(extra or {})
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, one step each (any device)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: the built-in SmolLM2's)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.hidden, args.layers, args.batch, args.max_length = 1, 64, 2, 2, 128

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    from trainer.generation import generate_transformers
    from trainer.models import load_model_for_inference, placement, training_device

    where, device = placement("auto"), training_device()
    dtype = getattr(torch, where.dtype)
    peak = peak_tflops(device)
    print(json.dumps({"device": str(device), "name": torch.cuda.get_device_name(device) if where.device == "cuda"
                      else "cpu", "dtype": where.dtype, "peak_bf16_tflops": peak,
                      "mfu_formula": "tokens/s × k·N / peak; k = 4 (LoRA: forward 2N + activation grads 2N), "
                                     "6 (full), 2 (generation); N = base parameters"}), flush=True)
    common = {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
              "learning_rate": 1e-4, "logging_steps": 1, "save_strategy": "no", "report_to": [],
              "use_cpu": where.device == "cpu", "bf16": where.dtype == "bfloat16", "fp16": where.dtype == "float16",
              "dataloader_num_workers": 0, "gradient_checkpointing": False}
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    data = rows(max(8, args.batch * args.steps * 2))
    results = []
    with tempfile.TemporaryDirectory(prefix="ft-gpu-bench-") as tmp:
        model_dir = build_model(Path(tmp) / "model", args.hidden, args.layers, args.tokenizer)
        tok = AutoTokenizer.from_pretrained(model_dir)

        def load():
            return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")

        n = base_flop_params(load())

        def timed(trainer) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            trainer.train()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

        for packing in (False, True):
            sft = SFTTrainer(model=load(), args=SFTConfig(output_dir=f"{tmp}/sft", max_length=args.max_length,
                                                        packing=packing, **common),
                             train_dataset=Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]}
                                                              for r in data]),
                             processing_class=tok, peft_config=lora)
            seconds = timed(sft)
            tokens = int(sft.state.num_input_tokens_seen or 0) or args.batch * args.max_length * args.steps
            results.append(report(f"sft_lora_packing_{'on' if packing else 'off'}", tokens, seconds, 4 * n, peak,
                                  full_flops_per_token=6 * n))

        dpo = DPOTrainer(model=load(), args=DPOConfig(output_dir=f"{tmp}/dpo", max_length=args.max_length, **common),
                         train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                          for r in data]),
                         processing_class=tok, peft_config=lora)
        seconds = timed(dpo)
        results.append(report("dpo_lora", args.batch * 2 * args.max_length * args.steps, seconds, 4 * n, peak,
                              extra={"tokens_are": "an upper bound: batch × 2 × max_length"}))

        grpo = GRPOTrainer(model=load(), reward_funcs=[lambda completions, **_: [float(len(c)) for c in completions]],
                           args=GRPOConfig(output_dir=f"{tmp}/grpo", num_generations=2, max_completion_length=8,
                                           generation_batch_size=args.batch * 2, **{**common,
                                           "per_device_train_batch_size": args.batch * 2}),
                           train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in data]),
                           processing_class=tok, peft_config=lora)
        seconds = timed(grpo)
        results.append(report("grpo_lora", args.batch * 2 * 8 * args.steps, seconds, 2 * n, peak,
                              extra={"tokens_are": "generated tokens (upper bound)"}))

        model = load_model_for_inference(str(model_dir))
        assert next(model.parameters()).device.type == device.type, "eval runs on the training device"
        prompts = [r["prompt"] for r in data[:8]]
        start = time.perf_counter()
        outs = generate_transformers(model, tok, prompts, max_new_tokens=16, batch_size=8)
        seconds = time.perf_counter() - start
        new_tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs) or 1
        results.append(report("eval_generation_batched", new_tokens, seconds, 2 * n, peak,
                              extra={"batch": 8, "device": str(next(model.parameters()).device),
                                     "tokens_are": "the decoded completions re-tokenized"}))
    print(json.dumps({"ok": True, "benchmarks": [r["benchmark"] for r in results]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
