"""The trainer end to end on real TRL trainers (tiny random Llama, CPU): every recipe, resume after
kill -9 in each stage, markers, skipping finished stages, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from resume_check import RESUME_ATOL, assert_same_weights, max_change
from spec_texts import math_spec

from trainer.bundle import write_bundle
from trainer.spec import load_spec

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"

STEPS = {"sft": 4, "dpo": 3, "dpo-on-policy": 2}
SAVE_EVERY = {"sft": 2, "dpo": 1, "dpo-on-policy": 2}
# GRPO needs a reward that varies between a tiny random model's completions, or it never learns and
# its resume proves nothing: chrF against the reference translation does, so GRPO runs on ko-en.
TR_STEPS = {"sft": 2, "grpo": 3}
TR_SAVE_EVERY = {"sft": 2, "grpo": 1}

SPEC = math_spec("tiny", """finetune:
  method: lora
  lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}}
stages:
  - {{method: sft, max_steps: {sft}, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false, logging_steps: 1,
      save_steps: 2, save_total_limit: 5}}
  - {{method: dpo, max_steps: {dpo}, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false, logging_steps: 1,
      save_steps: 1, save_total_limit: 5}}
  - {{name: dpo-on-policy, method: dpo, pairs: on_policy, max_steps: {dpo_on_policy}, learning_rate: 1.0e-3,
      per_device_train_batch_size: 2, gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false,
      logging_steps: 1, save_steps: 2, save_total_limit: 5,
      on_policy: {{prompts: 4, samples_per_prompt: 2, max_new_tokens: 8}}}}
evaluation: {{task: gsm8k, limit: 2, max_new_tokens: 8}}
""")

TRANSLATION_SPEC = """name: tiny-ko-en
model: {{base: {model}}}
data: {{task: translation, sft_train: data/train.jsonl, grpo_train: data/grpo_prompts.jsonl, test: data/test.jsonl}}
finetune: {{method: lora, lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}}}}
stages:
  - {{method: sft, max_steps: {sft}, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false, logging_steps: 1,
      save_steps: 2, save_total_limit: 5}}
  - {{method: grpo, max_steps: {grpo}, learning_rate: 1.0e-2, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, num_generations: 2, max_completion_length: 8, max_length: 256,
      temperature: 1.0, rewards: [chrf], gradient_checkpointing: false, logging_steps: 1, save_steps: 1,
      save_total_limit: 5}}
evaluation: {{task: translation, limit: 2, max_new_tokens: 8}}
"""


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, math_data, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("tiny-job")
    shutil.copytree(math_data, root / "data")
    (root / "job.yaml").write_text(SPEC.format(model=tiny_model_dir, sft=STEPS["sft"], dpo=STEPS["dpo"],
                                               dpo_on_policy=STEPS["dpo-on-policy"]))
    return write_bundle(load_spec(root / "job.yaml"), root, root / "bundles").path


@pytest.fixture(scope="module")
def translation_bundle(tmp_path_factory, tiny_model_dir) -> Path:
    from mac.data_prep import prepare_translation

    root = tmp_path_factory.mktemp("tiny-ko-en")
    prepare_translation(str(SAMPLES / "ko-en"), root / "data", limit=64, test_limit=8)
    (root / "job.yaml").write_text(TRANSLATION_SPEC.format(model=tiny_model_dir, **TR_STEPS))
    return write_bundle(load_spec(root / "job.yaml"), root, root / "bundles").path


def trainer_cmd(bundle: Path, store: Path, run_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "run", str(bundle), "--run-id", run_id, "--store", str(store), *extra]


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "FT_WORKDIR": str(tmp / "work"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_trainer(bundle: Path, store: Path | str, run_id: str, tmp: Path, *extra: str,
                environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The trainer's entry point in a process of its own (forked from a warm server: tests/trainer_runner.py)."""
    import uuid

    from trainer_runner import run_main

    argv = ["run", str(bundle), "--run-id", run_id, "--store", str(store), *extra]
    return run_main(argv, environ or env(tmp), tmp / "logs" / f"{run_id}-{uuid.uuid4().hex[:8]}.log")


