"""Cheapest GPU selection over SkyPilot's own catalog (`sky.catalog`), offline.

SkyPilot reads its catalogs from `$SKY_RUNTIME_DIR/.sky/catalogs/<schema>/<cloud>/vms.csv` (home when
unset) and downloads them only when missing; we read whatever is cached and say how old it is. Every
offer is a (cloud, instance type, region, spot/on-demand) row with its hourly price. Real catalogs
have holes (no price, 0, pennies for an H100): such a price is shown as unknown and ranked last,
never as the cheapest.

Offers are ranked by the estimated $ of the whole job on them (`jobs/cost.py`: hours × $/h ×
nodes, setup and evaluation included), ties by time; `fastest=True` ranks by time. A slow cheap GPU
wins on $/h and loses on the bill, so $/h alone never decides.

Provider limits SkyPilot enforces at launch time, applied here up front so the table only shows
what can run: Lambda has no spot instances; RunPod and Vast have no multi-node clusters (and no
bucket mounts, which is why the trainer syncs to the store itself).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from jobs import catalog, cost, gpu_fit
from trainer import settings
from trainer.errors import BadInput
from trainer.spec import JobSpec

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
    nodes: int = 1
    est_hours: float | None = None  # the whole job on this offer: setup, stages, evaluation
    est_cost: float | None = None  # est_hours × price_per_hour × nodes
    parts: dict[str, float] | None = None  # hours by part (setup, training, generation, evaluation, ...)
    stage_hours: dict[str, float] | None = None  # training + generation hours of each stage
    other_regions: int = 0  # after grouping: more regions with this (cloud, instance type, spot)

    def json_row(self) -> dict:
        """The `ft gpus --json` row."""
        row = self.model_dump(include={"cloud", "instance_type", "accelerator", "count", "region", "spot",
                                       "price_per_hour", "nodes", "other_regions"})
        if self.est_hours is not None:
            row.update(est_hours=round(self.est_hours, 3), est_cost_usd=self.est_cost,
                       parts_hours={k: round(v, 3) for k, v in (self.parts or {}).items()},
                       stage_hours={k: round(v, 4) for k, v in (self.stage_hours or {}).items()})
        return row


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
    """Cheapest first: by the job's estimated $ when there is one, else by $/h; ties by time; unknown
    prices last; the rest keeps the order stable."""
    unknown = offer.price_per_hour is None
    primary = offer.est_cost if offer.est_cost is not None else offer.price_per_hour or 0.0
    return (unknown, primary, offer.est_hours or 0.0, offer.price_per_hour or 0.0, offer.cloud, offer.region,
            offer.instance_type, offer.spot)


def fastest_key(offer: Offer) -> tuple:
    return (offer.est_hours is None, offer.est_hours or 0.0, *sort_key(offer))


# ------------------------------------------------------------------------------------- catalog
def catalog_path(cloud: str) -> Path:
    return catalog.catalog_path(cloud)


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
    memory: dict[tuple, float | None] = {}
    for cloud in clouds:
        if not catalog_path(cloud).exists():
            if settings.catalog_download():
                catalog.download(cloud)
            else:
                notes.append(f"{cloud}: no cached SkyPilot catalog at {catalog_path(cloud)} "
                             "(run `sky gpus list` once online, or set FT_CATALOG_DOWNLOAD=1)")
                continue
        try:
            rows = catalog.read_rows(cloud)
        except (OSError, KeyError, ValueError, csv.Error) as e:  # one unreadable catalog must not hide the others
            notes.append(f"{cloud}: catalog unreadable ({type(e).__name__}: {e})")
            continue
        for row in rows:
            if accelerator and row.accelerator.lower() != accelerator.lower():
                continue
            if count is not None and row.count != count:
                continue
            n = int(round(row.count))
            if n < 1:  # fractional GPUs (0.25 T4 slices) are not for training
                continue
            key = (row.accelerator, row.device_memory_gib, n)
            if key not in memory:
                memory[key], note = gpu_fit.sane_memory_gib(row.accelerator, row.device_memory_gib, n)
                if note and f"{cloud}: {note}" not in notes:
                    notes.append(f"{cloud}: {note}")
            for use_spot in _spot_modes(cloud, spot):
                offers.append(Offer(cloud=cloud, instance_type=row.instance_type, accelerator=row.accelerator,
                                    count=n, gpu_memory_gib=memory[key], region=row.region, spot=use_spot,
                                    price_per_hour=plausible_price(row.spot_price if use_spot else row.price, n)))
    return sorted(_dedupe(offers), key=sort_key)


def _dedupe(offers: list[Offer]) -> list[Offer]:
    best: dict[tuple, Offer] = {}
    for o in offers:
        key = (o.cloud, o.instance_type, o.region, o.spot)
        if key not in best or sort_key(o) < sort_key(best[key]):
            best[key] = o
    return list(best.values())


def accelerator_names(clouds: Iterable[str] = CLOUDS) -> set[str]:
    """Every GPU name the cached catalogs know (for "did you mean")."""
    names: set[str] = set()
    for cloud in clouds:
        if catalog_path(cloud).exists():
            names |= {r.accelerator for r in catalog.read_rows(cloud)}
    return names


# ------------------------------------------------------------------------- fit and job cost
def job_cost(spec: JobSpec, spec_dir: Path | None = None, shape: gpu_fit.ModelShape | None = None,
             count_tokens: bool = True) -> cost.JobCost:
    """The job's hardware-independent work (tokens, FLOPs), computed once for every offer."""
    shape = shape or gpu_fit.model_shape(spec.model.base, spec_dir, spec.model.params)
    return cost.JobCost(spec, shape, cost.data_tokens(spec, spec_dir, count_tokens), cost.measured_mfu())


