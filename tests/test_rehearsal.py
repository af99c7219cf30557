"""The cloud path rehearsed here (issue 11): `jobs/pipeline.yaml`'s own run text on two "nodes" of this
machine (jobs/rehearse.py: SkyPilot's node variables, the YAML's envs and secrets, a HOME, scratch and
work folder per node, gloo on 127.0.0.1), against moto_server over HTTP as the store.

Preempted: both nodes are killed with SIGKILL once the head node has sealed SFT's first checkpoint,
then started again with the same SKYPILOT_TASK_ID. The run must resume from that checkpoint and end
with the same step counts and bit-identical adapters as an uninterrupted two-node run; the head node
evaluates and writes the report; no secret value appears in the store or in any node's log.
Mocked: nothing but the cloud itself (the VMs are process trees, the GPUs gloo on the CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from resume_check import assert_same_weights
from spec_texts import math_spec

from jobs.rehearse import PROBE_SECRETS, Rehearsal, leaked_secrets, store_texts
from trainer.bundle import push_bundle, write_bundle
from trainer.run import Run
from trainer.spec import load_spec
from trainer.store import open_store

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
STEPS = {"sft": 4, "dpo": 2}
SPEC = math_spec("tiny-two-nodes", """finetune:
  method: lora
  lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}}
stages:
  - {{method: sft, max_steps: 4, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false, logging_steps: 1,
      save_steps: 2}}
  - {{method: dpo, max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false, logging_steps: 1,
      save_steps: 1}}
distributed: {{num_nodes: 2}}
resources: {{clouds: [aws]}}
evaluation: {{task: gsm8k, limit: 2, max_new_tokens: 8}}
""")


@pytest.fixture(scope="module")
def pushed_bundle(tmp_path_factory, math_data, tiny_model_dir, moto_server) -> tuple[str, str]:
    import boto3

    root = tmp_path_factory.mktemp("two-node-job")
    shutil.copytree(math_data, root / "data")
    (root / "job.yaml").write_text(SPEC.format(model=tiny_model_dir))
    bundle = write_bundle(load_spec(root / "job.yaml"), root, root / "bundles")
    store_uri = "s3://ft-rehearsal"
    s3 = {"AWS_ENDPOINT_URL": moto_server["url"], "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3.items():
            mp.setenv(k, v)
        boto3.client("s3", endpoint_url=moto_server["url"]).create_bucket(Bucket="ft-rehearsal")
        uri = push_bundle(bundle, store_uri, progress=False)
    return uri, moto_server["url"]


def _rehearsal(tmp_path: Path, bundle_uri: str, endpoint: str, task_id: str) -> Rehearsal:
    return Rehearsal(REPO / "jobs" / "pipeline.yaml", tmp_path, nodes=2, task_id=task_id,
                     env={"BUNDLE": bundle_uri, "AWS_ENDPOINT_URL": endpoint, "FT_STORE": "s3://ft-rehearsal",
                          "FT_LEASE_TTL_S": "3", "FT_LEASE_WAIT_S": "60"},
                     secrets={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", **PROBE_SECRETS})


def _finals(run: Run, tmp: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for stage in STEPS:
        local = run.fetch_dir(run.final(stage), tmp / run.run_id / stage)
        out[stage] = load_file(str(local / "adapter_model.safetensors"))
    return out


def test_two_nodes_preempted_resume_exactly_and_leak_nothing(pushed_bundle, tmp_path, monkeypatch):
    bundle_uri, endpoint = pushed_bundle
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    store = open_store("s3://ft-rehearsal")

    straight = _rehearsal(tmp_path / "straight", bundle_uri, endpoint, "two-straight")
    assert straight.start().codes == [0, 0], straight.attempts[-1].text()[-4000:]

    preempted_run = Run.in_store(store, "two-preempted")
    job = _rehearsal(tmp_path / "preempted", bundle_uri, endpoint, "two-preempted")
    first = job.start(fault="hold-after-checkpoint=2", until=lambda: 2 in preempted_run.complete_checkpoints("sft"))
    assert first.preempted, first.text()[-4000:]
    assert preempted_run.complete_checkpoints("sft") == [2]  # killed mid-stage, at the sealed checkpoint
    parts = {rel for rel, _ in store.list(preempted_run.checkpoint("sft", 2)) if rel.startswith("_PARTS/")}
    assert parts == {"_PARTS/node-0.json", "_PARTS/node-1.json"}  # each node uploaded its own ranks' state
    manifest = store.manifest(preempted_run.checkpoint("sft", 2))
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest)

    again = job.start()
    log = again.text()
    assert again.codes == [0, 0], log[-4000:]
    assert log.count("sft: resuming from checkpoint 2") == 2  # both nodes, from the sealed checkpoint

    straight_run = Run.in_store(store, "two-straight")
    for run in (straight_run, preempted_run):
        record = run.read_record()
        assert {k: v["steps"] for k, v in record["stages"].items()} == STEPS
        assert run.read_json(run.comparison())["rows"], "the head node evaluated"
        assert store.exists(run.report)
    a, b = _finals(straight_run, tmp_path / "finals"), _finals(preempted_run, tmp_path / "finals")
    for stage in STEPS:
        assert_same_weights(a[stage], b[stage], stage)

    texts = {**store_texts(store, "runs"), **{str(p): p.read_text(errors="replace")
                                               for j in (straight, job) for att in j.attempts for p in att.logs}}
    assert leaked_secrets(texts, PROBE_SECRETS) == []
    assert leaked_secrets({"probe": json.dumps(PROBE_SECRETS)}, PROBE_SECRETS)  # the check can fail


@pytest.mark.parametrize("config", ["demo.yaml", "demo_translation.yaml"])
def test_ft_rehearse_shrinks_the_job_to_a_valid_two_node_spec(config, tmp_path):
    """`ft rehearse`'s job (ran end to end on configs/demo.yaml with --preempt: every verdict ok in 80 s):
    the same architecture, a few rows and steps, a multi-node cloud, a bundle that freezes."""
    from transformers import AutoConfig

    from jobs.rehearse import shrunk_spec, tiny_model
    from trainer import builtin_model

    spec = load_spec(REPO / "configs" / config)
    model = tiny_model(spec.model.base, tmp_path / "tiny")
    shrunk = AutoConfig.from_pretrained(model)
    assert shrunk.model_type == AutoConfig.from_pretrained(builtin_model.materialize()).model_type
    assert shrunk.num_hidden_layers == 2 and shrunk.hidden_size == 64
    small = load_spec(shrunk_spec(spec, REPO / "configs", model, tmp_path / "job", rows=6, nodes=2))
    assert small.distributed.num_nodes == 2 and set(small.resources.clouds) <= {"aws", "lambda"}
    assert [s.stage_name for s in small.stages] == [s.stage_name for s in spec.stages]
    assert all(s.max_steps == 4 and s.save_steps == 2 for s in small.stages)
    for role in small.data.files():
        assert len((tmp_path / "job" / "data" / f"{role}.jsonl").read_text().splitlines()) <= 6
    write_bundle(small, tmp_path / "job", tmp_path / "bundles")
