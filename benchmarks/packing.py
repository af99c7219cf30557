"""Padding in GSM8K SFT batches with and without packing (TRL's BFD packing), and training tokens/s
for both, measured with the same model, batch size and steps. Aim: ≤ 5% padding with packing.

    .venv/bin/python benchmarks/packing.py [--steps 6] [--model builtin:smollm2-135m]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gsm8k_source  # noqa: E402


class Counter:
    """A TrainerCallback-compatible probe: counts real vs padded tokens in each training batch."""

    def __init__(self) -> None:
        self.real = self.total = 0


def run(packing: bool, data: Path, model_dir: str, steps: int, max_length: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trainer.recipes.common import load_dataset_file
    from trainer.recipes.sft import to_prompt_completion

    tok = AutoTokenizer.from_pretrained(model_dir)
    train = load_dataset_file(data).map(to_prompt_completion, remove_columns=["messages"])
    counter = Counter()
    timing: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timing["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            timing["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=4, max_length=max_length,
                           packing=packing, packing_strategy="bfd", padding_free=False, completion_only_loss=True,
                           report_to=[], use_cpu=True, logging_steps=steps, save_strategy="no",
                           gradient_checkpointing=False, dataloader_num_workers=0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tok, callbacks=[Timer()])
        collate = trainer.data_collator

        def probe(features):
            batch = collate(features)
            if "attention_mask" in batch:
                counter.real += int(batch["attention_mask"].sum())
                counter.total += batch["attention_mask"].numel()
            else:  # padding-free packing: one flat row, every position is a real token
                counter.real += batch["input_ids"].numel()
                counter.total += batch["input_ids"].numel()
            return batch

        trainer.data_collator = probe
        trainer.train()
    seconds = timing["end"] - timing["start"]
    return {"padding": 1 - counter.real / counter.total, "tokens_per_s": counter.real / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--model", default="builtin:smollm2-135m")
    args = parser.parse_args()
    from mac.data_prep import prepare_math
    from trainer.models import resolve_model_path

    model_dir = resolve_model_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_math(str(gsm8k_source()), Path(tmp), limit=400)
        data = Path(tmp) / "sft_train.jsonl"
        plain = run(False, data, model_dir, args.steps, args.max_length)
        packed = run(True, data, model_dir, args.steps, args.max_length)
    print(f"{'':<12} {'padding':>8} {'tokens/s':>9}")
    print(f"{'no packing':<12} {plain['padding']:>8.1%} {plain['tokens_per_s']:>9.0f}")
    print(f"{'packing':<12} {packed['padding']:>8.1%} {packed['tokens_per_s']:>9.0f}")
    print(f"packing tokens/s ratio: {packed['tokens_per_s'] / plain['tokens_per_s']:.2f}×")


if __name__ == "__main__":
    main()
