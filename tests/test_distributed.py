"""2-process DDP on this CPU, for real: `accelerate launch --multi_gpu --num_processes 2` over gloo runs
the trainer's SFT stage for a few steps on the built-in SmolLM2 and writes the same artifact layout
as one process does."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.bundle import write_bundle
from trainer.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bundle(tmp_path: Path, store: Path) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["stages"] = [{**raw["stages"][0], "max_steps": 2, "save_steps": 1, "per_device_train_batch_size": 2,
                      "init_adapter": None}]  # no prototype in this bundle
    raw["store"] = {"uri": str(store)}
    raw.pop("prototype", None)
    raw["data"] = {k: v for k, v in raw["data"].items() if k in ("task", "sft_train", "sft_valid", "test")}
    spec = parse_spec(raw)
    return write_bundle(spec, REPO / "configs", tmp_path / "bundles").path


def _layout(store: Path, run_id: str) -> set[str]:
    root = store / "runs" / run_id / "sft"
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    # Names only: sizes and timestamps differ; TensorBoard event files carry host names; the HF
    # Trainer saves one RNG state per process (rng_state.pth, or rng_state_<rank>.pth under DDP).
    out = set()
    for f in files:
        f = "tensorboard-event" if "events.out" in f else re.sub(r"rng_state(_\d+)?\.pth$", "rng_state.pth", f)
        out.add(f)
    return out


def test_two_process_ddp_matches_single_process_layout(tmp_path):
    store = tmp_path / "store"
    bundle = _bundle(tmp_path, store)
    env = {**os.environ, "FT_WORKDIR": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("SKYPILOT_TASK_ID", None)
    single = subprocess.run([sys.executable, "-m", "trainer", "run", str(bundle), "--run-id", "single"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]
    accelerate = Path(sys.executable).with_name("accelerate")
    ddp = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--main_process_port", str(_free_port()),
                          "-m", "trainer", "run", str(bundle), "--run-id", "ddp"],
                         cwd=REPO, env={**env, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True,
                         timeout=900)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    ckpt = store / "runs" / "ddp" / "sft" / "checkpoints" / "2"
    assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}  # 2 ranks
    one, two = _layout(store, "single"), _layout(store, "ddp")
    assert any(f.startswith("final/") for f in one)
    assert one == two


def test_trainer_sees_one_main_process_under_accelerate_launch(tmp_path):
    """Plain `PartialState()` on a CPU-only machine reports every rank as the main process, and then two
    ranks write run.json and upload checkpoints at once; the trainer asks for the CPU backend."""
    script = tmp_path / "probe.py"
    # each rank writes its own file: two processes printing to one pipe interleave their lines
    script.write_text("import pathlib, sys\nfrom trainer.pipeline import _state\ns = _state()\n"
                      "pathlib.Path(sys.argv[1], f'rank{s.process_index}').write_text("
                      "f'{s.distributed_type} {s.process_index} {s.num_processes} {s.is_main_process}')\n")
    accelerate = Path(sys.executable).with_name("accelerate")
    out = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                          str(script), str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)})
    probes = sorted(p.read_text() for p in tmp_path.glob("rank*"))
    assert probes == ["DistributedType.MULTI_CPU 0 2 True", "DistributedType.MULTI_CPU 1 2 False"], out.stderr[-2000:]
