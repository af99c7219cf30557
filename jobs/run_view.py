"""The live view of runs from the store alone (`ft runs`, `ft status RUN`): what `Run` owns, read the way
a laptop sees a run on any cloud or a local one. Pure functions over `Run` and the store; the CLI
(jobs.cloud_cli) renders them as rich tables or JSON.

What each figure is based on (the trainer uploads `metrics.jsonl` and moves run.json's bill at every
checkpoint, so the view is as fresh as the newest checkpoint):

- a stage's state: run.json's `status`, and for a `running` one the run's lease (`_LEASE`, renewed by
  the live trainer every TTL/3 s): held → `running`, gone or expired → `interrupted` (preempted,
  failed or being recovered by SkyPilot);
- the step: a finished stage's `steps`, else the newest of the last metrics row and the newest
  complete checkpoint;
- steps/s: the mean `step_time` of the last metrics rows, else the stage's steps over its seconds;
- ETA: (max_steps − step) / steps/s, max_steps from the spec (or, for an epoch-bound stage, the newest
  checkpoint's trainer_state.json);
- the checkpoint's age: the store's time of its `_COMPLETE` marker where the store tells it, else the
  bill's last touch in run.json (written right after each checkpoint upload); `checkpoint_age_basis`
  says which.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer.errors import BadInput
from trainer.run import Run
from trainer.store import MARKER, LocalStore, Store

# Stage and run states, as shown
DONE, RUNNING, INTERRUPTED, STOPPED_BUDGET, NOT_STARTED = "done", "running", "interrupted", "stopped_budget", \
    "not started"
INCOMPLETE = "incomplete"  # some stages done, the others not started, no trainer holding the run
FINISHED_STATES = (DONE, STOPPED_BUDGET)
SLEEP = time.sleep  # the watch's pause (tests replace the clock, not the loop)
RATE_ROWS = 5  # metrics rows averaged for steps/s
# SkyPilot managed-job states after which the job will not write again
JOB_FINAL_STATES = ("SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS", "FAILED_NO_RESOURCE",
                    "FAILED_CONTROLLER", "CANCELLED")


@dataclass
class StageStatus:
    name: str
    method: str | None
    state: str
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None
    reward: float | None = None
    steps_per_s: float | None = None
    rate_basis: str | None = None
    eta_s: float | None = None
    last_checkpoint: int | None = None
    checkpoint_age_s: float | None = None
    checkpoint_age_basis: str | None = None
    seconds: float | None = None
    attempts: int = 0
    cost_usd: float | None = None


@dataclass
class Trainer:
    """The run's lease: who trains it, and whether that trainer still renews it."""

    holder: str | None
    alive: bool
    expires_in_s: float | None


@dataclass
class RunStatus:
    run_id: str
    url: str
    state: str
    started: str | None
    cost_usd: float | None
    stages: list[StageStatus] = field(default_factory=list)
    trainer: Trainer | None = None
    job: str | None = None  # the managed job's state from SkyPilot, or why it is unknown

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES or (self.job or "").split(" ")[0] in JOB_FINAL_STATES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunRow:
    run_id: str
    state: str
    stages_done: int
    stages_total: int
    current_stage: str | None
    step: int | None
    max_steps: int | None
    started: str | None
    cost_usd: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------- pieces
