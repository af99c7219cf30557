"""Serving: sky/serve.yaml parsed by SkyPilot's own schema, the envs and vLLM arguments derived from
a run's spec and checked before launch, and `ft serve check` against an OpenAI-compatible server.
vLLM itself needs a GPU, so the check runs against a small stand-in server started here that
speaks the same two routes (/v1/models and /v1/chat/completions)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from jobs import serve
from jobs.cli import app
from trainer.generation import VLLM_LORA_RANKS, vllm_lora_rank
from trainer.run import Run
from trainer.spec import parse_spec

SPEC = parse_spec({
    "name": "math-gsm8k",
    "model": {"base": "Qwen/Qwen2.5-Math-7B-Instruct", "dtype": "bfloat16"},
    "data": {"task": "math", "sft_train": "sft.jsonl", "grpo_train": "grpo.jsonl", "test": "test.jsonl"},
    "finetune": {"method": "qlora"},
    "stages": [{"method": "sft", "max_length": 2048}, {"method": "grpo", "max_length": 3072}],
}).resolved()
INFO = {"run_id": "r1", "spec": SPEC,
        "stages": {"sft": {"status": "done", "final": "runs/r1/sft/final"},
                   "grpo": {"status": "done", "final": "runs/r1/grpo/final"}}}


def test_envs_from_spec_adapter_on_base() -> None:
    envs = serve.service_envs(Run.with_record("s3://bucket/ft", INFO))
    assert envs == {"MAX_MODEL_LEN": "3072", "DTYPE": "bfloat16", "SERVED_MODEL_NAME": "math-gsm8k-grpo",
                    "ADAPTER_NAME": "math-gsm8k-grpo", "MODEL_URI": "Qwen/Qwen2.5-Math-7B-Instruct",
                    "ADAPTER_URI": "s3://bucket/ft/runs/r1/grpo/final"}
    assert serve.check_envs(envs, lora_rank=64) == []
    cmd = serve.vllm_command(envs)
    assert cmd[:3] == ["vllm", "serve", "Qwen/Qwen2.5-Math-7B-Instruct"]
    assert cmd[cmd.index("--max-model-len") + 1] == "3072" and cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert "--enable-lora" in cmd and "math-gsm8k-grpo=/models/adapter" in cmd


def test_envs_merged_and_full() -> None:
    run = Run.with_record("s3://bucket/ft", INFO)
    merged = serve.service_envs(run, "sft", merged_uri="s3://bucket/ft/merged/r1")
    assert merged["MODEL_URI"] == "s3://bucket/ft/merged/r1" and merged["ADAPTER_URI"] == ""
    full_info = {**INFO, "spec": {**SPEC, "finetune": {"method": "full"}}}
    full = serve.service_envs(Run.with_record("s3://b", full_info), "sft")
    assert full["MODEL_URI"] == "s3://b/runs/r1/sft/final" and full["ADAPTER_URI"] == ""
    builtin_info = {**INFO, "spec": {**SPEC, "model": {"base": "builtin:smollm2-135m"}}}
    builtin = serve.service_envs(Run.with_record("s3://b", builtin_info))
    assert builtin["MODEL_URI"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and builtin["DTYPE"] == "auto"


def test_check_envs_catches_problems(tmp_path: Path) -> None:
    envs = serve.service_envs(Run.with_record(str(tmp_path / "store"), INFO))
    problems = serve.check_envs({**envs, "DTYPE": "fp8", "MAX_MODEL_LEN": "0"}, lora_rank=1024,
                                trust_remote_code=True)
    text = "\n".join(problems)
    assert "DTYPE 'fp8'" in text and "MAX_MODEL_LEN" in text and "local path" in text
    assert "max_lora_rank" in text and "trust_remote_code" in text


def test_serve_yaml_is_a_valid_skyserve_task() -> None:
    import sky

    envs = serve.service_envs(Run.with_record("s3://bucket/ft", INFO))
    config = serve.service_config(envs, image="ft-vllm:0123456789abcdef")
    task = sky.Task.from_yaml_config(config)
    assert task.service is not None
    assert task.service.readiness_path == "/v1/models"
    assert task.service.min_replicas == 1 and task.service.max_replicas == 4
    assert task.service.base_ondemand_fallback_replicas == 1 and task.service.dynamic_ondemand_fallback
    res = next(iter(task.resources))
    assert res.use_spot and res.extract_docker_image() == "ft-vllm:0123456789abcdef"
    assert task.envs["ADAPTER_URI"] == "s3://bucket/ft/runs/r1/grpo/final"
    assert "vllm-entrypoint.sh" in task.run
    # The raw file needs MODEL_URI: SkyPilot refuses a null env that nobody supplied.
    raw = yaml.safe_load(serve.SERVE_YAML.read_text())
    with pytest.raises(ValueError, match="MODEL_URI"):
        sky.Task.from_yaml_config(raw)
    assert sky.Task.from_yaml_config(raw, env_overrides=[("MODEL_URI", "Qwen/Qwen2.5-7B-Instruct")]).service


def test_ft_serve_dry_run_prints_checked_yaml(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "runs" / "r1").mkdir(parents=True)
    (store / "runs" / "r1" / "run.json").write_text(json.dumps(INFO))
    out = CliRunner().invoke(app, ["serve", "up", "r1", "--store", str(store), "--dry-run", "--image", "ft-vllm:t"])
    assert out.exit_code == 0, out.output
    config = yaml.safe_load(out.output.split("# vLLM:")[0])
    assert config["envs"]["MAX_MODEL_LEN"] == "3072"
    assert config["resources"]["image_id"] == "docker:ft-vllm:t"
    # A local store cannot be reached from a cloud replica: flagged, and a real launch refuses.
    assert "local path" in out.output
    refused = CliRunner().invoke(app, ["serve", "up", "r1", "--store", str(store), "--image", "ft-vllm:t"])
    assert refused.exit_code == 2 and "local path" in refused.output


# ------------------------------------------------------------------ image registry and secrets
SECRETS = {"HF_TOKEN": "hf_gated_token_value", "AWS_ACCESS_KEY_ID": "AKIASERVEKEY0001",
           "AWS_SECRET_ACCESS_KEY": "serve-secret-value-xyz", "WANDB_API_KEY": "wandb-not-for-serving-0123"}
DOCKER_LOGIN = {"SKYPILOT_DOCKER_USERNAME": "robot-user", "SKYPILOT_DOCKER_PASSWORD": "docker-pw-0123456789",
                "SKYPILOT_DOCKER_SERVER": "ghcr.io"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    from trainer.settings import SECRET_NAMES

    for name in (*SECRET_NAMES, *DOCKER_LOGIN, "FT_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _store_with_run(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    (store / "runs" / "r1").mkdir(parents=True)
    (store / "runs" / "r1" / "run.json").write_text(json.dumps(INFO))
    return store


def test_serve_yaml_declares_the_replicas_secrets(clean_env: pytest.MonkeyPatch) -> None:
    """A replica pulls an s3:// adapter (AWS keys) onto a gated base (HF_TOKEN): serve.yaml declares them,
    and the local values travel as SkyPilot secrets, not envs; W&B's key is not a replica's business."""
    for name, value in {**SECRETS, **DOCKER_LOGIN}.items():
        clean_env.setenv(name, value)
    config = serve.service_config(serve.service_envs(Run.with_record("s3://bucket/ft", INFO)),
                                  image=serve.default_image("ghcr.io/me"))
    assert {"HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} <= set(config["secrets"])
    secrets = serve.service_secrets(config)
    assert secrets == {k: v for k, v in {**SECRETS, **DOCKER_LOGIN}.items() if k != "WANDB_API_KEY"}
    task = serve.to_task(config, secrets)
    assert {k: v.get_secret_value() for k, v in task.secrets.items() if v.get_secret_value()} == secrets
    assert not set(secrets) & set(task.envs)
    res = next(iter(task.resources))
    assert res.docker_login_config is not None and res.docker_login_config.server == "ghcr.io"
    assert res.extract_docker_image().startswith("ghcr.io/me/ft-vllm:")
    assert not any(v in yaml.safe_dump(config) for v in (*SECRETS.values(), "docker-pw-0123456789", "robot-user"))


def test_serve_run_script_unsets_the_empty_secrets(tmp_path: Path) -> None:
    """What serve.yaml's `run:` hands the entrypoint: a secret left empty is unset, a given one kept."""
    import os
    import subprocess

    entry = tmp_path / "entrypoint.sh"
    entry.write_text('#!/usr/bin/env bash\nfor v in HF_TOKEN AWS_ACCESS_KEY_ID MODEL_URI; do '
                     'echo "$v=${!v-UNSET}"; done\n')
    entry.chmod(0o755)
    config = yaml.safe_load(serve.SERVE_YAML.read_text())
    script = config["run"].replace("/opt/ft/vllm-entrypoint.sh", str(entry))
    env = {"PATH": os.environ["PATH"], "HF_TOKEN": "", "AWS_ACCESS_KEY_ID": "AKIA1", "MODEL_URI": "m"}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["HF_TOKEN=UNSET", "AWS_ACCESS_KEY_ID=AKIA1", "MODEL_URI=m"]


