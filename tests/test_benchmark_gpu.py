"""benchmarks/gpu.py --smoke never rots: it runs on the CPU here (a tiny model, a step of SFT with and
without packing, DPO, GRPO, and a batched evaluation) and prints what it measured and how."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_smoke_runs_on_the_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    start = time.time()
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"')]
    header, done = rows[0], rows[-1]
    assert header["device"] == "cpu" and header["dtype"] == "float32"
    assert "4 (LoRA" in header["mfu_formula"] and "6 (full)" in header["mfu_formula"]
    assert done["ok"] and done["benchmarks"] == ["sft_lora_packing_off", "sft_lora_packing_on", "dpo_lora",
                                                 "grpo_lora", "eval_generation_batched"]
    measured = {r["benchmark"]: r for r in rows if "benchmark" in r}
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in measured.values())  # no peak for a CPU
    assert measured["eval_generation_batched"]["device"] == "cpu"
    assert time.time() - start < 180
