"""Cheapest GPU selection over SkyPilot's own catalog (`sky.catalog`), offline.

SkyPilot reads its catalogs from `$SKY_RUNTIME_DIR/.sky/catalogs/<schema>/<cloud>/vms.csv` (home when
unset) and downloads them only when missing; we read whatever is cached and say how old it is. Every
offer is a (cloud, instance type, region, spot/on-demand) row with its hourly price. Real catalogs
have holes (no price, 0, pennies for an H100): such a price is shown as unknown and ranked last,
never as the cheapest.

Provider limits SkyPilot enforces at launch time, applied here up front so the table only shows
what can run: Lambda has no spot instances; RunPod and Vast have no multi-node clusters (and no
bucket mounts, which is why the trainer syncs to the store itself).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from jobs import gpu_fit
from trainer.spec import DPOStage, GRPOStage, JobSpec

CLOUDS = ("lambda", "aws", "runpod", "vast")
# SkyPilot's unsupported features per provider that matter to us (kept in step with
# `sky.clouds.<Cloud>._CLOUD_UNSUPPORTED_FEATURES`; tests/test_pricing.py checks the two agree).
NO_SPOT = frozenset({"lambda"})
NO_MULTI_NODE = frozenset({"runpod", "vast"})
NO_BUCKET_MOUNT = frozenset({"runpod", "vast"})

# A per-GPU hourly price outside this band is a catalog hole, not a bargain.
MIN_PLAUSIBLE_PER_GPU = 0.05
MAX_PLAUSIBLE_PER_GPU = 100.0

SpotChoice = Literal["spot", "on-demand", "prefer-spot", "both"]


class Offer(BaseModel):
    cloud: str
    instance_type: str
    accelerator: str
    count: int
    gpu_memory_gib: float | None
    region: str
    spot: bool
    price_per_hour: float | None  # None: the catalog's price is missing or implausible
    enabled: bool | None = None  # `sky check` enabled this cloud (None: unknown)
    fits: bool | None = None
    est_hours: float | None = None
    est_cost: float | None = None

    def json_row(self) -> dict:
        """The `ft gpus --json` row."""
        return self.model_dump(include={"cloud", "instance_type", "accelerator", "count", "region", "spot",
                                        "price_per_hour"})


def plausible_price(price: object, count: int) -> float | None:
    try:
        value = float(price)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    per_gpu = value / max(count, 1)
    if not MIN_PLAUSIBLE_PER_GPU <= per_gpu <= MAX_PLAUSIBLE_PER_GPU:
        return None
    return round(value, 4)


def sort_key(offer: Offer) -> tuple:
    """Cheapest first; unknown prices last; ties broken so the order is stable."""
    unknown = offer.price_per_hour is None
    return (unknown, offer.price_per_hour or 0.0, offer.cloud, offer.region, offer.instance_type, offer.spot)


# ------------------------------------------------------------------------------------- catalog
def catalog_path(cloud: str) -> Path:
    from sky.catalog import common

    return Path(common.get_catalog_path(f"{cloud}/vms.csv"))


def catalog_ages(clouds: Iterable[str] = CLOUDS) -> dict[str, float | None]:
    """Hours since each cloud's cached catalog was written (None: not cached)."""
    out: dict[str, float | None] = {}
    for cloud in clouds:
        path = catalog_path(cloud)
        out[cloud] = (time.time() - path.stat().st_mtime) / 3600 if path.exists() else None
    return out


def enabled_clouds() -> set[str] | None:
    """The clouds `sky check` last enabled, from SkyPilot's local cache; never calls a provider."""
    try:
        from sky.clouds import cloud as sky_cloud

        from sky import global_user_state, skypilot_config

        workspace = skypilot_config.get_active_workspace()
        found = global_user_state.get_cached_enabled_clouds(sky_cloud.CloudCapability.COMPUTE, workspace)
        return {str(c).lower() for c in found}
    except Exception:  # noqa: BLE001 - a missing/locked state DB only means "unknown"
        return None


def _spot_modes(cloud: str, spot: SpotChoice) -> list[bool]:
    if spot == "both":
        return [True, False] if cloud not in NO_SPOT else [False]
    if spot == "spot":
        return [] if cloud in NO_SPOT else [True]
    if spot == "prefer-spot":  # spot where the provider has it, on-demand where it does not
        return [False] if cloud in NO_SPOT else [True]
    return [False]