def final_weights(store: Path, run_id: str, stage: str) -> dict:
    from safetensors.torch import load_file

    return load_file(store / "runs" / run_id / stage / "final" / "adapter_model.safetensors")


def straight_run(bundle: Path, tmp: Path) -> Path:
    store = tmp / "store"
    result = run_trainer(bundle, store, "straight", tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return store


@pytest.fixture(scope="module")
def uninterrupted(bundle_path, tmp_path_factory):
    return straight_run(bundle_path, tmp_path_factory.mktemp("straight")), None


@pytest.fixture(scope="module")
def translation_uninterrupted(translation_bundle, tmp_path_factory) -> Path:
    return straight_run(translation_bundle, tmp_path_factory.mktemp("straight-ko-en"))


def test_every_recipe_trains_and_its_output_loads_with_peft(uninterrupted, translation_uninterrupted, tiny_model_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    base_logits = base(ids).logits
    for store, steps in ((uninterrupted[0], STEPS), (translation_uninterrupted, TR_STEPS)):
        record = json.loads((store / "runs/straight/run.json").read_text())
        assert {k: v["steps"] for k, v in record["stages"].items()} == steps
        for stage in steps:
            final = store / "runs/straight" / stage / "final"
            assert (final / "_COMPLETE").exists() and (final / "tokenizer.json").exists()
            assert not (final / "ref").exists()  # TRL's frozen reference is not part of the output
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final)
            assert not torch.allclose(model(ids).logits, base_logits)  # the adapter learned something
            metrics = [json.loads(line) for line in (store / "runs/straight" / stage / "metrics.jsonl").open()]
            train_logs = [m for m in metrics if "loss" in m and not m.get("final")]
            assert [m["step"] for m in train_logs] == list(range(1, steps[stage] + 1))
            assert all("step_time" in m and "learning_rate" in m for m in train_logs), train_logs
            assert any(m.get("tokens_per_s") for m in train_logs) or stage != "sft"
            # the last step alone moves every tensor far more than a resume may differ (RESUME_ATOL)
            before = store / "runs/straight" / stage / "checkpoints" / str(steps[stage] - 1)
            if before.exists():
                last_step = max_change(load_file(before / "adapter_model.safetensors"),
                                       final_weights(store, "straight", stage))
                assert min(last_step.values()) > 5 * RESUME_ATOL, (stage, min(last_step.values()))
            if stage == "grpo":
                assert all("reward_mean" in m and "reward_std" in m for m in train_logs)
                # the rewards differ between completions, so GRPO has gradients: its resume is a real check
                assert any(m["reward_std"] > 0 for m in train_logs) and any(m["grad_norm"] > 0 for m in train_logs)
            assert list((store / "runs/straight" / stage / "tensorboard").rglob("events.out.tfevents*"))
    # later stages continue the same adapter: DPO's final differs from SFT's and still loads on the base
    store = uninterrupted[0]
    sft, dpo = final_weights(store, "straight", "sft"), final_weights(store, "straight", "dpo")
    assert sft.keys() == dpo.keys() and any(not torch.equal(sft[k], dpo[k]) for k in sft)
    pairs = store / "runs/straight/dpo-on-policy/on_policy_pairs"
    assert (pairs / "_COMPLETE").exists() and (pairs / "pairs.jsonl").read_text().strip()


def test_finished_stages_are_not_rerun(uninterrupted, bundle_path, tmp_path):
    store, _ = uninterrupted
    before = (store / "runs/straight/run.json").read_text()
    result = run_trainer(bundle_path, store, "straight", tmp_path)
    assert result.returncode == 0
    assert result.stderr.count("already complete") == len(STEPS)
    assert (store / "runs/straight/run.json").read_text() == before


def checkpoint_order(steps: dict[str, int], save_every: dict[str, int]) -> list[tuple[str, int]]:
    return [(stage, step) for stage in steps for step in range(save_every[stage], steps[stage] + 1, save_every[stage])]


def run_until_done(bundle: Path, store: str, run_id: str, tmp: Path, faults: list[str], **extra_env: str) -> list[str]:
    """Start the trainer again and again, the i-th process with FT_FAULT=faults[i % len(faults)], until
    one exits 0. Returns the stderr of every process that was stopped (SIGKILL: -9, SIGTERM: 75), and
    that of the one that finished."""
    stopped = []
    environ = {**env(tmp), "FT_LEASE_TTL_S": "1", "FT_LEASE_WAIT_S": "60", **extra_env}
    for attempt in range(60):
        result = run_trainer(bundle, store, run_id, tmp, environ={**environ, "FT_FAULT": faults[attempt % len(faults)]})
        if result.returncode == 0:
            return stopped, result.stderr
        assert result.returncode in (-signal.SIGKILL, 75), result.stderr[-3000:]
        stopped.append(result.stderr)
    raise AssertionError("the trainer never finished")


def resumed_from(stderr: str) -> tuple[str, int] | None:
    import re

    found = re.findall(r"(\S+): resuming from checkpoint (\d+)", stderr.replace("\n", " "))
    return (found[-1][0], int(found[-1][1])) if found else None


def assert_same_finals(straight: Path, store: Path, run_id: str, stages) -> None:
    for stage in stages:
        assert_same_weights(final_weights(straight, "straight", stage), final_weights(store, run_id, stage), stage)


def test_kill_9_after_every_checkpoint_then_resume_is_exact(bundle_path, uninterrupted, tmp_path):
    """Exhaustive: each process is killed -9 right after its first new checkpoint is complete in the
    store, so every checkpoint of every stage (the last one, before the final upload, included) is once
    the point a restart resumes from; the final adapters equal the uninterrupted run's exactly.
    (SFT, DPO on the bundle's pairs, on-policy DPO here; SFT and GRPO over S3 below.)"""
    bundle, straight, steps, save_every = bundle_path, uninterrupted[0], STEPS, SAVE_EVERY
    store = tmp_path / "store"
    stopped, finished = run_until_done(bundle, str(store), "preempted", tmp_path, ["kill-after-checkpoint"])
    order = checkpoint_order(steps, save_every)
    # the first process resumes from nothing, the i-th from the (i-1)-th checkpoint, the last from the last
    assert [resumed_from(e) for e in [*stopped, finished]] == [None, *order]
    record = json.loads((store / "runs/preempted/run.json").read_text())
    assert {k: v["steps"] for k, v in record["stages"].items()} == steps
    assert_same_finals(straight, store, "preempted", steps)
    for stage in steps:  # each step logged exactly once across all the restarts
        metrics = [json.loads(line) for line in (store / "runs/preempted" / stage / "metrics.jsonl").open()]
        assert [m["step"] for m in metrics if "loss" in m and not m.get("final")] == list(range(1, steps[stage] + 1))


@pytest.mark.integration
def test_kill_9_mid_upload_and_after_every_checkpoint_on_s3(translation_bundle, translation_uninterrupted, tmp_path,
                                                             moto_server, monkeypatch):
    """The same over S3 (moto_server), on the ko-en job (SFT → GRPO): the first process dies half-way
    through its first checkpoint's upload (no marker, objects left behind in the prefix), the next ones
    right after each next checkpoint. The cut-off checkpoint is re-uploaded over its remains, every
    checkpoint is once a resume point, and the store never blesses a mixture."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server["url"], aws_access_key_id="x", aws_secret_access_key="x",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="kills")
    aws = {"AWS_ENDPOINT_URL": moto_server["url"], "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1"}
    order = checkpoint_order(TR_STEPS, TR_SAVE_EVERY)
    stopped, finished = run_until_done(translation_bundle, "s3://kills/p", "preempted", tmp_path,
                                       ["kill-mid-upload"] + ["kill-after-checkpoint"] * (len(order) + 1), **aws)
    assert [resumed_from(e) for e in [*stopped, finished]] == [None, None, *order]
    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    local = tmp_path / "mirror"
    for stage in TR_STEPS:
        from trainer.store import open_store

        open_store("s3://kills/p").download_dir(f"runs/preempted/{stage}/final", local / "runs/preempted" / stage /
                                                "final", progress=False, require_manifest=True)
    assert_same_finals(translation_uninterrupted, local, "preempted", TR_STEPS)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="kills", Prefix="p/runs/preempted/").get("Contents", [])]
    for ckpt in {k.rsplit("/", 1)[0] for k in keys if k.endswith("/_COMPLETE") and "/checkpoints/" in k}:
        manifest = json.loads(s3.get_object(Bucket="kills", Key=f"{ckpt}/_MANIFEST.json")["Body"].read())
        under = {k[len(ckpt) + 1:] for k in keys if k.startswith(ckpt + "/")
                 and not k[len(ckpt) + 1:].startswith("_PARTS/")}  # the store's part manifests
        assert under == set(manifest["files"]) | {"_COMPLETE", "_MANIFEST.json"}, ckpt


@pytest.mark.parametrize("job", ["math", "translation"])
def test_sigterm_mid_stage_checkpoints_and_exits_75(job, request, tmp_path):
    """A preemption notice: each process gets SIGTERM as a step begins (its 3rd in the math job, 2nd in
    ko-en), saves a checkpoint at that step whatever save_steps says, exits 75, and the next resumes
    there: SFT, DPO and GRPO are each stopped mid-stage, and the finals equal the uninterrupted run's."""
    if job == "math":
        bundle, straight, steps, at = (request.getfixturevalue("bundle_path"),
                                       request.getfixturevalue("uninterrupted")[0], STEPS, 3)
        mid_stage = {("sft", 3), ("dpo", 2)}
    else:
        bundle, straight, steps, at = (request.getfixturevalue("translation_bundle"),
                                       request.getfixturevalue("translation_uninterrupted"), TR_STEPS, 2)
        mid_stage = {("grpo", 2)}
    store = tmp_path / "store"
    stopped, finished = run_until_done(bundle, str(store), "sigterm", tmp_path, [f"sigterm-at-step={at}"])
    assert all("SIGTERM: saving a checkpoint" in e and "exit 75" in " ".join(e.split()) for e in stopped)
    resumed = {point for e in stopped[1:] if (point := resumed_from(e))}
    assert mid_stage <= resumed | {resumed_from(finished)}, resumed
    assert_same_finals(straight, store, "sigterm", steps)


def test_second_sigterm_or_deadline_exits_75_without_a_marker(bundle_path, tmp_path):
    for fault, extra in (("sigterm-twice-at-step=1", {}), ("sigterm-at-step=1", {"FT_SIGTERM_GRACE_S": "0"})):
        store = tmp_path / fault / "store"
        result = run_trainer(bundle_path, store, "t", tmp_path / fault,
                             environ={**env(tmp_path / fault), "FT_FAULT": fault, **extra})
        assert result.returncode == 75, result.stderr[-3000:]
        assert "preempted:" in result.stderr
        assert not list((store / "runs/t/sft").rglob("_COMPLETE"))  # no checkpoint, no final


def test_save_every_minutes_bounds_what_a_kill_loses(bundle_path, translation_bundle, tmp_path):
    """`save_every_minutes` adds checkpoints between `save_steps` ones (here: after every step)."""
    root = tmp_path / "job"
    shutil.copytree(bundle_path.parent.parent / "data", root / "data")
    spec = (bundle_path.parent.parent / "job.yaml").read_text().replace(
        "save_steps: 2, save_total_limit: 5}", "save_steps: 100, save_total_limit: 10, save_every_minutes: 0.0001}", 1)
    assert "save_every_minutes" in spec
    (root / "job.yaml").write_text(spec)
    bundle = write_bundle(load_spec(root / "job.yaml"), root, root / "bundles").path
    result = run_trainer(bundle, tmp_path / "store", "timed", tmp_path, "--stage", "sft")
    assert result.returncode == 0, result.stderr[-3000:]
    steps = sorted(int(p.name) for p in (tmp_path / "store/runs/timed/sft/checkpoints").iterdir())
    assert steps == list(range(1, STEPS["sft"] + 1))


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
    assert "flash_attention_2 needs CUDA" in result.stderr and "Traceback" not in result.stderr
    # A start that fails writes no run record: nothing for `ft eval` / `ft status` to trip over later.
    assert not (tmp_path / "store/runs/fa/run.json").exists()
    unknown = run_trainer(bundle, tmp_path / "store", "ppo", tmp_path, "--stage", "ppo")
    assert unknown.returncode == 2 and "--stage ppo: no such stage" in unknown.stderr
    assert not (tmp_path / "store/runs/ppo").exists()


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


def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(uninterrupted, bundle_path, tmp_path):
    """A checkpoint whose files do not match its manifest (bit rot, a hand edit, a broken copy) is not
    resumed from: the trainer says so, resumes from the one before, and still ends exactly."""
    straight_store, _ = uninterrupted
    src = straight_store / "runs/straight/sft/checkpoints"
    dest = tmp_path / "store/runs/fallback/sft/checkpoints"
    for step in (2, 4):
        shutil.copytree(src / str(step), dest / str(step))
    weights = dest / "4" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run_trainer(bundle_path, tmp_path / "store", "fallback", tmp_path, "--stage", "sft")
    assert result.returncode == 0, result.stderr[-3000:]
    text = " ".join(result.stderr.split())
    assert "checkpoint 4 is corrupt" in text and "falling back" in text and "resuming from checkpoint 2" in text
    assert_same_finals(straight_store, tmp_path / "store", "fallback", ["sft"])


def test_a_second_trainer_on_the_same_run_does_not_train(translation_bundle, tmp_path):
    """One run, one writer: a live lease held by another trainer makes this one exit 75 before writing
    anything; an expired lease (its holder died) is taken over."""
    from trainer.lease import RunLease
    from trainer.store import open_store

    store = open_store(tmp_path / "store")
    other = RunLease(store, "runs/twice/_LEASE", ttl=600, holder="other-vm:1234")
    other.acquire()
    try:
        result = run_trainer(translation_bundle, tmp_path / "store", "twice", tmp_path, "--stage", "sft",
                             environ={**env(tmp_path), "FT_LEASE_WAIT_S": "1"})
        assert result.returncode == 75, result.stderr[-3000:]
        assert "being trained by other-vm:1234" in " ".join(result.stderr.split())
        assert store.list("runs/twice") == [("_LEASE", store.list("runs/twice")[0][1])]  # nothing else written
    finally:
        other._stop.set()  # the holder dies without releasing: its lease only expires
    store.write_text("runs/twice/_LEASE", json.dumps({"holder": "other-vm:1234", "expires_at": time.time() - 1}))
    result = run_trainer(translation_bundle, tmp_path / "store", "twice", tmp_path, "--stage", "sft")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not store.exists("runs/twice/_LEASE")  # released at the end


@pytest.fixture
def stopped_moto():
    """A moto_server of the test's own, so freezing it (SIGSTOP) stalls nobody else."""
    from conftest import free_port

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import boto3

    deadline = time.time() + 30
    while True:
        try:
            boto3.client("s3", endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x",
                         region_name="us-east-1").create_bucket(Bucket="frozen")
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    yield {"url": url, "proc": proc}
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=10)