def test_ft_serve_up_image_from_the_registry_setting(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    from images.tags import image_tag

    store, tag = _store_with_run(tmp_path), image_tag("vllm")
    for name, value in SECRETS.items():
        clean_env.setenv(name, value)
    out = CliRunner().invoke(app, ["serve", "up", "r1", "--store", str(store), "--dry-run"])
    assert out.exit_code == 0, out.output
    config = yaml.safe_load(out.output.split("# vLLM:")[0])
    # A replica pulls from a registry: the default image names one (it named none before)
    assert config["resources"]["image_id"] == f"docker:ghcr.io/llm-finetuning/ft-vllm:{tag}"
    assert "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, HF_TOKEN (SkyPilot secrets" in out.output
    assert not any(v in out.output for v in SECRETS.values())
    clean_env.setenv("FT_REGISTRY", "registry.example.com/team")
    out = CliRunner().invoke(app, ["serve", "up", "r1", "--store", str(store), "--dry-run"])
    assert yaml.safe_load(out.output.split("# vLLM:")[0])["resources"]["image_id"] == \
        f"docker:registry.example.com/team/ft-vllm:{tag}"
    assert "registry: FT_REGISTRY" in out.output
    out = CliRunner().invoke(app, ["serve", "up", "r1", "--store", str(store), "--dry-run", "--registry", "ghcr.io/me"])
    assert yaml.safe_load(out.output.split("# vLLM:")[0])["resources"]["image_id"] == f"docker:ghcr.io/me/ft-vllm:{tag}"
    clean_env.setenv("SKYPILOT_DOCKER_PASSWORD", "docker-pw-0123456789")  # a partial login: refused
    out = CliRunner().invoke(app, ["serve", "up", "r1", "--store", str(store), "--dry-run"])
    assert out.exit_code == 2 and "SKYPILOT_DOCKER_USERNAME" in out.output and "docker-pw" not in out.output
    out = CliRunner().invoke(app, ["serve", "up", "r1", "--store", str(store), "--dry-run", "--registry", "https://x"])
    assert out.exit_code == 2 and "--registry" in out.output


class _StandIn(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server (what vLLM's would answer, minus the GPU)."""

    seen: list[dict[str, Any]] = []

    def _send(self, body: dict[str, Any], code: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        if self.path == "/v1/models":
            self._send({"object": "list", "data": [{"id": "Qwen/Qwen2.5-Math-7B-Instruct"}, {"id": "math-grpo"}]})
        else:
            self._send({"error": "not found"}, 404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _StandIn.seen.append(body)
        if body["model"] != "math-grpo":
            self._send({"error": {"message": f"model {body['model']} does not exist"}}, 404)
            return
        self._send({"choices": [{"message": {"role": "assistant", "content": "12 * 7 = 84. #### 84"}}],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 9}})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_serve_check_against_stand_in(stand_in: str) -> None:
    result = serve.check_endpoint(stand_in)
    assert result["model"] == "math-grpo"  # the adapter, listed after the base
    assert result["answer"] == "12 * 7 = 84. #### 84" and result["latency_s"] > 0
    assert _StandIn.seen[-1]["temperature"] == 0 and _StandIn.seen[-1]["messages"][0]["role"] == "user"
    with pytest.raises(ConnectionError, match="HTTP 404"):
        serve.check_endpoint(stand_in + "/v1", model="missing")

    out = CliRunner().invoke(app, ["serve", "check", stand_in])
    assert out.exit_code == 0, out.output
    assert "math-grpo answered in" in out.output and "#### 84" in out.output


def test_serve_check_unreachable() -> None:
    out = CliRunner().invoke(app, ["serve", "check", "http://127.0.0.1:9"])
    assert out.exit_code == 75 and "endpoint check failed" in out.output


def test_every_lora_rank_rounds_up_to_the_smallest_rank_vllm_accepts() -> None:
    from trainer.errors import BadInput

    assert VLLM_LORA_RANKS[0] == 1  # a rank-1 adapter is served as rank 1, not padded to 8
    for r in range(1, VLLM_LORA_RANKS[-1] + 1):
        rank = vllm_lora_rank(r)
        assert rank in VLLM_LORA_RANKS and rank >= r
        assert all(allowed < r for allowed in VLLM_LORA_RANKS if allowed < rank)
    with pytest.raises(BadInput, match="max_lora_rank"):
        vllm_lora_rank(VLLM_LORA_RANKS[-1] + 1)