def list_offers(
    clouds: Iterable[str] = CLOUDS,
    accelerator: str | None = None,
    count: int | None = None,
    spot: SpotChoice = "both",
    num_nodes: int = 1,
    notes: list[str] | None = None,
) -> list[Offer]:
    """Every GPU offer of the cached catalogs, one row per region, cheapest first.

    Clouds whose catalog is not cached are skipped with a note rather than downloaded: this must
    work offline (run `sky gpus list` once online to fill the cache).
    """
    import sky.catalog

    notes = notes if notes is not None else []
    clouds = [c.lower() for c in clouds]
    if num_nodes > 1:
        dropped = [c for c in clouds if c in NO_MULTI_NODE]
        if dropped:
            notes.append(f"multi-node: {', '.join(dropped)} left out (no multi-node clusters)")
        clouds = [c for c in clouds if c not in NO_MULTI_NODE]
    if spot == "spot" and any(c in NO_SPOT for c in clouds):
        notes.append("spot only: lambda left out (no spot instances)")
    offers: list[Offer] = []
    for cloud in clouds:
        if not catalog_path(cloud).exists() and os.environ.get("FT_CATALOG_DOWNLOAD") != "1":
            notes.append(f"{cloud}: no cached SkyPilot catalog at {catalog_path(cloud)} "
                         "(run `sky gpus list` once online, or set FT_CATALOG_DOWNLOAD=1)")
            continue
        name_filter = f"^{accelerator}$" if accelerator else None
        try:
            found = sky.catalog.list_accelerators(gpus_only=True, name_filter=name_filter, clouds=cloud,
                                                  case_sensitive=False, all_regions=True,
                                                  quantity_filter=count, require_price=False)
        except Exception as e:  # noqa: BLE001 - one unreadable catalog must not hide the others
            notes.append(f"{cloud}: catalog unreadable ({type(e).__name__}: {e})")
            continue
        for infos in found.values():
            for info in infos:
                n = int(round(float(info.accelerator_count)))
                if n < 1:  # fractional GPUs (0.25 T4 slices) are not for training
                    continue
                mem = info.device_memory
                mem = float(mem) if mem is not None and not math.isnan(float(mem)) else None
                mem = mem or gpu_fit.GPU_MEMORY_GIB.get(info.accelerator_name)
                for use_spot in _spot_modes(cloud, spot):
                    raw = info.spot_price if use_spot else info.price
                    offers.append(Offer(cloud=cloud, instance_type=str(info.instance_type),
                                        accelerator=info.accelerator_name, count=n, gpu_memory_gib=mem,
                                        region=str(info.region), spot=use_spot,
                                        price_per_hour=plausible_price(raw, n)))
    return sorted(_dedupe(offers), key=sort_key)


def _dedupe(offers: list[Offer]) -> list[Offer]:
    best: dict[tuple, Offer] = {}
    for o in offers:
        key = (o.cloud, o.instance_type, o.region, o.spot)
        if key not in best or sort_key(o) < sort_key(best[key]):
            best[key] = o
    return list(best.values())


# ------------------------------------------------------------------------- fit and job cost
# Training throughput, tokens per second per GPU, for LoRA/QLoRA SFT of a 7B model at sequence
# length 2048 with flash-attention and bf16 (rough public figures; the relative order matters more
# than the absolute values). Scaled by 7B / model size, by method (below), and by 0.9 per doubling
# of GPUs for communication.
THROUGHPUT_7B_TOKENS_PER_S: dict[str, float] = {
    "B200": 5200, "H200": 3400, "H100": 3000, "GH200": 3200, "A100-80GB": 1800, "A100": 1600,
    "L40S": 1100, "L40": 950, "A6000": 750, "RTXA6000": 750, "A40": 700, "RTX4090": 900, "RTX5090": 1200,
    "RTX3090": 550, "A10G": 500, "A10": 550, "L4": 400, "V100": 350, "V100-32GB": 350, "T4": 120,
}
DEFAULT_THROUGHPUT = 300
METHOD_SPEED = {"sft": 1.0, "reward": 1.0, "dpo": 0.45, "grpo": 0.12}  # DPO: 2× tokens + reference pass;
# GRPO: autoregressive generation dominates
FULL_FT_SPEED = 0.75  # full fine-tuning: optimizer step over every weight
SETUP_HOURS = 0.25  # provisioning, image pull, model download, final upload
ASSUMED_EXAMPLES = 1000  # when a data file cannot be read at estimate time
BYTES_PER_TOKEN = 3.5


