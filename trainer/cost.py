"""What a run really costs, measured where it runs: the instance, its catalog price, the spend so far,
and a budget that stops training when the spend reaches it.

SkyPilot tells a node its cloud, region and zone (`SKYPILOT_CLUSTER_INFO`), its node count and GPUs
per node, but not the instance type, spot or the price. `ft launch` therefore passes the prices of
the candidates it ordered as plain data (FT_PRICES, a JSON list of catalog rows) and the budget
(FT_MAX_COST_USD); `instance_price` picks the row matching where the node landed. The trainer never
reads a catalog or imports SkyPilot or jobs/.

Spend = elapsed seconds × the instance's price per hour × nodes, summed over every attempt of every
stage (an attempt is one process's run of a stage: a preemption or restart opens another), so
recoveries are paid for too. Light to import: transformers is imported only when BudgetCallback is
first used (`import trainer` must stay free of heavy dependencies).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from trainer import settings
from trainer.errors import EXIT_BUDGET

# The two variables `ft launch` writes (jobs/cost.py) and the trainer reads; listed with every other FT_*
# variable in trainer/settings.py. EXIT_BUDGET is not in recover_on_exit_codes: SkyPilot does not retry it.
ENV_PRICES = settings.PRICES_VAR
ENV_BUDGET = settings.MAX_COST_VAR


@dataclass(frozen=True)
class Instance:
    """Where this process runs, as SkyPilot describes it; fields it does not tell are None."""

    cloud: str
    region: str | None
    zone: str | None
    nodes: int
    gpus_per_node: int
    instance_type: str | None = None
    accelerator: str | None = None
    spot: bool | None = None


def instance_from_env(env: Mapping[str, str] | None = None) -> Instance | None:
    """The SkyPilot node this runs on; None for a local run or `ft run --docker` (no SkyPilot)."""
    env = os.environ if env is None else env
    raw = env.get("SKYPILOT_CLUSTER_INFO")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    cloud = str(info.get("cloud") or "").lower()
    if not cloud:
        return None

    def _int(name: str) -> int:
        try:
            return max(1, int(env.get(name, "1")))
        except ValueError:
            return 1

    return Instance(cloud=cloud, region=info.get("region"), zone=info.get("zone"),
                    nodes=_int("SKYPILOT_NUM_NODES"), gpus_per_node=_int("SKYPILOT_NUM_GPUS_PER_NODE"))


def _read(name: str, env: Mapping[str, str] | None) -> str | None:
    """The variable from `env` (tests), else from this process's environment through settings."""
    return settings.text(name) if env is None else env.get(name) or None


def prices_from_env(env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    try:
        rows = json.loads(_read(ENV_PRICES, env) or "[]")
    except ValueError:
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("price_per_hour"), (int, float))]


