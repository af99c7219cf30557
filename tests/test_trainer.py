"""The trainer end to end on real TRL trainers (tiny random Llama, CPU): every recipe, resume after
kill -9 in each stage, markers, skipping finished stages, exit codes."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.bundle import write_bundle
from trainer.spec import load_spec

STEPS = {"sft": 6, "dpo": 4, "grpo": 4}

SPEC = """name: tiny
model: {{base: {model}}}
data:
  task: math
  sft_train: data/sft_train.jsonl
  sft_valid: data/sft_val.jsonl
  dpo_train: data/preference_pairs.jsonl
  grpo_train: data/grpo_prompts.jsonl
  test: data/gsm8k_test.jsonl
finetune:
  method: lora
  lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}}
stages:
  - {{method: sft, max_steps: {sft}, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false, logging_steps: 1,
      save_steps: 2, save_total_limit: 5}}
  - {{method: dpo, max_steps: {dpo}, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false, logging_steps: 1,
      save_steps: 1, save_total_limit: 5}}
  - {{method: grpo, max_steps: {grpo}, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, num_generations: 2, max_completion_length: 8, max_length: 256,
      gradient_checkpointing: false, logging_steps: 1, save_steps: 1, save_total_limit: 5}}
evaluation: {{task: gsm8k, limit: 2, max_new_tokens: 8}}
"""


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, math_data, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("tiny-job")
    shutil.copytree(math_data, root / "data")
    (root / "job.yaml").write_text(SPEC.format(model=tiny_model_dir, **STEPS))
    return write_bundle(load_spec(root / "job.yaml"), root, root / "bundles").path


def trainer_cmd(bundle: Path, store: Path, run_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "run", str(bundle), "--run-id", run_id, "--store", str(store), *extra]


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "FT_WORKDIR": str(tmp / "work"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_trainer(bundle: Path, store: Path, run_id: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(trainer_cmd(bundle, store, run_id, *extra), env=env(tmp), capture_output=True, text=True,
                          timeout=900)


def final_weights(store: Path, run_id: str, stage: str) -> dict:
    from safetensors.torch import load_file

    return load_file(store / "runs" / run_id / stage / "final" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(bundle_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    store = tmp / "store"
    result = run_trainer(bundle_path, store, "straight", tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return store, result


def test_every_recipe_trains_and_its_output_loads_with_peft(uninterrupted, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    store, result = uninterrupted
    record = json.loads((store / "runs/straight/run.json").read_text())
    assert {k: v["steps"] for k, v in record["stages"].items()} == STEPS
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    base_logits = base(ids).logits
    for stage in STEPS:
        final = store / "runs/straight" / stage / "final"
        assert (final / "_COMPLETE").exists() and (final / "tokenizer.json").exists()
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final)
        assert not torch.allclose(model(ids).logits, base_logits)  # the adapter learned something
        metrics = [json.loads(line) for line in (store / "runs/straight" / stage / "metrics.jsonl").open()]
        assert [m["step"] for m in metrics if "loss" in m and not m.get("final")] == list(range(1, STEPS[stage] + 1))
        train_logs = [m for m in metrics if "loss" in m and not m.get("final")]
        assert all("step_time" in m and "learning_rate" in m for m in train_logs), train_logs
        assert any(m.get("tokens_per_s") for m in train_logs) or stage != "sft"
        if stage == "grpo":
            assert all("reward_mean" in m and "reward_std" in m for m in train_logs)
        assert list((store / "runs/straight" / stage / "tensorboard").rglob("events.out.tfevents*"))
    # later stages continue the same adapter: DPO's final differs from SFT's and still loads on the base
    sft, dpo = final_weights(store, "straight", "sft"), final_weights(store, "straight", "dpo")
    assert sft.keys() == dpo.keys() and any(not torch.equal(sft[k], dpo[k]) for k in sft)


def test_finished_stages_are_not_rerun(uninterrupted, bundle_path, tmp_path):
    store, _ = uninterrupted
    before = (store / "runs/straight/run.json").read_text()
    result = run_trainer(bundle_path, store, "straight", tmp_path)
    assert result.returncode == 0
    assert result.stderr.count("already complete") == 3
    assert (store / "runs/straight/run.json").read_text() == before


def _kill_at_checkpoint(proc: subprocess.Popen, store: Path, run_id: str, stage: str, step: int) -> None:
    """kill -9 the trainer as soon as `stage`'s checkpoint `step` is complete in the store."""
    marker = store / "runs" / run_id / stage / "checkpoints" / str(step) / "_COMPLETE"
    deadline = time.time() + 600
    while time.time() < deadline:
        if marker.exists():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer ended before {stage} checkpoint {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def test_kill_9_in_each_stage_then_resume(uninterrupted, bundle_path, tmp_path):
    import torch

    straight_store, _ = uninterrupted
    store = tmp_path / "store"
    rng = random.Random(os.getpid())
    save_every = {"sft": 2, "dpo": 1, "grpo": 1}
    for stage in STEPS:
        # a random checkpoint before the last one, so the stage is always cut off mid-way
        step = rng.choice(range(save_every[stage], STEPS[stage], save_every[stage]))
        proc = subprocess.Popen(trainer_cmd(bundle_path, store, "preempted"), env=env(tmp_path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _kill_at_checkpoint(proc, store, "preempted", stage, step)
        assert not (store / "runs/preempted" / stage / "final" / "_COMPLETE").exists()
    result = run_trainer(bundle_path, store, "preempted", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grpo: resuming from" in result.stderr.replace("\n", " ") or "grpo[/]: resuming" in result.stderr
    record = json.loads((store / "runs/preempted/run.json").read_text())
    assert {k: v["steps"] for k, v in record["stages"].items()} == STEPS
    # Resuming restores weights, optimizer, scheduler, RNG and data position: the result equals the
    # uninterrupted run's (no sample seen twice, none skipped).
    for stage in ("sft", "dpo"):
        a, b = final_weights(straight_store, "straight", stage), final_weights(store, "preempted", stage)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, s=stage, k=key: f"{s} {k}: {m}")
    metrics = [json.loads(line) for line in (store / "runs/preempted/sft/metrics.jsonl").open()]
    steps = [m["step"] for m in metrics if "loss" in m and not m.get("final")]
    assert steps == list(range(1, STEPS["sft"] + 1))  # each step logged exactly once across the restarts


def test_checkpoint_without_marker_is_ignored(uninterrupted, bundle_path, tmp_path):
    straight_store, _ = uninterrupted
    store = tmp_path / "store"
    src = straight_store / "runs/straight/sft/checkpoints"
    dest = store / "runs/partial/sft/checkpoints"
    complete = sorted(int(p.name) for p in src.iterdir())
    assert complete[-1] == STEPS["sft"]
    shutil.copytree(src / "2", dest / "2")
    shutil.copytree(src / str(complete[-1]), dest / "4")
    (dest / "4" / "_COMPLETE").unlink()  # an upload that was cut off
    result = run_trainer(bundle_path, store, "partial", tmp_path, "--stage", "sft")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint 2" in result.stderr and "checkpoint 4" not in result.stderr
    assert json.loads((store / "runs/partial/run.json").read_text())["stages"]["sft"]["steps"] == STEPS["sft"]


def test_bad_bundle_exits_2_and_unreachable_store_exits_75(bundle_path, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle_path, broken)
    (broken / "data" / "sft_train.jsonl").write_text("tampered\n")
    bad = run_trainer(broken, tmp_path / "store", "x", tmp_path)
    assert bad.returncode == 2 and "changed: data/sft_train.jsonl" in bad.stderr
    assert not (tmp_path / "store").exists()

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exit_file = tmp_path / "exit-code"
    down = subprocess.run(
        [sys.executable, "-m", "trainer", "run", str(bundle_path), "--run-id", "y", "--store", "s3://bucket/p"],
        env={**env(tmp_path), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
             "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1", "FT_EXIT_CODE_FILE": str(exit_file)},
        capture_output=True, text=True, timeout=300)
    assert down.returncode == 75 and "store unavailable" in down.stderr
    assert exit_file.read_text() == "75"


@pytest.mark.integration
def test_store_cut_off_during_checkpoint_upload(uninterrupted, bundle_path, tmp_path, moto_server, cuttable_proxy):
    """The trainer talks to moto_server through a TCP proxy that is cut while checkpoints upload: the
    trainer ends with the retryable exit code 75 (or retries through), and no checkpoint in the store
    looks complete without all of its files."""
    import boto3

    straight_store, _ = uninterrupted
    expected = {p.relative_to(straight_store / "runs/straight/sft/checkpoints/2").as_posix()
                for p in (straight_store / "runs/straight/sft/checkpoints/2").rglob("*") if p.is_file()}
    s3 = boto3.client("s3", endpoint_url=moto_server["url"], aws_access_key_id="x", aws_secret_access_key="x",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="cut")
    proxy = cuttable_proxy(moto_server["port"])
    run = subprocess.Popen(
        [sys.executable, "-m", "trainer", "run", str(bundle_path), "--run-id", "cut", "--store", "s3://cut/p"],
        env={**env(tmp_path), "AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def keys() -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket="cut", Prefix="p/runs/cut/").get("Contents", [])]

    deadline = time.time() + 600
    while time.time() < deadline and run.poll() is None:
        if any("/checkpoints/" in k for k in keys()):
            break
        time.sleep(0.01)
    proxy.cut()
    code = run.wait(timeout=600)
    stderr = run.stderr.read()
    assert code == 75, stderr[-2000:]
    assert "store unavailable" in stderr
    by_step: dict[str, set[str]] = {}
    for key in keys():
        if "/checkpoints/" in key:
            step, _, rel = key.split("/checkpoints/", 1)[1].partition("/")
            by_step.setdefault(f"{key.split('/checkpoints/')[0]}/{step}", set()).add(rel)
    assert by_step, "the cut came before any checkpoint file reached the store"
    for step, files in by_step.items():
        if "_COMPLETE" in files:
            assert files - {"_COMPLETE"} >= expected, f"{step} has a marker but lacks files"


REWARD_SPEC = """name: tiny-rm
model: {{base: {model}}}
data: {{task: math, sft_train: data/sft_train.jsonl, dpo_train: data/preference_pairs.jsonl,
        grpo_train: data/grpo_prompts.jsonl}}
finetune: {{method: lora, lora: {{r: 4, alpha: 8, dropout: 0.0}}}}
stages:
  - {{method: sft, max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, max_length: 256,
      gradient_checkpointing: false, logging_steps: 1}}
  - {{method: reward, max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, max_length: 256,
      gradient_checkpointing: false, logging_steps: 1}}
  - {{method: grpo, max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1,
      num_generations: 2, max_completion_length: 8, gradient_checkpointing: false, logging_steps: 1,
      rewards: [format], reward_model: reward}}
"""


def test_reward_model_stage_feeds_grpo(tmp_path, math_data, tiny_model_dir):
    """The guide's PPO row: a RewardTrainer stage, then GRPO optimising against that reward model."""
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(math_data, tmp_path / "data")
    (tmp_path / "job.yaml").write_text(REWARD_SPEC.format(model=tiny_model_dir))
    bundle = write_bundle(load_spec(tmp_path / "job.yaml"), tmp_path, tmp_path / "bundles")
    store = tmp_path / "store"
    result = run_trainer(bundle.path, store, "rm", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    reward_model = AutoModelForSequenceClassification.from_pretrained(store / "runs/rm/reward/final")
    assert reward_model.config.num_labels == 1
    grpo = [json.loads(line) for line in (store / "runs/rm/grpo/metrics.jsonl").open()]
    assert any(k.startswith("rewards/") and "format_reward" not in k for m in grpo for k in m)


VARIANT_SPEC = """name: tiny-variant
model: {{base: {model}, attn_implementation: {attn}}}
data: {{task: math, sft_train: data/sft_train.jsonl, grpo_train: data/grpo_prompts.jsonl}}
finetune: {{method: {method}, lora: {{r: 4, alpha: 8, dropout: 0.0}},
           quantization: {{load_in_4bit: true, quant_type: nf4, compute_dtype: float32}}}}
stages:
  - {{method: sft, max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, max_length: 256,
      gradient_checkpointing: false, logging_steps: 1}}
  - {{method: dpo, pairs: on_policy, max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1,
      max_length: 256, gradient_checkpointing: false, logging_steps: 1,
      on_policy: {{prompts: 4, samples_per_prompt: 2, max_new_tokens: 16}}}}
"""


def _variant(tmp_path: Path, math_data: Path, model: Path, method: str, attn: str = "auto") -> Path:
    shutil.copytree(math_data, tmp_path / "data")
    (tmp_path / "job.yaml").write_text(VARIANT_SPEC.format(model=model, method=method, attn=attn))
    return write_bundle(load_spec(tmp_path / "job.yaml"), tmp_path, tmp_path / "bundles").path


def test_qlora_sft_and_on_policy_dpo(tmp_path, math_data, tiny_model_dir):
    """4-bit NF4 base (bitsandbytes' CPU backend) + LoRA; DPO pairs sampled from the SFT model."""
    bundle = _variant(tmp_path, math_data, tiny_model_dir, "qlora")
    result = run_trainer(bundle, tmp_path / "store", "q", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "store/runs/q/sft/final/adapter_config.json").read_text())
    assert config["r"] == 4
    record = json.loads((tmp_path / "store/runs/q/run.json").read_text())
    assert record["stages"]["dpo"]["steps"] == 2


def test_full_fine_tuning_writes_full_weights(tmp_path, math_data, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    bundle = _variant(tmp_path, math_data, tiny_model_dir, "full")
    result = run_trainer(bundle, tmp_path / "store", "full", tmp_path, "--stage", "sft")
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "store/runs/full/sft/final"
    assert not (final / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.num_hidden_layers == 2


def test_flash_attention_without_cuda_is_a_clear_bad_input(tmp_path, math_data, tiny_model_dir):
    bundle = _variant(tmp_path, math_data, tiny_model_dir, "lora", attn="flash_attention_2")
    result = run_trainer(bundle, tmp_path / "store", "fa", tmp_path)
    assert result.returncode == 2
    assert "flash_attention_2 needs CUDA" in result.stderr


@pytest.mark.integration
def test_smollm2_sft_through_the_trainer(tmp_path, math_data, smollm2_dir):
    """The real SmolLM2-135M-Instruct (built-in GGUF) trains a few LoRA steps; its adapter loads with PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    shutil.copytree(math_data, tmp_path / "data")
    (tmp_path / "job.yaml").write_text(
        "name: smol\nmodel: {base: 'builtin:smollm2-135m'}\ndata: {task: math, sft_train: data/sft_train.jsonl}\n"
        "finetune: {lora: {r: 8, alpha: 16}}\nstages:\n  - {method: sft, max_steps: 2, per_device_train_batch_size: 2,"
        " gradient_accumulation_steps: 1, max_length: 192, gradient_checkpointing: false, logging_steps: 1}\n")
    bundle = write_bundle(load_spec(tmp_path / "job.yaml"), tmp_path, tmp_path / "bundles").path
    result = run_trainer(bundle, tmp_path / "store", "smol", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir),
                                      tmp_path / "store/runs/smol/sft/final")
    assert model.peft_config["default"].r == 8
    losses = [json.loads(line)["loss"] for line in (tmp_path / "store/runs/smol/sft/metrics.jsonl").open()
              if '"loss"' in line and "final" not in line]
    assert len(losses) == 2 and all(0 < x < 5 for x in losses)  # an instruct model starts with a sane loss


def test_preempted_after_the_last_checkpoint_trains_no_extra_step(uninterrupted, bundle_path, tmp_path):
    """A kill between the last checkpoint and the final upload: the restart finishes from that
    checkpoint with exactly max_steps and the same weights (the HF Trainer alone would run one step more)."""
    import torch

    straight_store, _ = uninterrupted
    for stage, steps in (("sft", STEPS["sft"]), ("grpo", STEPS["grpo"])):
        store = tmp_path / stage / "store"
        run = store / "runs/last"
        if stage == "grpo":  # earlier stages complete, as after a kill during GRPO
            for done in ("sft", "dpo"):
                shutil.copytree(straight_store / "runs/straight" / done, run / done)
        shutil.copytree(straight_store / "runs/straight" / stage / "checkpoints" / str(steps),
                        run / stage / "checkpoints" / str(steps))
        result = run_trainer(bundle_path, store, "last", tmp_path / stage)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"checkpoint {steps}" in result.stderr
        assert json.loads((run / "run.json").read_text())["stages"][stage]["steps"] == steps
        a, b = final_weights(straight_store, "straight", stage), final_weights(store, "last", stage)
        for key in a:
            torch.testing.assert_close(a[key], b[key])