def _examples(path: Path | None) -> tuple[int, float]:
    """(lines, average bytes per line) of a JSONL file."""
    if path is None or not path.is_file():
        return ASSUMED_EXAMPLES, 2000.0
    n, size = 0, 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                n += 1
                size += len(line)
    return max(n, 1), size / max(n, 1)


def job_hours(spec: JobSpec, accelerator: str, count: int, spec_dir: Path | None = None) -> float:
    """Estimated wall-clock hours of all the job's stages on `count` × `accelerator`."""
    params_b = gpu_fit.model_shape(spec.model.base, spec_dir).params / 1e9
    gpus = count if spec.distributed.strategy != "none" else 1
    per_gpu = THROUGHPUT_7B_TOKENS_PER_S.get(accelerator, DEFAULT_THROUGHPUT) * 7 / max(params_b, 0.1)
    if spec.finetune.method == "full":
        per_gpu *= FULL_FT_SPEED
    rate = per_gpu * gpus * (0.9 ** math.log2(gpus) if gpus > 1 else 1.0)
    seconds = 0.0
    for stage in spec.stages:
        role = {"sft": "sft_train", "dpo": "dpo_train", "grpo": "grpo_train", "reward": "dpo_train"}[stage.method]
        rel = getattr(spec.data, role)
        n, avg_bytes = _examples((spec_dir / rel) if rel and spec_dir else None)
        tokens_per_example = min(stage.max_length, avg_bytes / BYTES_PER_TOKEN)
        if isinstance(stage, GRPOStage):
            tokens_per_example = stage.num_generations * (min(512, tokens_per_example) + stage.max_completion_length)
        elif isinstance(stage, DPOStage):
            tokens_per_example *= 2
        examples = n * stage.epochs
        if stage.max_steps > 0:  # max_steps overrides epochs
            per_step = stage.per_device_train_batch_size * stage.gradient_accumulation_steps * gpus
            if isinstance(stage, GRPOStage):
                per_step /= stage.num_generations  # the batch counts completions
            examples = stage.max_steps * per_step
        seconds += examples * tokens_per_example / (rate * METHOD_SPEED[stage.method])
    return seconds / 3600 + SETUP_HOURS


def candidates_for_spec(
    spec: JobSpec,
    spec_dir: Path | None = None,
    spot: SpotChoice | None = None,
    clouds: Iterable[str] | None = None,
    max_price: float | None = None,
    accelerator: str | None = None,
    count: int | None = None,
    notes: list[str] | None = None,
) -> list[Offer]:
    """Offers the job fits on, each with an estimated job cost; cheapest (by $/h) first."""
    notes = notes if notes is not None else []
    if spot is None:
        spot = "prefer-spot" if spec.resources.use_spot else "on-demand"
    clouds = list(clouds or spec.resources.clouds)
    max_price = max_price or spec.resources.max_price_per_hour
    if accelerator is None and spec.resources.accelerators:
        accelerator, _, c = spec.resources.accelerators.partition(":")
        count = count or (int(c) if c else None)
    shape = gpu_fit.model_shape(spec.model.base, spec_dir)
    offers = list_offers(clouds, accelerator, count, spot, spec.distributed.num_nodes, notes)
    out = []
    for offer in offers:
        if offer.gpu_memory_gib is None:
            continue
        if spec.distributed.strategy == "none" and offer.count > 1 and not spec.resources.accelerators:
            continue  # a single-process job pays for GPUs it cannot use
        offer.fits = gpu_fit.fits(spec, offer.gpu_memory_gib, offer.count, shape=shape)
        if not offer.fits:
            continue
        if max_price is not None and (offer.price_per_hour is None or offer.price_per_hour > max_price):
            continue
        offer.est_hours = job_hours(spec, offer.accelerator, offer.count, spec_dir)
        if offer.price_per_hour is not None:
            nodes = spec.distributed.num_nodes
            offer.est_cost = round(offer.est_hours * offer.price_per_hour * nodes, 2)
        out.append(offer)
    return sorted(out, key=sort_key)


def filter_offers(offers: list[Offer], max_price: float | None = None, enabled_only: bool = False) -> list[Offer]:
    out = offers
    if max_price is not None:
        out = [o for o in out if o.price_per_hour is not None and o.price_per_hour <= max_price]
    if enabled_only:
        out = [o for o in out if o.enabled]
    return out


def mark_enabled(offers: list[Offer], enabled: set[str] | None) -> None:
    for o in offers:
        o.enabled = None if enabled is None else o.cloud in enabled
