"""Every `FT_*` environment variable the product reads, in one place: its name, its default and what
it changes. Values are read when asked for (tests and the job YAMLs set them per process), and a value
that does not parse is a bad-input error naming the variable, not a traceback.

| variable | default | what it does |
| --- | --- | --- |
| FT_STORE | the spec's store.uri | artifact store for runs, bundles and evaluations |
| FT_WORKDIR | outputs/work | local scratch for a run's stage folders |
| FT_CACHE | ~/.cache/ft | downloaded bundles, run folders, catalogs, measured MFU |
| FT_EXIT_CODE_FILE | unset | where the trainer writes its exit code (accelerate turns every failure into 1) |
| FT_SIGTERM_GRACE_S | 45 | seconds after SIGTERM to finish the step and save a checkpoint |
| FT_LEASE_TTL_S | 90 | a run's writer lease expires this long after its last heartbeat |
| FT_LEASE_WAIT_S | TTL + 30 | how long a second trainer waits for a held lease before exit 75 |
| FT_STORE_TIMEOUT_S | 60 | connect/read timeout of one S3 request |
| FT_FAULT | unset | injected faults for the resume tests (trainer/faults.py) |
| FT_PRICES | unset | the launch's catalog prices for this job's offers (JSON), for the bill |
| FT_MAX_COST_USD | unset | budget override for resources.max_cost_usd |
| FT_MFU_FILE | $FT_CACHE/mfu.json | measured model-FLOPs utilisation per GPU and method |
| FT_OFFLINE | unset | never reach the Hub for a model's size (as HF_HUB_OFFLINE) |
| FT_CATALOG_DOWNLOAD | unset | 1: let SkyPilot download missing catalogs |
| FT_MLX_OUTPUTS | outputs/mlx | where `ft prototype` writes its adapter and results |
| FT_REGISTRY | ghcr.io/llm-finetuning | registry of the images cloud jobs and services pull, `--push` target |
| FT_STRATEGY | ddp | `python -m trainer launch`: multi-GPU strategy when no accelerate config is given |
| FT_MIXED_PRECISION | auto | `python -m trainer launch`: bf16, fp16, no or auto (bf16 on compute capability 8+) |
| FT_ACCELERATE_CONFIG | unset | `python -m trainer launch`: base64 accelerate config rendered by `ft launch` |
| FT_DEEPSPEED_CONFIG | unset | `python -m trainer launch`: base64 DeepSpeed JSON that config points to |
| FT_RENDEZVOUS_PORT | 29500 | `python -m trainer launch`: the head node's port for accelerate's rendezvous |
| FT_LAUNCH_DRY_RUN | unset | 1: `python -m trainer launch` prints the commands it would run, runs nothing |
| FT_COMET_LIB | <venv>/comet-lib | the COMET layer (images/locks/comet.txt, installed apart from the environment) |
| FT_COMET_MODEL | Unbabel/wmt22-comet-da | the COMET checkpoint (a Hub repo, read from the HF cache when offline) |
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainer.errors import BadInput

# Credentials: passed by name as SkyPilot `secrets:` / `docker -e NAME`, masked in every message,
# never written to a bundle, log, YAML or artifact.
SECRET_NAMES = ("HF_TOKEN", "WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "SKYPILOT_DOCKER_PASSWORD")

DEFAULT_STORE = "./outputs/store"
# Set by `ft launch` in the task's envs and read by the trainer with an explicit mapping (trainer/cost.py).
PRICES_VAR = "FT_PRICES"  # JSON list: {cloud, region, instance_type, accelerator, count, spot, price_per_hour, …}
MAX_COST_VAR = "FT_MAX_COST_USD"


def text(name: str) -> str | None:
    """The variable's value, None when unset or empty."""
    return os.environ.get(name) or None


def flag(name: str) -> bool:
    return (os.environ.get(name) or "").strip().lower() in ("1", "true", "yes", "on")


def number(name: str, default: float) -> float:
    raw = text(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise BadInput(f"{name}={raw!r}: expected a number") from None


def store() -> str | None:
    return text("FT_STORE")


def workdir() -> Path:
    return Path(text("FT_WORKDIR") or "outputs/work")


def cache_root() -> Path:
    return Path(text("FT_CACHE") or Path.home() / ".cache" / "ft")


def exit_code_file() -> str | None:
    return text("FT_EXIT_CODE_FILE")


def sigterm_grace_s() -> float:
    return number("FT_SIGTERM_GRACE_S", 45)


def lease_ttl_s() -> float:
    return number("FT_LEASE_TTL_S", 90)


def lease_wait_s() -> float:
    return number("FT_LEASE_WAIT_S", lease_ttl_s() + 30)


def store_timeout_s() -> float:
    return number("FT_STORE_TIMEOUT_S", 60)


def faults() -> str:
    return text("FT_FAULT") or ""


def mfu_file() -> Path:
    return Path(text("FT_MFU_FILE") or cache_root() / "mfu.json")


def offline() -> bool:
    return flag("HF_HUB_OFFLINE") or flag("FT_OFFLINE")


def catalog_download() -> bool:
    return text("FT_CATALOG_DOWNLOAD") == "1"


def mlx_outputs() -> Path:
    return Path(text("FT_MLX_OUTPUTS") or "outputs/mlx")


def registry() -> str | None:
    """FT_REGISTRY as given (checked and defaulted by jobs.images_ref); None when unset."""
    return text("FT_REGISTRY")


def strategy() -> str:
    return text("FT_STRATEGY") or "ddp"


def mixed_precision() -> str:
    value = text("FT_MIXED_PRECISION") or "auto"
    if value not in ("auto", "bf16", "fp16", "no"):
        raise BadInput(f"FT_MIXED_PRECISION={value!r}: one of auto, bf16, fp16, no")
    return value


def accelerate_config() -> str | None:
    return text("FT_ACCELERATE_CONFIG")


def deepspeed_config() -> str | None:
    return text("FT_DEEPSPEED_CONFIG")


def rendezvous_port() -> int:
    return int(number("FT_RENDEZVOUS_PORT", 29500))


def launch_dry_run() -> bool:
    return flag("FT_LAUNCH_DRY_RUN")


def secrets_present() -> dict[str, str]:
    """The credentials set in this environment (`.env` already loaded), by name."""
    return {name: os.environ[name] for name in SECRET_NAMES if os.environ.get(name)}


def comet_lib() -> Path:
    """Where the COMET layer lives: beside the environment (`make setup` and Dockerfile.gpu put it in
    `<venv>/comet-lib`), outside its site-packages so `pip check` never sees comet's stale pins."""
    return Path(text("FT_COMET_LIB") or Path(sys.prefix) / "comet-lib")


def comet_model() -> str:
    return text("FT_COMET_MODEL") or "Unbabel/wmt22-comet-da"
