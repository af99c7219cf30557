"""Trainer callbacks: checkpoints to the store (marker last), checkpoints on SIGTERM and every few
minutes (see trainer/preemption.py), and metrics.jsonl.

The Hugging Face Trainer writes `checkpoint-N/` locally (weights, optimizer, scheduler, RNG state and
trainer_state.json with the data position); this callback copies it to the store right after, so a
preempted machine loses at most `save_steps` steps. On several nodes each node's folder holds only its
own ranks' files, so each node uploads its part and the head node seals the whole (trainer/store.py)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from trainer import faults
from trainer.metric_names import RENAMES as _RENAMES
from trainer.preemption import PreemptionGuard
from trainer.run import Run
from trainer.store import MARKER

# TRL's log keys → ours; every other key is kept as TRL logs it (the names: trainer/metric_names.py)
RENAMES = _RENAMES


def node_of_this_process() -> tuple[int, int]:
    """(this node's index, the number of nodes): torchrun's LOCAL_WORLD_SIZE processes per node."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    world, rank = dist.get_world_size(), dist.get_rank()
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or world))
    return rank // per_node, max(1, world // per_node)


def _barrier() -> None:
    """torch.distributed's own barrier: a PartialState() made here (not the pipeline's cpu=True one)
    changed the numerics of later steps, and resume stopped being bit-exact."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class StoreCheckpointCallback(TrainerCallback):
    def __init__(self, run: Run, stage: str, output_dir: Path, keep: int, metrics_file: Path,
                 after_upload=None):
        self.run, self.stage, self.output_dir, self.keep = run, stage, Path(output_dir), keep
        self.metrics_file = metrics_file
        self.after_upload = after_upload  # e.g. move the bill's clock in run.json

    def on_save(self, args, state, control, **kwargs):
        """Every node uploads its own part of `checkpoint-N/` (the RNG states of its ranks, its shards;
        the head node also the weights, optimizer and trainer state); the head node seals the
        checkpoint once every part is there. One node, one part: the same path."""
        key = self.run.checkpoint(self.stage, state.global_step)
        local = self.output_dir / f"checkpoint-{state.global_step}"
        node, nodes = node_of_this_process()
        if state.is_world_process_zero:
            if self.metrics_file.exists():  # metrics first: a resumed run continues the same file
                self.run.store.upload_file(self.metrics_file, self.run.metrics(self.stage))
            self.run.store.unmark(key)  # a step saved again after a resume: not complete until resealed
        _barrier()  # every rank has written its files into checkpoint-N/
        if state.is_local_process_zero and local.is_dir():
            self.run.store.upload_part(local, key, f"node-{node}", on_file=self._mid_upload_fault(local))
        _barrier()
        if state.is_world_process_zero:
            self.run.store.finish_parts(key, [f"node-{n}" for n in range(nodes)])
            if faults.active("kill-after-checkpoint") is not None:
                faults.kill9()
            if faults.active("hold-after-checkpoint") == str(state.global_step):
                faults.hold()
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
    """Appends one JSON line per log event, every numeric value TRL logged under the names documented in
    trainer/metric_names.py: training rows (loss, learning rate, grad norm, DPO rewards, GRPO rewards, KL,
    completion lengths), evaluation rows (`eval_*`), and the stage's summary (`final`); training rows get
    the step time and tokens/s measured here."""

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
            # bools are ints to Python but not metrics; NaN is not JSON (TRL logs None for "no value")
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and not (isinstance(value, float) and math.isnan(value)):
                row[RENAMES.get(key, key)] = value
        if any(key.startswith("eval_") for key in logs):  # an evaluation: the step timings belong to training rows
            self._write(row)
            return
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
        self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
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
