"""Where a run's pieces live in the store:

    runs/<run-id>/run.json                          bundle, resolved spec, per-stage status
    runs/<run-id>/<stage>/checkpoints/<step>/       resumable Trainer checkpoint (+ _COMPLETE last)
    runs/<run-id>/<stage>/final/                    PEFT adapter or full weights + tokenizer (+ _COMPLETE)
    runs/<run-id>/<stage>/metrics.jsonl             one JSON object per logging step
    runs/<run-id>/<stage>/tensorboard/              TensorBoard event files
    runs/<run-id>/<stage>/on_policy_pairs/          DPO pairs sampled on-policy (+ _COMPLETE last)
    runs/<run-id>/_LEASE                            held by the one trainer writing the run
    runs/<run-id>/eval/, runs/<run-id>/report/
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass

from trainer.spec import check_name
from trainer.store import Store

RUN_ID_PATTERN = re.compile(r"[^A-Za-z0-9._-]+")


def new_run_id(name: str) -> str:
    """`SKYPILOT_TASK_ID` when SkyPilot started us (a recovered job gets the same id), else a fresh one."""
    task_id = os.environ.get("SKYPILOT_TASK_ID")
    if task_id:
        return RUN_ID_PATTERN.sub("-", task_id).strip("-")[:96]
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunLayout:
    store: Store
    run_id: str

    def __post_init__(self) -> None:
        # the run id becomes a store key and a local folder: one name grammar, no way out of runs/
        check_name(self.run_id, "run id")

    @property
    def root(self) -> str:
        return f"runs/{self.run_id}"

    @property
    def run_json(self) -> str:
        return f"{self.root}/run.json"

    def stage(self, stage: str) -> str:
        return f"{self.root}/{stage}"

    def checkpoints(self, stage: str) -> str:
        return f"{self.stage(stage)}/checkpoints"

    def checkpoint(self, stage: str, step: int) -> str:
        return f"{self.checkpoints(stage)}/{step}"

    def final(self, stage: str) -> str:
        return f"{self.stage(stage)}/final"

    def metrics(self, stage: str) -> str:
        return f"{self.stage(stage)}/metrics.jsonl"

    def tensorboard(self, stage: str) -> str:
        return f"{self.stage(stage)}/tensorboard"

    def on_policy_pairs(self, stage: str) -> str:
        """DPO pairs sampled from the incoming model, stored once so a resumed stage trains on the same."""
        return f"{self.stage(stage)}/on_policy_pairs"

    @property
    def lease(self) -> str:
        return f"{self.root}/_LEASE"

    def complete_checkpoints(self, stage: str) -> list[int]:
        """Steps of the checkpoints whose completion marker exists, oldest first."""
        steps = set()
        for rel, _ in self.store.list(self.checkpoints(stage)):
            step, _, name = rel.partition("/")
            if name == "_COMPLETE" and step.isdigit():
                steps.add(int(step))
        return sorted(steps)

    def read_run(self) -> dict:
        try:
            return json.loads(self.store.read_text(self.run_json))
        except FileNotFoundError:
            return {}

    def write_run(self, record: dict) -> None:
        self.store.write_text(self.run_json, json.dumps(record, indent=2) + "\n")
