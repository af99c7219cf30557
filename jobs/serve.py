"""Serving a trained run with SkyServe + vLLM (`ft serve`), and checking any OpenAI-compatible
endpoint (`ft serve check`).

The service definition is `sky/serve.yaml`; this module fills its envs from the run (model and
adapter locations in the store, max model length and dtype from the spec), checks them against
what vLLM accepts, and launches it with the credentials the replicas need (SkyPilot secrets: never in
the printed YAML). SkyPilot is imported only to launch.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from trainer.generation import VLLM_LORA_RANKS
from trainer.publish import hub_base_model
from trainer.run import Run

SERVE_YAML = Path(__file__).resolve().parents[1] / "sky" / "serve.yaml"
# vLLM's --dtype choices.
VLLM_DTYPES = {"auto": "auto", "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def service_envs(run: Run, stage: str | None = None, merged_uri: str | None = None) -> dict[str, str]:
    """The serve.yaml envs for a run: `merged_uri` when given (from `ft merge --out s3://…`), else
    the base model from the Hub plus the stage's adapter from the store (full fine-tunes: the
    stage folder is the model)."""
    spec = run.info["spec"]
    stage = stage or run.last_done_stage()
    final_url = f"{run.store_uri.rstrip('/')}/{run.info['stages'][stage].get('final') or run.final(stage)}"
    stages = spec.get("stages", [])
    max_len = max((int(s.get("max_length", 0)) for s in stages), default=0) or 4096
    envs = {
        "MAX_MODEL_LEN": str(max_len),
        "DTYPE": VLLM_DTYPES.get(spec["model"].get("dtype", "auto"), spec["model"].get("dtype", "auto")),
        "SERVED_MODEL_NAME": f"{spec['name']}-{stage}",
        "ADAPTER_NAME": f"{spec['name']}-{stage}",
        "ADAPTER_URI": "",
    }
    if merged_uri:
        envs["MODEL_URI"] = merged_uri
    elif spec.get("finetune", {}).get("method") == "full":
        envs["MODEL_URI"] = final_url
    else:
        # vLLM in the cloud pulls the base from the Hub (the built-in demo model by its Hub id)
        envs["MODEL_URI"] = hub_base_model(spec["model"]["base"]) or spec["model"]["base"]
        envs["ADAPTER_URI"] = final_url
    return envs


def check_envs(envs: dict[str, str], lora_rank: int | None = None, trust_remote_code: bool = False) -> list[str]:
    """Everything vLLM or the replica would trip over, found before paying for a GPU."""
    problems = []
    if envs.get("DTYPE") not in VLLM_DTYPES.values():
        problems.append(f"DTYPE {envs.get('DTYPE')!r}: vLLM accepts {', '.join(VLLM_DTYPES.values())}")
    try:
        if int(envs.get("MAX_MODEL_LEN", "0")) <= 0:
            raise ValueError
    except ValueError:
        problems.append(f"MAX_MODEL_LEN {envs.get('MAX_MODEL_LEN')!r} must be a positive integer")
    for name in ("MODEL_URI", "ADAPTER_URI"):
        uri = envs.get(name) or ""
        # A replica is a cloud VM: it can reach S3 or the Hub, never this machine's folders.
        if uri.startswith(("/", "./", "file://")) or (uri and Path(uri).exists()):
            problems.append(f"{name} {uri!r} is a local path; replicas pull from an s3:// store or the Hub "
                            "(run with an s3:// store, or `ft merge RUN --out s3://…` and pass --merged)")
    if not envs.get("MODEL_URI"):
        problems.append("MODEL_URI is empty")
    if envs.get("ADAPTER_URI") and lora_rank is not None and lora_rank > VLLM_LORA_RANKS[-1]:
        problems.append(f"LoRA rank {lora_rank} exceeds vLLM's max_lora_rank limit {VLLM_LORA_RANKS[-1]}; "
                        "merge the adapter and serve the merged model")
    if trust_remote_code:
        problems.append("model.trust_remote_code is set; add --trust-remote-code to VLLM_EXTRA_ARGS knowingly")
    return problems


def vllm_command(envs: dict[str, str]) -> list[str]:
    """The `vllm serve` command line the entrypoint will run, for display and tests."""
    model = "/models/model" if envs["MODEL_URI"].startswith("s3://") else envs["MODEL_URI"]
    cmd = ["vllm", "serve", model, "--host", "0.0.0.0", "--port", envs.get("PORT", "8000"),
           "--served-model-name", envs.get("SERVED_MODEL_NAME") or model.rstrip("/").rsplit("/", 1)[-1],
           "--max-model-len", envs["MAX_MODEL_LEN"], "--dtype", envs["DTYPE"]]
    if envs.get("ADAPTER_URI"):
        cmd += ["--enable-lora", "--lora-modules", f"{envs.get('ADAPTER_NAME', 'adapter')}=/models/adapter"]
    return cmd


def service_config(envs: dict[str, str], image: str | None = None, accelerators: str | None = None,
                   use_spot: bool = True) -> dict[str, Any]:
    """sky/serve.yaml with the envs filled in (and the image tag / accelerators when given)."""
    config = yaml.safe_load(SERVE_YAML.read_text(encoding="utf-8"))
    config["envs"].update(envs)
    if image:
        config["resources"]["image_id"] = f"docker:{image}"
    if accelerators:
        config["resources"]["accelerators"] = accelerators
    config["resources"]["use_spot"] = use_spot
    if not use_spot:  # no spot replicas: the on-demand fallback settings have nothing to fall back from
        for key in ("base_ondemand_fallback_replicas", "dynamic_ondemand_fallback"):
            config["service"]["replica_policy"].pop(key, None)
    return config


def default_image(registry: str | None = None) -> str:
    """`<registry>/ft-vllm:<content hash>`: the registry from `registry` (--registry), FT_REGISTRY or the
    project's; a replica is a cloud VM and can only pull a name with a registry in it."""
    from jobs import images_ref

    return images_ref.vllm_image(registry)