def test_a_stalled_store_exits_75_and_a_missing_bucket_exits_2(translation_bundle, tmp_path, stopped_moto):
    aws = {"AWS_ENDPOINT_URL": stopped_moto["url"], "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1", "FT_STORE_TIMEOUT_S": "2", "AWS_MAX_ATTEMPTS": "1"}
    missing = subprocess.run(trainer_cmd(translation_bundle, "s3://no-such-bucket/p", "m"), capture_output=True,
                             text=True, timeout=300, env={**env(tmp_path), **aws})
    assert missing.returncode == 2, missing.stderr[-3000:]
    assert "no such bucket" in missing.stderr and "Traceback" not in missing.stderr
    stopped_moto["proc"].send_signal(signal.SIGSTOP)  # the endpoint accepts connections and never answers
    started = time.time()
    stalled = subprocess.run(trainer_cmd(translation_bundle, "s3://frozen/p", "s"), capture_output=True, text=True,
                             timeout=300, env={**env(tmp_path), **aws})
    assert stalled.returncode == 75, stalled.stderr[-3000:]
    assert "not answering" in " ".join(stalled.stderr.split()) and "Traceback" not in stalled.stderr
    assert time.time() - started < 120


def test_preempted_after_the_last_checkpoint_trains_no_extra_step(uninterrupted, translation_uninterrupted,
                                                                  bundle_path, translation_bundle, tmp_path):
    """A kill between the last checkpoint and the final upload: the restart finishes from that
    checkpoint with exactly max_steps and the same weights (the HF Trainer alone would run one step more)."""
    straight_store, _ = uninterrupted
    for bundle, straight, stage, steps, before in (
            (bundle_path, straight_store, "dpo", STEPS["dpo"], ["sft"]),
            (translation_bundle, translation_uninterrupted, "grpo", TR_STEPS["grpo"], ["sft"])):
        store = tmp_path / stage / "store"
        run = store / "runs/last"
        for done in before:  # earlier stages complete, as after a kill during this one
            shutil.copytree(straight / "runs/straight" / done, run / done)
        shutil.copytree(straight / "runs/straight" / stage / "checkpoints" / str(steps),
                        run / stage / "checkpoints" / str(steps))
        result = run_trainer(bundle, store, "last", tmp_path / stage, "--stage", stage)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"checkpoint {steps}" in result.stderr
        assert json.loads((run / "run.json").read_text())["stages"][stage]["steps"] == steps
        assert_same_finals(straight, store, "last", [stage])