def _iso(epoch: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else None


def _started(record: dict[str, Any]) -> str | None:
    starts = [a["started"] for s in record.get("stages", {}).values() for a in s.get("attempts", [])
              if isinstance(a.get("started"), (int, float))]
    return _iso(min(starts)) if starts else record.get("created_at")


def run_cost(record: dict[str, Any]) -> float | None:
    """$ so far: every attempt of every stage at its catalog price; 0 for a local run; None when a cloud
    run's price was not known (unknown, not free)."""
    from trainer.cost import run_spend

    attempts = [a for s in record.get("stages", {}).values() for a in s.get("attempts", [])]
    if any(a.get("price_per_hour") is not None for a in attempts):
        return round(run_spend(record), 4)
    if attempts and all(a.get("instance") is None for a in attempts):
        return 0.0
    return None


def trainer_of(run: Run, now: float) -> Trainer | None:
    try:
        lease = run.read_json(run.lease)
    except (json.JSONDecodeError, UnicodeDecodeError):  # being written: a trainer is taking it
        return Trainer(holder="?", alive=True, expires_in_s=None)
    if not isinstance(lease, dict):
        return None
    try:
        left = float(lease.get("expires_at", 0)) - now
    except (TypeError, ValueError):
        left = None
    return Trainer(holder=lease.get("holder"), alive=left is not None and left > 0, expires_in_s=left)


def _stage_state(entry: dict[str, Any] | None, alive: bool) -> str:
    if not entry:
        return NOT_STARTED
    status = entry.get("status")
    if status == "running":
        return RUNNING if alive else INTERRUPTED
    return status if status in (DONE, STOPPED_BUDGET) else str(status)


def run_state(stage_states: list[str], alive: bool) -> str:
    if stage_states and all(s == DONE for s in stage_states):
        return DONE
    for state in (STOPPED_BUDGET, RUNNING, INTERRUPTED):
        if state in stage_states:
            return state
    if alive:  # between two stages: the next one's record is written once it could start
        return RUNNING
    return NOT_STARTED if all(s == NOT_STARTED for s in stage_states) else INCOMPLETE


def _spec_stage(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next((s for s in record.get("spec", {}).get("stages", []) if s.get("name") == name), {})


def _spec_max_steps(record: dict[str, Any], name: str) -> int | None:
    for s in record.get("spec", {}).get("stages", []):
        if s.get("name") == name and isinstance(s.get("max_steps"), int) and s["max_steps"] > 0:
            return s["max_steps"]
    return None


def _number(rows: list[dict[str, Any]], key: str) -> float | None:
    for row in reversed(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _rate(rows: list[dict[str, Any]], step: int | None, seconds: float | None) -> tuple[float | None, str | None]:
    times = [r["step_time"] for r in rows if not r.get("final") and isinstance(r.get("step_time"), (int, float))
             and r["step_time"] > 0][-RATE_ROWS:]
    if times:
        return len(times) / sum(times), f"mean step_time of the newest metrics rows (up to {RATE_ROWS})"
    if step and seconds:
        return step / seconds, "steps over the stage's seconds in run.json"
    return None, None


def modified(store: Store, key: str) -> float | None:
    """When the store object was written, where the store tells it (a local file's mtime, S3's
    LastModified); None otherwise."""
    try:
        if isinstance(store, LocalStore):
            return (store.root / key).stat().st_mtime
        head = getattr(store, "_head", None)  # S3Store: HEAD of the object
        found = head(key) if head else None
        stamp = (found or {}).get("LastModified")
        return stamp.timestamp() if stamp is not None else None
    except (OSError, AttributeError, TypeError, ValueError):
        return None


def _checkpoint_age(run: Run, stage: str, step: int, entry: dict[str, Any], now: float) \
        -> tuple[float | None, str | None]:
    written = modified(run.store, f"{run.checkpoint(stage, step)}/{MARKER}")
    if written is not None:
        return max(0.0, now - written), "store time of the checkpoint's _COMPLETE marker"
    attempts = entry.get("attempts") or []
    seen = attempts[-1].get("last_seen") if attempts else None
    if isinstance(seen, (int, float)):
        return max(0.0, now - seen), "run.json bill, touched right after each checkpoint upload"
    return None, None


def _trainer_state_max_steps(run: Run, stage: str, step: int) -> int | None:
    state = run.read_json(f"{run.checkpoint(stage, step)}/trainer_state.json")
    value = (state or {}).get("max_steps")
    return value if isinstance(value, int) and value > 0 else None


def stage_status(run: Run, name: str, entry: dict[str, Any] | None, alive: bool, now: float) -> StageStatus:
    entry = entry or {}
    state = _stage_state(entry, alive)
    out = StageStatus(name=name, method=entry.get("method") or _spec_stage(run.info, name).get("method"), state=state,
                      max_steps=_spec_max_steps(run.info, name), attempts=len(entry.get("attempts") or []),
                      cost_usd=entry.get("cost_usd"))
    if state == NOT_STARTED:
        return out
    rows = [r for r in run.read_jsonl(run.metrics(name)) if isinstance(r, dict)]
    checkpoints = run.complete_checkpoints(name)
    out.last_checkpoint = checkpoints[-1] if checkpoints else None
    logged = [int(r["step"]) for r in rows if isinstance(r.get("step"), int)]
    if state == DONE and isinstance(entry.get("steps"), int):
        out.step = entry["steps"]
    else:
        out.step = max(logged + checkpoints) if logged or checkpoints else None
    out.loss = _number([r for r in rows if not r.get("final")], "loss")
    out.reward = _number(rows, "reward_mean")
    seconds = entry.get("seconds") if state == DONE else entry.get("seconds_billed")
    out.seconds = seconds if isinstance(seconds, (int, float)) else None
    out.steps_per_s, out.rate_basis = _rate(rows, out.step, out.seconds)
    if out.max_steps is None and out.last_checkpoint is not None:
        out.max_steps = _trainer_state_max_steps(run, name, out.last_checkpoint)
    if state == DONE and out.step is not None:
        out.max_steps = out.max_steps or out.step
    elif out.max_steps and out.step is not None and out.steps_per_s:
        out.eta_s = max(0, out.max_steps - out.step) / out.steps_per_s
    if out.last_checkpoint is not None:
        out.checkpoint_age_s, out.checkpoint_age_basis = _checkpoint_age(run, name, out.last_checkpoint, entry, now)
    return out


# ------------------------------------------------------------------------------ the views
def open_run(ref: str, store_uri: str) -> Run:
    """The run `ref` names (`ID`, `STORE/runs/ID`, `s3://…/runs/ID`), which must have a run.json."""
    try:
        run = Run.from_ref(ref, store_uri)
    except ValueError as e:  # a run id that is not a safe name: BadInput is a ValueError too
        raise BadInput(str(e)) from None
    if not run.store.exists(run.record_key):
        raise BadInput(f"no run {run.run_id} at {run.url()} (no run.json; `ft runs --store {run.store_uri}` "
                       "lists the runs there)")
    return run


def run_status(run: Run, now: float | None = None, job_state: Callable[[str], str | None] | None = None) \
        -> RunStatus:
    """Every stage of `run` as the store shows it now; `job_state(run_id)` adds SkyPilot's view."""
    now = time.time() if now is None else now
    run.__dict__.pop("info", None)  # read run.json afresh (a watch reads it again and again)
    record = run.info
    trainer = trainer_of(run, now)
    alive = bool(trainer and trainer.alive)
    entries = record.get("stages", {})
    stages = [stage_status(run, name, entries.get(name), alive, now) for name in run.stage_names()]
    return RunStatus(run_id=run.run_id, url=run.url(), state=run_state([s.state for s in stages], alive),
                     started=_started(record), cost_usd=run_cost(record), stages=stages, trainer=trainer,
                     job=job_state(run.run_id) if job_state else None)


def _row(run: Run, record: dict[str, Any], keys: set[str], now: float) -> RunRow:
    lease = run.lease.removeprefix(f"{run.root}/")
    trainer = trainer_of(run, now) if lease in keys else None
    alive = bool(trainer and trainer.alive)
    entries = record.get("stages", {})
    names = run.stage_names()
    states = [_stage_state(entries.get(n), alive) for n in names]
    current = next((n for n, s in zip(names, states, strict=True) if s != DONE), names[-1] if names else None)
    step = max_steps = None
    if current is not None:
        entry = entries.get(current) or {}
        max_steps = _spec_max_steps(record, current)
        if entry.get("status") == DONE:
            step = entry.get("steps")
            max_steps = max_steps or step
        else:
            prefix = f"{current}/checkpoints/"
            steps = [int(k[len(prefix):].split("/")[0]) for k in keys
                     if k.startswith(prefix) and k.endswith(f"/{MARKER}") and k[len(prefix):].split("/")[0].isdigit()]
            step = max(steps) if steps else None
    return RunRow(run_id=run.run_id, state=run_state(states, alive), stages_done=states.count(DONE),
                  stages_total=len(names), current_stage=current, step=step, max_steps=max_steps,
                  started=_started(record), cost_usd=run_cost(record))


def list_runs(store: Store, now: float | None = None) -> list[RunRow]:
    """Every run in the store with a run.json, newest first. One listing of `runs/` finds the runs and
    their complete checkpoints; then one read of each run.json (and of a lease where one is held)."""
    now = time.time() if now is None else now
    by_run: dict[str, set[str]] = {}
    for rel, _ in store.list("runs"):
        run_id, _, rest = rel.partition("/")
        by_run.setdefault(run_id, set()).add(rest)
    rows = []
    for run_id, keys in by_run.items():
        if "run.json" not in keys:
            continue
        try:
            run = Run.in_store(store, run_id)
        except ValueError:  # a folder whose name is not a run id
            continue
        try:
            record = json.loads(store.read_text(run.record_key))
        except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError):
            rows.append(RunRow(run_id, "unreadable run.json", 0, 0, None, None, None, None, None))
            continue
        run.__dict__["info"] = record
        rows.append(_row(run, record, keys, now))
    return sorted(rows, key=lambda r: (r.started or "", r.run_id), reverse=True)


# ---------------------------------------------------------------------------- SkyPilot's view
def managed_job_state(run_id: str) -> str:
    """The run's managed job as SkyPilot knows it (`RUNNING`, `RECOVERING (2 recoveries)`, …), or one line
    saying why it is unknown. Best effort: never raises for SkyPilot, its API server or the network."""
    try:
        from jobs import launch

        job = launch.find_job(run_id)
    except (KeyboardInterrupt, SystemExit):
        raise
    except ImportError as e:
        return f"job state unknown: SkyPilot is not installed ({e.name})"
    except Exception as e:  # noqa: BLE001 - SkyPilot or its API server out of reach: say so, keep the store view
        from jobs.launch import sky_reason

        return f"job state unknown: {getattr(e, 'reason', None) or sky_reason(e)}"
    if job is None:
        return f"no managed job ft-{run_id} (a local run, or launched from another SkyPilot API server)"
    status = str(job.get("status") or "?").rpartition(".")[2]  # ManagedJobStatus.RUNNING → RUNNING
    recoveries = job.get("recovery_count")
    return status + (f" ({recoveries} recoveries)" if recoveries else "") + f", job id {job.get('job_id')}"


# ------------------------------------------------------------------------------------- watch
def watch(show: Callable[[], bool], interval: float, sleep: Callable[[float], None] = time.sleep,
          max_iterations: int | None = None) -> int:
    """Call `show` (True when the run is finished) every `interval` seconds until it says finished or
    `max_iterations` ran; returns how many times it showed. Ctrl-C ends it by KeyboardInterrupt."""
    shown = 0
    while True:
        finished = show()
        shown += 1
        if finished or (max_iterations is not None and shown >= max_iterations):
            return shown
        sleep(interval)
