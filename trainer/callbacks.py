"""Trainer callbacks: checkpoints to the store (marker last), checkpoints on SIGTERM and every few
minutes (see trainer/preemption.py), and metrics.jsonl.

The Hugging Face Trainer writes `checkpoint-N/` locally (weights, optimizer, scheduler, RNG state and
trainer_state.json with the data position); this callback copies it to the store right after, so a
preempted machine loses at most `save_steps` steps."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from trainer import faults
from trainer.preemption import PreemptionGuard
from trainer.run import Run
from trainer.store import MARKER

# TRL's log keys → ours (the report and the eval read these names)
RENAMES = {"reward": "reward_mean", "reward_std": "reward_std", "loss": "loss", "learning_rate": "learning_rate"}


class StoreCheckpointCallback(TrainerCallback):
    def __init__(self, run: Run, stage: str, output_dir: Path, keep: int, metrics_file: Path,
                 after_upload=None):
        self.run, self.stage, self.output_dir, self.keep = run, stage, Path(output_dir), keep
        self.metrics_file = metrics_file
        self.after_upload = after_upload  # e.g. move the bill's clock in run.json

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        local = self.output_dir / f"checkpoint-{state.global_step}"
        if local.is_dir():
            if self.metrics_file.exists():  # metrics first: a resumed run continues the same file
                self.run.store.upload_file(self.metrics_file, self.run.metrics(self.stage))
            self.run.store.upload_dir(local, self.run.checkpoint(self.stage, state.global_step), progress=False,
                                         on_file=self._mid_upload_fault(local))
            if faults.active("kill-after-checkpoint") is not None:
                faults.kill9()
            self._prune()
            if self.after_upload:
                self.after_upload()
        return control

    @staticmethod
    def _mid_upload_fault(local: Path):
        if faults.active("kill-mid-upload") is None:
            return None
        half = max(1, sum(1 for p in local.rglob("*") if p.is_file()) // 2)
        sent: list[str] = []

        def on_file(rel: str) -> None:
            sent.append(rel)
            if len(sent) >= half:
                faults.kill9()

        return on_file

    def _prune(self) -> None:
        steps = self.run.complete_checkpoints(self.stage)
        for step in steps[: max(0, len(steps) - self.keep)]:
            # Drop the marker first so a half-deleted checkpoint never looks complete.
            self.run.store.delete(f"{self.run.checkpoint(self.stage, step)}/{MARKER}")
            self.run.store.delete(self.run.checkpoint(self.stage, step))


class MetricsCallback(TrainerCallback):
    """Appends one JSON line per log event: loss, learning rate, reward mean/std, tokens/s, step time."""

    def __init__(self, path: Path, stage: str):
        self.path, self.stage = Path(path), stage
        self._step_started = 0.0
        self._step_times: list[float] = []
        self._last_log: tuple[float, float] | None = None  # (time, num_tokens)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._step_times.append(time.perf_counter() - self._step_started)

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row: dict[str, Any] = {"stage": self.stage, "step": state.global_step, "epoch": state.epoch}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                row[RENAMES.get(key, key)] = value
        if self._step_times:
            row["step_time"] = sum(self._step_times) / len(self._step_times)
            self._step_times.clear()
        now = time.perf_counter()
        tokens = logs.get("num_tokens")
        if isinstance(tokens, (int, float)):
            if self._last_log and tokens > self._last_log[1]:
                row["tokens_per_s"] = (tokens - self._last_log[1]) / (now - self._last_log[0])
            self._last_log = (now, float(tokens))
        if "train_runtime" in logs:
            row["final"] = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _agree(flags: list[bool], device) -> list[bool]:
    """Every rank must take the same decision at the same step, or a save would deadlock."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


class PreemptionCallback(TrainerCallback):
    def __init__(self, guard: PreemptionGuard, save_every_minutes: float | None = None):
        self.guard, self.save_every = guard, save_every_minutes
        self.last_save = time.monotonic()
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.guard.in_training = True
        self.last_save = time.monotonic()

    def on_step_begin(self, args, state, control, **kwargs):
        faults.step_begins()

    def on_step_end(self, args, state, control, **kwargs):
        due = self.save_every is not None and time.monotonic() - self.last_save >= self.save_every * 60
        stop, due = _agree([self.guard.requested, due], args.device)
        if due or stop:
            control.should_save = True
        if stop:
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()

    def on_train_end(self, args, state, control, **kwargs):
        self.guard.in_training = False