def candidates_for_spec(
    spec: JobSpec,
    spec_dir: Path | None = None,
    spot: SpotChoice | None = None,
    clouds: Iterable[str] | None = None,
    max_price: float | None = None,
    accelerator: str | None = None,
    count: int | None = None,
    notes: list[str] | None = None,
    fastest: bool = False,
    job: cost.JobCost | None = None,
) -> list[Offer]:
    """Offers the job fits on (one row per region), each with the whole job's estimated hours and $;
    cheapest job first (`fastest`: quickest first). Raises gpu_fit.ModelSizeError when the model
    cannot be sized."""
    notes = notes if notes is not None else []
    if spot is None:
        spot = "prefer-spot" if spec.resources.use_spot else "on-demand"
    clouds = list(clouds or spec.resources.clouds)
    max_price = max_price or spec.resources.max_price_per_hour
    if accelerator is None and spec.resources.accelerators:
        accelerator, _, c = spec.resources.accelerators.partition(":")
        count = count or (int(c) if c else None)
    job = job or job_cost(spec, spec_dir)
    nodes = spec.distributed.num_nodes
    offers = list_offers(clouds, accelerator, count, spot, nodes, notes)
    fit_cache: dict[tuple, bool] = {}
    est_cache: dict[tuple, cost.OfferEstimate] = {}
    out = []
    for offer in offers:
        if offer.gpu_memory_gib is None:
            continue
        if spec.distributed.strategy == "none" and offer.count > 1 and not spec.resources.accelerators:
            continue  # a single-process job pays for GPUs it cannot use
        key = (offer.gpu_memory_gib, offer.count)
        if key not in fit_cache:
            fit_cache[key] = gpu_fit.fits(spec, offer.gpu_memory_gib, offer.count, shape=job.shape)
        offer.fits = fit_cache[key]
        if not offer.fits:
            continue
        if max_price is not None and (offer.price_per_hour is None or offer.price_per_hour > max_price):
            continue
        ekey = (offer.accelerator, offer.count, offer.cloud, offer.spot, offer.instance_type)
        if ekey not in est_cache:  # regions of one instance type share the estimate
            est_cache[ekey] = job.on(offer.accelerator, offer.count, nodes, offer.cloud, offer.spot,
                                     offer.instance_type)
        est = est_cache[ekey]
        offer.nodes, offer.est_hours, offer.parts, offer.stage_hours = nodes, est.hours, est.parts, est.stages
        if offer.price_per_hour is not None:
            offer.est_cost = round(est.hours * offer.price_per_hour * nodes, 2)
        out.append(offer)
    return sorted(out, key=fastest_key if fastest else sort_key)


def group_offers(offers: list[Offer]) -> list[Offer]:
    """One row per (cloud, instance type, spot): its first region in the given order (the cheapest)
    and how many other regions offer it, in the order of each group's first row. Regions without a
    usable price stay a row of their own (shown as unknown, last)."""
    first: dict[tuple, Offer] = {}
    for o in offers:
        key = (o.cloud, o.instance_type, o.spot, o.price_per_hour is None)
        if key in first:
            first[key].other_regions += 1
        else:
            first[key] = o.model_copy(update={"other_regions": 0})
    return list(first.values())


def budget_problem(offers: list[Offer], budget: float | None) -> str | None:
    """Why a plan breaks `resources.max_cost_usd`, or None when the cheapest estimate is within it."""
    if budget is None:
        return None
    priced = [o for o in offers if o.est_cost is not None]
    if not priced:
        return (f"resources.max_cost_usd is ${budget:,.2f}, but no priced offer fits the job, so the estimate "
                "cannot be checked against it (fill the catalog cache with `sky gpus list`)")
    best = min(priced, key=sort_key)
    if best.est_cost <= budget:
        return None
    return (f"the cheapest whole-job estimate is ${best.est_cost:,.2f} ({best.accelerator} × {best.count} on "
            f"{best.cloud} {best.region}{' spot' if best.spot else ''}, about {best.est_hours:.1f} h at "
            f"${best.price_per_hour:.2f}/h × {best.nodes} node(s)), over resources.max_cost_usd ${budget:,.2f}: "
            "raise the budget, or shorten the job (epochs, max_steps, evaluation.limit)")


def within_budget(offers: list[Offer], budget: float | None) -> list[Offer]:
    """The offers whose estimate is within the budget (all of them without one)."""
    if budget is None:
        return offers
    return [o for o in offers if o.est_cost is not None and o.est_cost <= budget]


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


def cheapest_job_estimate(spec: JobSpec, spec_dir: Path | None = None) -> dict:
    """The cheapest fitting offer's estimate for the whole job, as run.json's `cost.estimate` holds it
    (what a local run would have cost in the cloud), or `{"note": why not}` when nothing here can
    price it (no cached catalog, no fitting priced offer, a model that cannot be sized)."""
    clouds = list(spec.resources.clouds)
    if all(age is None for age in catalog_ages(clouds).values()):  # checked first: sizing the job takes a while
        return {"note": "no cached SkyPilot catalog on this machine (run `sky gpus list` once online)"}
    try:
        offers = candidates_for_spec(spec, spec_dir)
    except BadInput as e:
        return {"note": f"no estimate: {e}"}
    best = next((o for o in offers if o.est_cost is not None), None)
    if best is None:
        return {"note": f"no priced offer in the cached catalogs of {', '.join(clouds)} fits this job"}
    return best.json_row() | {"basis": "the cheapest fitting cloud offer for this job, as `ft gpus CONFIG` ranks it"}