def service_secrets(config: dict[str, Any]) -> dict[str, str]:
    """The credentials a replica needs (those serve.yaml declares under `secrets:`: the Hub token for a
    gated base, the AWS keys for an s3:// adapter or model), taken from this environment, plus SkyPilot's
    docker login for a private registry. Passed as SkyPilot secrets at launch, never in the printed YAML."""
    from jobs.launch import local_secrets

    return local_secrets(config)


def to_task(config: dict[str, Any], secrets: dict[str, str] | None = None):
    """The service parsed and validated by SkyPilot itself, with the secrets' values."""
    import sky

    return sky.Task.from_yaml_config(copy.deepcopy(config), secrets_overrides=secrets or None)


def lora_rank_of(run: Run, stage: str) -> int | None:
    try:
        key = run.final_key(stage)
        return int(json.loads(run.store.read_text(f"{key}/adapter_config.json"))["r"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def launch(config: dict[str, Any], service_name: str,
           secrets: dict[str, str] | None = None) -> None:  # pragma: no cover -- needs a cloud
    import sky
    from sky import serve as sky_serve

    task = to_task(config, service_secrets(config) if secrets is None else secrets)
    request = sky_serve.up(task, service_name=service_name)
    sky.stream_and_get(request)


# ---------------------------------------------------------------------------------- checking
def _request(url: str, payload: dict[str, Any] | None, api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def check_endpoint(url: str, prompt: str = "What is 12 * 7? Answer with the number.", model: str | None = None,
                   api_key: str | None = None, max_tokens: int = 64, timeout: float = 60.0) -> dict[str, Any]:
    """One chat request to an OpenAI-compatible server (vLLM, SkyServe's endpoint, anything):
    the model it serves, the answer, and the latency. Raises ConnectionError with the reason."""
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        base = "http://" + base
    base = base.removesuffix("/v1")
    try:
        if model is None:
            models = _request(f"{base}/v1/models", None, api_key, timeout)
            ids = [m["id"] for m in models.get("data", [])]
            if not ids:
                raise ConnectionError(f"{base}/v1/models lists no model")
            model = ids[-1]  # vLLM lists the base first, then LoRA adapters: try the fine-tuned one
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": max_tokens, "temperature": 0}
        started = time.perf_counter()
        reply = _request(f"{base}/v1/chat/completions", payload, api_key, timeout)
        latency = time.perf_counter() - started
    except urllib.error.HTTPError as e:
        raise ConnectionError(f"{e.url}: HTTP {e.code} {e.read().decode(errors='replace')[:300]}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise ConnectionError(f"{base}: {getattr(e, 'reason', e)}") from None
    answer = reply["choices"][0]["message"]["content"]
    return {"url": base, "model": model, "prompt": prompt, "answer": answer, "latency_s": round(latency, 4),
            "usage": reply.get("usage")}
