"""The job YAMLs, sky/config.yaml and the accelerate/DeepSpeed configs, checked by the tools that
consume them: SkyPilot's parser and schemas, bash, accelerate's and DeepSpeed's config classes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs import accelerate_config

REPO = Path(__file__).resolve().parent.parent
JOB_YAMLS = ["sft", "dpo", "grpo", "eval", "pipeline"]
ENVS = {"BUNDLE": "s3://bucket/prefix/bundles/math-gsm8k-0123456789ab", "RUN_ID": "run-1"}


def _raw(name: str) -> dict:
    return yaml.safe_load((REPO / "jobs" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", JOB_YAMLS)
def test_job_yaml_is_a_valid_skypilot_task(name):
    from sky.utils import common_utils, schemas

    import sky

    path = REPO / "jobs" / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("# ") and "sky jobs launch jobs/" in text.split("\nname:")[0]  # usage on top
    raw = yaml.safe_load(text)
    common_utils.validate_schema(raw, schemas.get_task_schema(), "invalid task: ")
    common_utils.validate_schema({k: v for k, v in raw["resources"].items()}, schemas.get_resources_schema(),
                                 "invalid resources: ")
    with pytest.raises(ValueError, match="BUNDLE"):
        sky.Task.from_yaml(str(path))  # BUNDLE has no default: it must be given
    task = sky.Task.from_yaml_config(raw, env_overrides=ENVS,
                                     secrets_overrides={"HF_TOKEN": "hf_x", "AWS_ACCESS_KEY_ID": "k"})
    assert task.envs["BUNDLE"] == ENVS["BUNDLE"]
    assert {"HF_TOKEN", "WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(task.secrets)
    assert {"BUNDLE", "RUN_ID", "FT_STORE"} <= set(task.envs)
    clouds = {str(r.cloud).lower() for r in task.resources}
    assert clouds == {"aws", "lambda", "runpod", "vast"}
    for r in task.resources:
        assert r.extract_docker_image() is not None, "runs the GPU image"
        assert r.job_recovery["recover_on_exit_codes"] == [75]
        assert r.job_recovery["max_restarts_on_errors"] == 0  # bad input (exit 2) is not retried
        if str(r.cloud).lower() == "lambda":
            assert not r.use_spot  # Lambda has no spot
        else:
            assert r.use_spot
    assert not task.file_mounts and not task.storage_mounts  # no bucket mounts: the trainer syncs itself


def test_every_image_line_names_the_registry_ft_replaces():
    """The YAMLs name the project's registry (what `sky jobs launch` runs as is); `ft launch` / `ft serve up`
    swap in the registry setting's content-hash tag. No YAML declares the docker login: empty values
    would make SkyPilot log in to a server named "" and pull `/ghcr.io/…`; `ft` adds it only when set."""
    import sky
    from jobs import images_ref

    for name in JOB_YAMLS:
        raw = _raw(name)
        assert raw["resources"]["image_id"] == f"docker:{images_ref.GPU_IMAGE}", name
        assert not set(raw.get("secrets") or {}) & set(images_ref.DOCKER_LOGIN), name
        task = sky.Task.from_yaml_config(raw, env_overrides=ENVS)
        assert all(r.docker_login_config is None for r in task.resources)
    serve_raw = yaml.safe_load((REPO / "sky" / "serve.yaml").read_text())
    assert serve_raw["resources"]["image_id"] == f"docker:{images_ref.VLLM_IMAGE}"
    assert not set(serve_raw["secrets"]) & set(images_ref.DOCKER_LOGIN)
    assert images_ref.GPU_IMAGE.startswith(images_ref.REGISTRY + "/")
    # with the login given (`sky jobs launch … --secret SKYPILOT_DOCKER_…`), SkyPilot attaches it
    login = {"SKYPILOT_DOCKER_USERNAME": "u", "SKYPILOT_DOCKER_PASSWORD": "p", "SKYPILOT_DOCKER_SERVER": "ghcr.io"}
    task = sky.Task.from_yaml_config(_raw("sft"), env_overrides=ENVS, secrets_overrides=login)
    assert {r.docker_login_config.server for r in task.resources} == {"ghcr.io"}


def test_sky_config_is_valid_layered_config():
    from sky.utils import common_utils, schemas

    cfg = yaml.safe_load((REPO / "sky" / "config.yaml").read_text())
    common_utils.validate_schema(cfg, schemas.get_config_schema(), "invalid sky/config.yaml: ")
    assert set(cfg["allowed_clouds"]) == {"aws", "lambda", "runpod", "vast"}
    assert any(o.startswith("--shm-size") for o in cfg["docker"]["run_options"])
    assert cfg["jobs"]["controller"]["resources"]["infra"] == "aws"  # a cloud that can host controllers


def _launch_plan(run_text: str, env: dict[str, str], tmp_path: Path) -> tuple[int, list[list[str]], str]:
    """Run a YAML's own `run:` text with bash, `python` on PATH being this interpreter, the launcher in
    dry-run mode (FT_LAUNCH_DRY_RUN): the commands each node would start, with this interpreter as "python"."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nexec {sys.executable} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
                "FT_LAUNCH_DRY_RUN": "1", "CUDA_VISIBLE_DEVICES": "", **env}
    proc = subprocess.run(["bash", "-c", run_text], env=full_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    commands = [["python" if a == sys.executable else a for a in json.loads(line)["command"]]
                for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, commands, proc.stderr


def _yaml_env(name: str, **env: str) -> dict[str, str]:
    raw = _raw(name)
    return {**{k: "" if v is None else str(v) for k, v in raw["envs"].items()}, **ENVS, **env}


def test_every_run_text_is_one_call_of_the_image_entry_point():
    """SkyPilot's own examples: a `run:` of a few lines calling the framework's CLI."""
    for name in JOB_YAMLS:
        lines = [line for line in _raw(name)["run"].splitlines() if line.strip() and not line.strip().startswith("#")]
        assert len(lines) == 1 and lines[0].startswith("python -m trainer launch "), name


def test_run_text_single_gpu(tmp_path):
    rc, calls, err = _launch_plan(_raw("sft")["run"], _yaml_env("sft", SKYPILOT_NUM_GPUS_PER_NODE="1"), tmp_path)
    assert rc == 0, err
    assert calls == [["python", "-m", "trainer", "run", ENVS["BUNDLE"], "--run-id", "run-1", "--stage", "sft"]]


def test_run_text_pipeline_evaluates_on_the_head_node_only(tmp_path):
    env = {"SKYPILOT_NUM_GPUS_PER_NODE": "8", "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6",
           "FT_STRATEGY": "deepspeed_zero3_offload"}
    for rank, expected_calls in (("1", 1), ("0", 2)):
        rc, calls, err = _launch_plan(_raw("pipeline")["run"], _yaml_env("pipeline", SKYPILOT_NODE_RANK=rank, **env),
                                      tmp_path)
        assert rc == 0, err
        assert len(calls) == expected_calls
        flags = " ".join(calls[0])
        for part in ("-m accelerate.commands.launch", "--num_machines 2", f"--machine_rank {rank}",
                     "--main_process_ip 10.0.0.5", "--num_processes 16", "--use_deepspeed", "--zero_stage 3",
                     "-m trainer run " + ENVS["BUNDLE"]):
            assert part in flags
    assert calls[1] == ["python", "-m", "trainer", "eval", ENVS["BUNDLE"], "--run-id", "run-1"]


def test_run_text_eval_is_one_process_on_the_head_node(tmp_path):
    env = _yaml_env("eval", SKYPILOT_NUM_GPUS_PER_NODE="4")
    assert _launch_plan(_raw("eval")["run"], env, tmp_path)[1] == [
        ["python", "-m", "trainer", "eval", ENVS["BUNDLE"], "--run-id", "run-1"]]


def test_run_text_exit_code_is_the_trainers(tmp_path):
    """A bad bundle is exit 2 (final), through the YAML's own run text and the real trainer."""
    env = {k: v for k, v in _yaml_env("grpo", BUNDLE=str(tmp_path / "no-such-bundle")).items()}
    rc, _, err = _launch_plan(_raw("grpo")["run"], {**env, "FT_LAUNCH_DRY_RUN": ""}, tmp_path)
    assert rc == 2, err
    assert "Traceback" not in err


def test_run_text_uses_accelerate_config_from_ft_launch(tmp_path):
    from jobs.launch import accelerate_envs
    from trainer.spec import parse_spec

    spec = parse_spec({"name": "x", "model": {"base": "m-7B"}, "data": {"task": "math", "sft_train": "a"},
                       "stages": [{"method": "sft"}], "distributed": {"strategy": "deepspeed_zero2"}})
    env = _yaml_env("sft", SKYPILOT_NUM_GPUS_PER_NODE="4", **accelerate_envs(spec))
    rc, calls, err = _launch_plan(_raw("sft")["run"], env, tmp_path)
    assert rc == 0, err
    config = Path(calls[0][calls[0].index("--config_file") + 1])
    assert yaml.safe_load(config.read_text())["distributed_type"] == "DEEPSPEED"
    assert json.loads((config.parent / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 2
    assert "--num_processes" in calls[0]


def test_checked_in_accelerate_configs_are_current():
    for name, text in accelerate_config.checked_in_files().items():
        assert (REPO / "jobs" / "accelerate" / name).read_text() == text, f"regenerate: {name}"


@pytest.mark.parametrize("strategy", accelerate_config.STRATEGIES)
def test_accelerate_configs_load_in_accelerate(strategy, tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    # node 1 of 2, four GPUs each, as the run script's flags make it on the cloud
    cfg = accelerate_config.accelerate_config(strategy, num_machines=2, machine_rank=1, num_processes=8,
                                              main_process_ip="10.1.1.1", ds_dir=tmp_path)
    if strategy in accelerate_config.DS_FILES:
        (tmp_path / accelerate_config.DS_FILES[strategy]).write_text(json.dumps(accelerate_config.DEEPSPEED[strategy]))
    path = tmp_path / "accelerate.yaml"
    path.write_text(accelerate_config.render(cfg))
    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    assert (cfg.num_machines, cfg.machine_rank, cfg.num_processes, cfg.main_process_ip) == (2, 1, 8, "10.1.1.1")
    assert str(cfg.distributed_type).endswith(
        {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(strategy, "DEEPSPEED"))
    if cfg.deepspeed_config:
        assert Path(cfg.deepspeed_config["deepspeed_config_file"]).is_file()


@pytest.mark.parametrize("strategy", list(accelerate_config.DEEPSPEED))
def test_deepspeed_json_validated_by_deepspeed(strategy):
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig, ZeroStageEnum

    cfg = json.loads((REPO / "jobs" / "accelerate" / accelerate_config.DS_FILES[strategy]).read_text())
    # transformers replaces every "auto" from the TrainingArguments; do what it does, then let
    # DeepSpeed's own config classes parse the result (world size 1, no process group needed).
    resolved = json.loads(json.dumps(cfg).replace('"auto"', "null"))
    resolved.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=4, train_batch_size=16,
                    gradient_clipping=1.0, bf16={"enabled": True}, fp16={"enabled": False})
    zero = resolved["zero_optimization"]
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        if key in zero:
            zero[key] = 50_000_000 if key != "stage3_param_persistence_threshold" else 40960
    parsed_zero = DeepSpeedZeroConfig(**zero)
    assert parsed_zero.stage == (ZeroStageEnum.gradients if strategy == "deepspeed_zero2" else ZeroStageEnum.weights)
    if strategy == "deepspeed_zero3_offload":
        assert parsed_zero.offload_optimizer.device == "cpu" and parsed_zero.offload_param.device == "cpu"
    os.environ.setdefault("WORLD_SIZE", "1")
    ds = DeepSpeedConfig(resolved)
    assert ds.train_batch_size == 16 and ds.zero_optimization_stage == parsed_zero.stage


def _mixed(argv: list[str]) -> str:
    return argv[argv.index("--mixed_precision") + 1]


@pytest.mark.parametrize(("dtype", "strategy", "expected"), [
    ("bfloat16", "ddp", "bf16"), ("float16", "ddp", "fp16"), ("float32", "ddp", "no"),
    ("float16", "fsdp", "fp16"), ("float16", "none", "fp16"), ("float32", "deepspeed_zero2", "no")])
def test_mixed_precision_follows_model_dtype(dtype, strategy, expected, tmp_path):
    """`ft launch` renders the task; its own run text passes the spec's model.dtype to accelerate (two
    GPUs on the node), and the accelerate config it ships says the same."""
    from jobs.launch import build_task_config
    from trainer.spec import parse_spec

    spec = parse_spec({"name": "x", "model": {"base": "m-7B", "dtype": dtype},
                       "data": {"task": "math", "sft_train": "a"}, "stages": [{"method": "sft"}],
                       "distributed": {"strategy": strategy}})
    cfg = build_task_config(spec, ENVS["BUNDLE"], "run-1", [], stage="sft", image="img:1")
    assert cfg["envs"]["FT_MIXED_PRECISION"] == expected
    env = {k: "" if v is None else str(v) for k, v in cfg["envs"].items()}
    rc, calls, err = _launch_plan(cfg["run"], {**env, "SKYPILOT_NUM_GPUS_PER_NODE": "2"}, tmp_path)
    assert rc == 0, err
    assert _mixed(calls[0]) == expected
    if strategy != "none":
        shipped = yaml.safe_load(Path(calls[0][calls[0].index("--config_file") + 1]).read_text())
        assert shipped["mixed_precision"] == expected


@pytest.mark.parametrize("name", ["sft", "dpo", "grpo", "pipeline"])  # eval.yaml runs one process
def test_mixed_precision_auto_is_decided_on_the_node(name, tmp_path):
    """model.dtype auto: every YAML leaves it to the node (trainer.launch.mixed_precision, tested over
    every compute capability in test_launcher.py); this CPU has no GPU, so no mixed precision."""
    from jobs.launch import build_task_config
    from trainer.spec import parse_spec

    spec = parse_spec({"name": "x", "model": {"base": "m-7B"}, "data": {"task": "math", "sft_train": "a"},
                       "stages": [{"method": "sft"}], "distributed": {"strategy": "ddp"}})
    cfg = build_task_config(spec, ENVS["BUNDLE"], "run-1", [], stage=None if name == "pipeline" else "sft",
                            image="img:1")
    assert cfg["envs"]["FT_MIXED_PRECISION"] == "auto" == _raw(name)["envs"]["FT_MIXED_PRECISION"]
    env = {k: "" if v is None else str(v) for k, v in cfg["envs"].items()}
    rc, calls, err = _launch_plan(_raw(name)["run"], {**env, "SKYPILOT_NUM_GPUS_PER_NODE": "4"}, tmp_path)
    assert rc == 0, err
    assert _mixed(calls[0]) == "no"


def test_merge_yaml_is_a_valid_skypilot_task():
    """jobs/merge.yaml: one process (`python -m trainer merge`) in the GPU image, RUN required, the
    store's and the Hub's secrets, spot with the same recovery rules as the training jobs."""
    from sky.utils import common_utils, schemas

    import sky
    from jobs import images_ref

    path = REPO / "jobs" / "merge.yaml"
    text = path.read_text()
    assert text.startswith("# ") and "sky jobs launch jobs/merge.yaml" in text.split("\nname:")[0]
    raw = yaml.safe_load(text)
    common_utils.validate_schema(raw, schemas.get_task_schema(), "invalid task: ")
    assert raw["resources"]["image_id"] == f"docker:{images_ref.GPU_IMAGE}"  # read before SkyPilot consumes raw
    run_text = raw["run"]
    with pytest.raises(ValueError, match="RUN"):
        sky.Task.from_yaml(str(path))  # RUN has no default: it must be given
    task = sky.Task.from_yaml_config(raw, env_overrides={"RUN": "s3://b/p/runs/r1"},
                                     secrets_overrides={"HF_TOKEN": "hf_x"})
    assert {"HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(task.secrets)
    assert {str(r.cloud).lower() for r in task.resources} == {"aws", "lambda", "runpod", "vast"}
    for r in task.resources:
        assert r.job_recovery["recover_on_exit_codes"] == [75] and r.job_recovery["max_restarts_on_errors"] == 0
    assert "python -m trainer merge \"$RUN\" --stage \"$STAGE\"" in run_text
    assert "accelerate" not in run_text  # one process
    assert not task.file_mounts and not task.storage_mounts


def test_launching_one_reward_stage_runs_that_stage_only(tmp_path):
    """`ft launch CONFIG --stage rm` (a reward stage: no YAML of its own) renders jobs/pipeline.yaml with
    STAGE set, and its run text trains that stage only (it used to run every stage), then evaluates the
    finished stages that generate and writes the report."""
    from jobs.launch import build_task_config
    from trainer.spec import parse_spec

    spec = parse_spec({"name": "x", "model": {"base": "m-7B"},
                       "data": {"task": "math", "sft_train": "a", "dpo_train": "b", "grpo_train": "c"},
                       "stages": [{"method": "sft"}, {"name": "rm", "method": "reward"},
                                  {"method": "grpo", "reward_model": "rm"}]})
    cfg = build_task_config(spec, ENVS["BUNDLE"], "run-1", [], stage="rm", image="img:1")
    assert cfg["envs"]["STAGE"] == "rm"
    env = {k: "" if v is None else str(v) for k, v in cfg["envs"].items()}
    rc, calls, err = _launch_plan(cfg["run"], env, tmp_path)
    assert rc == 0, err
    assert calls == [["python", "-m", "trainer", "run", ENVS["BUNDLE"], "--run-id", "run-1", "--stage", "rm"],
                     ["python", "-m", "trainer", "eval", ENVS["BUNDLE"], "--run-id", "run-1"]]
