"""Merge round trip: the merged model's logits equal base + adapter logits, and the merged folder
loads with plain transformers (no PEFT), which is also what vLLM needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_fixtures import make_adapter, make_run, make_tiny_model

from trainer.merge import merge_adapter, merge_run
from trainer.run import Run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("merge")
    base = make_tiny_model(root / "base")
    return base, make_adapter(base, root / "adapter")


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_logits_equal_adapter_logits(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = tiny
    out = merge_adapter(str(base), adapter, tmp_path / "merged")
    assert (out / "model.safetensors").exists()
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "merge_info.json").read_text())["kind"] == "lora-merged"

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Natalia sold clips to 48 of her friends.", return_tensors="pt").input_ids
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                             adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()

    expected = _logits(with_adapter, ids)
    assert not torch.allclose(expected, _logits(plain, ids), atol=1e-3), "adapter must change the outputs"
    torch.testing.assert_close(_logits(merged, ids), expected, atol=1e-4, rtol=1e-4)
    assert tok.chat_template, "the chat template travels with the merged model"


def test_merge_run_stage_from_store(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = tiny
    store, run_id = make_run(tmp_path, base, stages=("sft",), adapters={"sft": adapter})
    out = merge_run(Run(str(store), run_id), None, str(tmp_path / "served"))
    info = json.loads((Path(out) / "merge_info.json").read_text())
    assert info["stage"] == "sft" and info["run_id"] == run_id
    assert (Path(out) / "_COMPLETE").exists()

    # Also into a store URI (a second local store, same code path as s3:// minus boto3).
    from trainer.store import open_store

    target = tmp_path / "bucket"
    merge_run(Run(str(store), run_id), "sft", f"file://{target}/merged/{run_id}")
    assert (target / "merged" / run_id / "model.safetensors").exists()
    assert open_store(str(target)).is_complete(f"merged/{run_id}")


@pytest.mark.parametrize("dtype", ["auto", "bfloat16", "float16"])
def test_merge_device_and_dtype_follow_the_placement_decision(tiny: tuple[Path, Path], tmp_path: Path,
                                                              dtype: str) -> None:
    """Merging uses trainer.models.decide_placement: on a GPU, there in the model's dtype (checked in
    tests/test_gpu_path.py and benchmarks/gpu.py); with no CUDA here, the CPU in fp32 whatever the spec
    says -- and the merged model still equals base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.models import decide_placement

    base, adapter = tiny
    assert not torch.cuda.is_available()
    expected = decide_placement(False, False, dtype)
    out = merge_adapter(str(base), adapter, tmp_path / "merged", dtype=dtype)
    info = json.loads((out / "merge_info.json").read_text())
    assert (info["merged_on"], info["dtype"]) == (expected.device, expected.dtype) == ("cpu", "float32")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.float32  # saved in the precision it was merged in
    ids = AutoTokenizer.from_pretrained(out)("Weng earns $12 an hour.", return_tensors="pt").input_ids
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                             adapter).eval()
    torch.testing.assert_close(_logits(merged.eval(), ids), _logits(with_adapter, ids), atol=1e-4, rtol=1e-4)


def test_merge_job_step_writes_merged_into_the_runs_store(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """jobs/merge.yaml's own `run:` text, run with bash against a local store on the tiny model: the
    merged model lands at runs/<id>/<stage>/merged/ in the run's store, marker last, and loads without
    PEFT. A missing stage is one line and exit 2, no traceback."""
    import os
    import subprocess
    import sys

    import yaml
    from transformers import AutoModelForCausalLM

    from trainer.store import open_store

    base, adapter = tiny
    store, run_id = make_run(tmp_path, base, stages=("sft",), adapters={"sft": adapter})
    script = yaml.safe_load((Path(__file__).parent.parent / "jobs" / "merge.yaml").read_text())["run"]
    bin_dir = tmp_path / "bin"  # `python` is this venv's, as it is the image's in the job
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RUN": f"{store}/runs/{run_id}", "STAGE": "",
           "FT_STORE": "", "AWS_ENDPOINT_URL": "", "HF_TOKEN": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = Run(str(store), run_id)
    key = run.merged("sft")
    assert open_store(str(store)).is_complete(key)
    assert proc.stdout.strip().splitlines()[-1] == run.url(key)
    merged = Path(store) / key
    info = json.loads((merged / "merge_info.json").read_text())
    assert (info["stage"], info["run_id"], info["kind"]) == ("sft", run_id, "lora-merged")
    assert not (merged / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(merged)  # plain transformers, as vLLM needs

    proc = subprocess.run(["bash", "-c", script], env={**env, "STAGE": "dpo"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "no stage 'dpo'" in proc.stderr and "Traceback" not in proc.stderr