def test_budget_reached_mid_stage_checkpoints_and_exits_3(translation_bundle, tmp_path):
    """resources.max_cost_usd holds while running: on a (pretend) cloud node whose catalog price makes
    every second expensive, the stage saves a checkpoint and exits 3 (not retried); run.json bills it.
    SkyPilot's environment is written by hand here: there is no cloud to run on."""
    cluster = {"SKYPILOT_CLUSTER_INFO": json.dumps({"cloud": "RunPod", "region": "CA", "zone": None}),
               "SKYPILOT_NUM_NODES": "1", "SKYPILOT_NUM_GPUS_PER_NODE": "1",
               "FT_PRICES": json.dumps([{"cloud": "runpod", "region": "CA", "instance_type": "1x_L40S",
                                         "accelerator": "L40S", "count": 1, "spot": True,
                                         "price_per_hour": 36000.0}]),
               "FT_MAX_COST_USD": "0.5"}  # $10 a second: the budget is gone within the first step
    store = tmp_path / "store"
    result = run_trainer(translation_bundle, store, "budget", tmp_path, "--stage", "sft",
                         environ={**env(tmp_path), **cluster})
    assert result.returncode == 3, result.stderr[-3000:]
    assert "budget reached" in result.stderr
    record = json.loads((store / "runs/budget/run.json").read_text())
    entry = record["stages"]["sft"]
    assert entry["status"] == "stopped_budget" and entry["cost_usd"] > 0.5
    assert record["cost"]["price_per_hour"] == 36000.0 and record["cost"]["instance"]["cloud"] == "runpod"
    assert list((store / "runs/budget/sft/checkpoints").glob("*/_COMPLETE"))