def budget_from_env(env: Mapping[str, str] | None = None) -> float | None:
    try:
        value = float(_read(ENV_BUDGET, env) or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _norm(name: str) -> str:
    return "".join(ch for ch in name.upper() if ch.isalnum())


def instance_price(instance: Instance | None, prices: list[dict[str, Any]],
                   device_name: str | None = None) -> tuple[Instance | None, float | None]:
    """The catalog row matching the instance (cloud, region, GPUs per node, and the GPU model when
    `device_name`, e.g. torch.cuda.get_device_name(), is given) and its hourly price per node.

    When several rows still match (spot and on-demand of one type, two types in one region), the
    highest price is taken, so the budget errs on the side of stopping early; the instance then
    keeps spot/instance type only where the rows agree."""
    if instance is None or not prices:
        return instance, None
    rows = [r for r in prices if str(r.get("cloud", "")).lower() == instance.cloud
            and (instance.region is None or r.get("region") == instance.region)]
    by_count = [r for r in rows if int(r.get("count") or 0) == instance.gpus_per_node]
    rows = by_count or rows
    if device_name:
        dev = _norm(device_name)
        by_gpu = [r for r in rows if _norm(str(r.get("accelerator", "")).split("-")[0]) in dev]
        rows = by_gpu or rows
    if not rows:
        return instance, None
    top = max(rows, key=lambda r: float(r["price_per_hour"]))

    def agreed(key: str) -> Any:
        values = {r.get(key) for r in rows}
        return values.pop() if len(values) == 1 else None

    found = Instance(**{**asdict(instance), "instance_type": agreed("instance_type"),
                        "accelerator": agreed("accelerator"), "spot": agreed("spot")})
    return found, float(top["price_per_hour"])


ESTIMATE_KEYS = ("cloud", "region", "instance_type", "accelerator", "count", "spot", "price_per_hour", "est_hours",
                 "est_cost_usd", "nodes", "stage_hours")


def launch_estimate(instance: Instance | None, price_per_hour: float | None,
                    prices: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the launch estimated for the offer this node turned out to be (the FT_PRICES row that
    `instance_price` matched), so the report can put estimate and actual side by side."""
    if instance is None or price_per_hour is None:
        return None
    for row in prices:
        if (str(row.get("cloud", "")).lower() == instance.cloud and row.get("est_cost_usd") is not None
                and float(row["price_per_hour"]) == price_per_hour
                and instance.region in (None, row.get("region"))
                and instance.instance_type in (None, row.get("instance_type"))):
            return {k: row.get(k) for k in ESTIMATE_KEYS} | {"basis": "the launch's estimate for this offer"}
    return None


# ------------------------------------------------------------------------- run.json records
def open_attempt(entry: dict[str, Any], instance: Instance | None, price_per_hour: float | None,
                 now: float | None = None) -> dict[str, Any]:
    """Start one attempt of a stage in its run.json entry (a resume after preemption opens another)."""
    now = time.time() if now is None else now
    attempt = {"started": now, "last_seen": now, "instance": asdict(instance) if instance else None,
               "price_per_hour": price_per_hour}
    entry.setdefault("attempts", []).append(attempt)
    return summarize(entry)


def touch_attempt(entry: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Move the open attempt's clock forward (at every checkpoint and at the end): a preempted
    attempt is billed up to its last touch."""
    if entry.get("attempts"):
        entry["attempts"][-1]["last_seen"] = time.time() if now is None else now
    return summarize(entry)


def attempt_cost(attempt: Mapping[str, Any]) -> float:
    price = attempt.get("price_per_hour")
    if price is None:
        return 0.0
    nodes = (attempt.get("instance") or {}).get("nodes") or 1
    return max(0.0, attempt["last_seen"] - attempt["started"]) / 3600 * float(price) * nodes


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """The stage's totals over its attempts, written beside them: `seconds_billed`, `gpu_hours`,
    `cost_usd` (what trainer/report.py reads), `attempts_count` (1 + preemptions/restarts)."""
    attempts = entry.get("attempts", [])
    seconds = gpu_hours = cost = 0.0
    for a in attempts:
        s = max(0.0, a["last_seen"] - a["started"])
        inst = a.get("instance") or {}
        seconds += s
        if inst:  # a local run (no SkyPilot node) bills no GPU-hours, whatever it ran on
            gpu_hours += s / 3600 * (inst.get("nodes") or 1) * (inst.get("gpus_per_node") or 1)
        cost += attempt_cost(a)
    if any(a.get("price_per_hour") is not None for a in attempts):
        total: float | None = round(cost, 4)
    elif attempts and all(a.get("instance") is None for a in attempts):
        total = 0.0  # a local run (or `ft run --docker`) costs nothing
    else:
        total = None  # a cloud run whose price was not passed in: unknown, not free
    entry.update(seconds_billed=round(seconds, 1), gpu_hours=round(gpu_hours, 4), cost_usd=total,
                 attempts_count=len(attempts))
    return entry


def stage_cost(seconds: float, price_per_hour: float | None, nodes: int = 1, gpus_per_node: int = 1) -> dict:
    """One stage's cost fields for run.json from its seconds (a single attempt)."""
    cost = None if price_per_hour is None else round(seconds / 3600 * price_per_hour * nodes, 4)
    return {"seconds_billed": round(seconds, 1), "gpu_hours": round(seconds / 3600 * nodes * gpus_per_node, 4),
            "cost_usd": cost}


def run_spend(record: Mapping[str, Any]) -> float:
    """$ spent by a run so far, every stage and attempt: what the budget is checked against."""
    return sum(attempt_cost(a) for s in record.get("stages", {}).values() for a in s.get("attempts", []))


def cost_record(instance: Instance | None, price_per_hour: float | None, budget_usd: float | None,
                estimate: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run-level `cost` block of run.json: where it ran, the price, the budget, and the launch's
    estimate (so the report can put estimate and actual side by side). A local run: instance None,
    price None, spend 0."""
    return {"instance": asdict(instance) if instance else None, "price_per_hour": price_per_hour,
            "max_cost_usd": budget_usd, "estimate": dict(estimate) if estimate else None}


# ------------------------------------------------------------------------------- the budget
class BudgetState:
    """The budget arithmetic, separate from transformers so it is testable without it."""

    def __init__(self, price_per_hour: float, nodes: int, budget_usd: float, spent_before_usd: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.price_per_hour, self.nodes, self.budget_usd = price_per_hour, max(1, nodes), budget_usd
        self.spent_before_usd, self.clock = spent_before_usd, clock
        self.started = clock()
        self.stopped_for_budget = False

    @property
    def spend_usd(self) -> float:
        return self.spent_before_usd + (self.clock() - self.started) / 3600 * self.price_per_hour * self.nodes

    def reached(self) -> bool:
        return self.spend_usd >= self.budget_usd


@functools.cache
def _budget_callback_class() -> type:
    from transformers import TrainerCallback

    class BudgetCallback(TrainerCallback):
        """Stops training when the run's spend reaches the budget: asks the Trainer to save a checkpoint
        (StoreCheckpointCallback then uploads it) and to stop after this step. `stopped_for_budget`
        tells the caller to exit with EXIT_BUDGET rather than finish the stage."""

        def __init__(self, price_per_hour: float, budget_usd: float, nodes: int = 1, spent_before_usd: float = 0.0,
                     clock: Callable[[], float] = time.monotonic):
            self.budget = BudgetState(price_per_hour, nodes, budget_usd, spent_before_usd, clock)

        @property
        def stopped_for_budget(self) -> bool:
            return self.budget.stopped_for_budget

        @property
        def spend_usd(self) -> float:
            return self.budget.spend_usd

        def on_step_end(self, args, state, control, **kwargs):
            if not self.budget.stopped_for_budget and _any_rank(self.budget.reached(), args):
                self.budget.stopped_for_budget = True
                control.should_save = True
                control.should_training_stop = True
            return control

    return BudgetCallback


def _any_rank(flag: bool, args: Any) -> bool:
    """Under DDP every rank must stop at the same step (a rank left waiting in an all-reduce hangs),
    and each rank reads its own clock: stop when any rank has reached the budget."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=getattr(args, "device", "cpu"))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def __getattr__(name: str) -> Any:
    # `from trainer.cost import BudgetCallback` builds the class on first use (PEP 562), so importing
    # this module does not import transformers.
    if name == "BudgetCallback":
        return _budget_callback_class()
    raise AttributeError(name)


def budget_message(spend_usd: float, budget_usd: float, stage: str, step: int) -> str:
    return (f"budget reached: ${spend_usd:,.2f} spent of resources.max_cost_usd ${budget_usd:,.2f}; stage {stage} "
            f"stopped at step {step} after saving a checkpoint (exit {EXIT_BUDGET}, not retried). Raise the "
            "budget and launch again with the same --run-id to continue from it.")
