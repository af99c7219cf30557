"""`ft prototype` with mlx-lm on this CPU: a few iterations on the tiny model (in-process) and on the
converted SmolLM2 (as a user runs it: `ft model convert`, `ft prototype`, in subprocesses with OpenBLAS
preloaded), then the bundle carrying the PEFT-converted adapter, which reproduces the MLX logits."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mac_fixtures import REPO, make_tiny_llama, mlx_logits, openblas_env, peft_logits, write_math_data
from rich.console import Console

from mac.prototype import PrototypeError, _looks_like_oom, mlx_keys, run_prototype
from trainer.spec import load_spec

TOKENS = list(range(300, 340))
FT = str(Path(sys.executable).parent / "ft")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    from mac.mlx_convert import convert_model

    root = tmp_path_factory.mktemp("tiny")
    hf = make_tiny_llama(root / "hf")
    convert_model(str(hf), root / "mlx")
    return hf, root / "mlx"


def write_spec(folder: Path, model: str, base: str, name: str = "proto-test", **proto) -> Path:
    """A job spec with SFT data, a test set and a prototype section, written to folder/spec.yaml."""
    files = write_math_data(folder / "data", n_train=12, n_valid=4, n_test=2)
    rel = {k: str(v.relative_to(folder)) for k, v in files.items()}
    spec = {
        "name": name,
        "model": {"base": base},
        "data": {"task": "math", "sft_train": rel["sft_train"], "sft_valid": rel["sft_val"], "test": rel["gsm8k_test"]},
        "finetune": {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}},
        "stages": [{"method": "sft", "max_steps": 2, "init_adapter": "prototype"}],
        "evaluation": {"task": "gsm8k", "limit": 2, "max_new_tokens": 12},
        "prototype": {"model": model, "iters": 6, "batch_size": 2, "learning_rate": 1e-2, "num_layers": -1,
                      "max_seq_length": 192, "grad_checkpoint": False, "steps_per_eval": 3, "val_batches": 2,
                      "eval_samples": 2} | proto,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_tiny_prototype_end_to_end(tiny, tmp_path):
    hf, mlx = tiny
    spec_path = write_spec(tmp_path, str(mlx), str(hf))
    spec = load_spec(spec_path)
    result = run_prototype(spec, tmp_path, iters=8, max_samples=2, out_root=tmp_path / "out", console=quiet())
    out = tmp_path / "out" / "proto-test"
    assert result.out_dir == out
    for rel in ("adapters/adapters.safetensors", "adapters/adapter_config.json", "peft_adapter/adapter_config.json",
                "peft_adapter/adapter_model.safetensors", "metrics.json", "loss.png"):
        assert (out / rel).is_file(), rel
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    m = json.loads((out / "metrics.json").read_text())
    train = m["train"]
    assert len(train["history"]["train"]) == 8 and [v["iteration"] for v in train["history"]["val"]] == [0, 2, 5, 7]
    assert train["final_val_loss"] < train["first_val_loss"]  # the adapter learned something
    assert train["tokens_per_second"] > 0 and train["peak_memory_gb"] > 0
    assert m["settings"]["scale"] == 2.0 and m["settings"]["num_layers"] == 2 and len(m["settings"]["keys"]) == 7
    assert m["eval"]["n"] == 2 and m["eval"]["base"]["task"] == "gsm8k" and "accuracy" in m["eval"]["adapter"]
    assert m["scores"] == {"accuracy": m["eval"]["adapter"]["accuracy"], "n": 2}  # what the GPU run compares with
    assert len(m["eval"]["samples"]) == 2 and m["eval"]["samples"][0]["base"] != m["eval"]["samples"][0]["adapter"]

    mlx_cfg = json.loads((out / "adapters" / "adapter_config.json").read_text())
    assert mlx_cfg["lora_parameters"] | {"keys": None} == {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": None}
    peft_cfg = json.loads((out / "peft_adapter" / "adapter_config.json").read_text())
    assert peft_cfg["base_model_name_or_path"] == str(hf) and peft_cfg["r"] == 4 and peft_cfg["lora_alpha"] == 8
    base = peft_logits(hf, TOKENS)
    with_mlx = mlx_logits(mlx, TOKENS, out / "adapters")
    with_peft = peft_logits(hf, TOKENS, out / "peft_adapter")
    assert np.abs(with_mlx - base).max() > 0.05
    assert np.abs(with_peft - with_mlx).max() < 1e-3


def test_prompt_masking_changes_the_trained_tokens(tiny, tmp_path):
    hf, mlx = tiny
    counts = {}
    for mask in (True, False):
        spec = load_spec(write_spec(tmp_path / str(mask), str(mlx), str(hf), mask_prompt=mask))
        m = run_prototype(spec, tmp_path / str(mask), iters=2, max_samples=0, out_root=tmp_path / f"o{mask}",
                          console=quiet()).metrics
        counts[mask] = m["train"]["trained_tokens"]
        assert m["eval"] == {"n": 0} and m["scores"] == {}
    assert counts[True] < counts[False]


def test_cli_prototype_and_bad_inputs(tiny, tmp_path):
    from typer.testing import CliRunner

    from jobs.cli import app

    hf, mlx = tiny
    spec_path = write_spec(tmp_path, str(mlx), str(hf))
    r = CliRunner().invoke(app, ["prototype", str(spec_path), "--iters", "3", "--max-samples", "1",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "val loss" in r.output and "accuracy base → adapter (n=1)" in r.output
    assert (tmp_path / "out" / "proto-test" / "peft_adapter" / "adapter_model.safetensors").exists()

    missing = write_spec(tmp_path / "m", "../models/none", str(hf))
    r = CliRunner().invoke(app, ["prototype", str(missing)])
    assert r.exit_code == 2 and "ft model convert" in r.output  # a PrototypeError is bad input
    with pytest.raises(PrototypeError, match="fewer than prototype.batch_size"):
        run_prototype(load_spec(write_spec(tmp_path / "b", str(mlx), str(hf), batch_size=16)), tmp_path / "b",
                      console=quiet())


def test_target_modules_map_to_mlx_keys(tiny):
    from mlx_lm import load

    model, _ = load(str(tiny[1]))
    assert mlx_keys(model, ["q_proj", "down_proj"]) == ["mlp.down_proj", "self_attn.q_proj"]
    assert mlx_keys(model, "all-linear") == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                             "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    with pytest.raises(PrototypeError, match="c_attn"):
        mlx_keys(model, ["q_proj", "c_attn"])


def test_out_of_memory_is_recognised():
    # MLX raises these on Apple silicon; on a Linux CPU a failed allocation crashes instead of raising.
    assert _looks_like_oom(RuntimeError("[metal::malloc] Attempting to allocate 21474836480 bytes which is greater "
                                        "than the maximum allowed buffer size"))
    assert _looks_like_oom(MemoryError())
    assert not _looks_like_oom(ValueError("Dataset must have at least batch_size=2 examples"))


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=openblas_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.integration
def test_smollm2_prototype_bundle_reproduces_mlx_logits(tmp_path):
    """The user's path: convert the built-in model, prototype on it, freeze a bundle; the bundle's PEFT
    adapter on the transformers base gives the MLX logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer import builtin_model as builtin
    from trainer.bundle import verify_bundle, write_bundle

    out = _run([FT, "model", "convert", "builtin:smollm2-135m", "--out", "models/smollm2-135m"], tmp_path)
    assert "rope_theta = 100000" in out
    spec_path = write_spec(tmp_path / "job", "../models/smollm2-135m", "builtin:smollm2-135m", name="smol-proto",
                           batch_size=1, num_layers=2, learning_rate=1e-3, max_seq_length=128, val_batches=1,
                           steps_per_eval=3)
    out = _run([FT, "prototype", str(spec_path), "--iters", "3", "--max-samples", "1"], tmp_path)
    assert "val loss" in out
    proto_dir = tmp_path / "outputs" / "mlx" / "smol-proto"
    metrics = json.loads((proto_dir / "metrics.json").read_text())
    assert metrics["peft"]["layers_to_transform"] == [28, 29] and metrics["eval"]["n"] == 1

    spec = load_spec(spec_path)
    bundle = verify_bundle(write_bundle(spec, spec_path.parent, tmp_path / "bundles", prototype_dir=proto_dir).path)
    assert bundle.prototype_adapter is not None and bundle.prototype_metrics["scores"]["n"] == 1
    assert bundle.spec.stages[0].init_adapter == "prototype"

    prompt = builtin.load_tokenizer().apply_chat_template(
        [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples?"}],
        add_generation_prompt=True, return_dict=False)
    base = AutoModelForCausalLM.from_pretrained(builtin.materialize(), dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(bundle.prototype_adapter)).eval()
    with torch.no_grad():
        with_peft = peft(torch.tensor([prompt])).logits[0].numpy()
        with peft.disable_adapter():
            without = peft(torch.tensor([prompt])).logits[0].numpy()
    with_mlx = mlx_logits(tmp_path / "models" / "smollm2-135m", prompt, proto_dir / "adapters")
    diff, moved = np.abs(with_peft - with_mlx).max(), np.abs(with_peft - without).max()
    assert diff < 1e-3 and moved > 10 * diff, (diff, moved)


def test_repo_demo_spec_points_at_the_convert_output():
    spec = load_spec(REPO / "configs" / "demo.yaml")
    assert (REPO / "configs" / spec.prototype.model).resolve() == (REPO / "outputs/mlx/models/smollm2-135m").resolve()


def test_translation_task_scores_with_sacrebleu(tiny, tmp_path):
    hf, mlx = tiny
    path = write_spec(tmp_path, str(mlx), str(hf))
    spec_dict = yaml.safe_load(path.read_text())
    spec_dict["data"]["task"] = "translation"
    spec_dict["evaluation"]["task"] = "translation"
    path.write_text(yaml.safe_dump(spec_dict))
    m = run_prototype(load_spec(path), tmp_path, iters=1, max_samples=1, out_root=tmp_path / "out",
                      console=quiet()).metrics
    assert m["task"] == "translation" and set(m["scores"]) == {"bleu", "chrf", "ter", "n"}
    assert m["eval"]["base"]["signatures"]["bleu"].startswith("nrefs:1")