def test_wandb_key_reports_offline_and_stays_out_of_the_store(tmp_path, math_data, tiny_model_dir):
    """WANDB_API_KEY set adds W&B to report_to, so wandb must be installed (the train extra, the GPU image's
    lock): a short SFT run offline succeeds, writes W&B's offline run under the trainer's run name, and the
    key's value is in no file of the store nor in the trainer's output."""
    bundle = _variant(tmp_path, math_data, tiny_model_dir, "lora")
    key = "0123456789abcdef" * 2 + "fake0000"  # 40 characters, as a real key has; never sent anywhere
    wandb_dirs = {name: str(tmp_path / "wandb" / name.lower()) for name in
                  ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")}
    environ = {**env(tmp_path), **wandb_dirs, "WANDB_API_KEY": key, "WANDB_MODE": "offline",
               "WANDB_SILENT": "true"}
    environ.pop("WANDB_DISABLED", None)  # conftest disables W&B for every other test
    result = run_trainer(bundle, tmp_path / "store", "wb", tmp_path, "--stage", "sft", environ=environ)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((Path(wandb_dirs["WANDB_DIR"]) / "wandb").glob("offline-run-*"))
    assert runs and runs[-1].name.endswith("-wb-sft"), runs  # WANDB_RUN_ID: the same run after a recovery
    assert list(runs[-1].glob("*.wandb")), list(runs[-1].iterdir())
    store_files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert any(p.name == "metrics.jsonl" for p in store_files)
    assert [p for p in store_files if key.encode() in p.read_bytes()] == []
    assert key not in result.stderr
