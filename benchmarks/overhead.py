"""The same SFT job through our trainer (`python -m trainer run`, with store checkpoints, metrics and
resume logic) and through a bare TRL script with the same model, data, LoRA and SFTConfig. Prints the
training-loop time ratio (train_runtime, saves included). Aim: ≤ 1.02.

    .venv/bin/python benchmarks/overhead.py [--steps 20] [--model builtin:smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, gsm8k_source  # noqa: E402

SPEC = """name: overhead
model: {{base: {model}}}
data: {{task: math, sft_train: data/sft_train.jsonl}}
finetune: {{method: lora, lora: {{r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear}}}}
stages:
  - {{method: sft, max_steps: {steps}, learning_rate: 2.0e-4, per_device_train_batch_size: 4,
      gradient_accumulation_steps: 1, max_length: 256, packing: true, gradient_checkpointing: false,
      logging_steps: 1, save_steps: {save}, warmup_ratio: 0.0}}
"""

BARE = """
import json, sys, time
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

data, model_dir, steps, save, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
use_cpu = not torch.cuda.is_available()
tok = AutoTokenizer.from_pretrained(model_dir)
ds = load_dataset("json", data_files=data, split="train")
ds = ds.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}, remove_columns=["messages"])
config = SFTConfig(output_dir=out, max_steps=steps, learning_rate=2e-4, per_device_train_batch_size=4,
                   gradient_accumulation_steps=1, max_length=256, packing=True, packing_strategy="bfd",
                   completion_only_loss=True, gradient_checkpointing=False, logging_steps=1, save_steps=save,
                   save_strategy="steps", lr_scheduler_type="cosine", seed=42, data_seed=42, report_to=[],
                   use_cpu=use_cpu, dataloader_num_workers=0,
                   bf16=not use_cpu and torch.cuda.is_bf16_supported())  # TRL defaults to bf16; ours is fp32 on CPU
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tok, peft_config=lora)
result = trainer.train()
print(json.dumps({"train_runtime": result.metrics["train_runtime"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from mac.data_prep import prepare_math
    from trainer.bundle import write_bundle
    from trainer.models import resolve_model_path
    from trainer.spec import load_spec

    model_dir = resolve_model_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare_math(str(gsm8k_source()), root / "data", limit=400)
        (root / "job.yaml").write_text(SPEC.format(model=model_dir, steps=args.steps, save=args.save_steps))
        bundle = write_bundle(load_spec(root / "job.yaml"), root, root / "bundles")
        import os

        def ours(i: int) -> float:
            env = {**os.environ, "FT_WORKDIR": str(root / f"work{i}"), "HF_HUB_OFFLINE": "1"}
            subprocess.run([sys.executable, "-m", "trainer", "run", str(bundle.path), "--run-id", f"ours{i}",
                            "--store", str(root / "store")], check=True, cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            metrics = [json.loads(line) for line in (root / f"store/runs/ours{i}/sft/metrics.jsonl").open()]
            return next(m["train_runtime"] for m in metrics if "train_runtime" in m)

        def bare(i: int) -> float:
            out = subprocess.run([sys.executable, "-c", BARE, str(root / "data/sft_train.jsonl"), model_dir,
                                  str(args.steps), str(args.save_steps), str(root / f"bare{i}")],
                                 check=True, capture_output=True, text=True, cwd=REPO)
            return json.loads(out.stdout.strip().splitlines()[-1])["train_runtime"]

        # Alternate the two and keep each one's best run, so warm-up and machine noise cancel out.
        runs = [(bare(i), ours(i)) for i in range(args.repeats)]
        bare, ours = min(r[0] for r in runs), min(r[1] for r in runs)
    print(f"{'':<22} {'train_runtime s':>16} {'s/step':>8}")
    print(f"{'ft trainer':<22} {ours:>16.1f} {ours / args.steps:>8.2f}")
    print(f"{'bare TRL SFTTrainer':<22} {bare:>16.1f} {bare / args.steps:>8.2f}")
    print(f"overhead ratio (ours / bare): {ours / bare:.3f}")


if __name__ == "__main__":
    main()
