"""The run: the one owner of where a run's pieces live in the store, of its record (`run.json`), of its
stages' model folders and of how a run is named on a command line. Everything that writes a run (the
trainer) and everything that reads one (`ft eval`, `ft merge`, `ft serve`, `ft push`, `ft report`,
`ft chat`) goes through `Run`.

    runs/<run-id>/run.json                          bundle, resolved spec, per-stage status and bill
    runs/<run-id>/<stage>/checkpoints/<step>/       resumable Trainer checkpoint (_MANIFEST.json, _COMPLETE last)
    runs/<run-id>/<stage>/final/                    PEFT adapter or full weights + tokenizer (_COMPLETE last)
    runs/<run-id>/<stage>/merged/                   adapter merged into the base (`trainer merge`, _COMPLETE last)
    runs/<run-id>/<stage>/metrics.jsonl             one JSON object per logging step
    runs/<run-id>/<stage>/tensorboard/              TensorBoard event files
    runs/<run-id>/<stage>/on_policy_pairs/          DPO pairs sampled on-policy (_COMPLETE last)
    runs/<run-id>/_LEASE                            held by the one trainer writing the run
    runs/<run-id>/eval/<stage>.json                 a full evaluation of a stage (`base`, `prototype`, trained)
    runs/<run-id>/eval/n<N>/<stage>.json            an evaluation cut to N items (`--limit`): kept apart
    runs/<run-id>/eval/lm_eval/<stage>.json         lm-eval harness results
    runs/<run-id>/eval/comparison.{json,md}         the table across stages
    runs/<run-id>/report/report.html                the self-contained report

A run is named as `s3://…/runs/<id>`, a local `<store>/runs/<id>` folder, or a bare id in a store.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import BadInput
from trainer.settings import DEFAULT_STORE, cache_root
from trainer.spec import JobSpec, check_name, parse_spec, store_uri_problem
from trainer.store import MARKER, LocalStore, Store, open_store
from trainer.textio import read_jsonl

if TYPE_CHECKING:
    from trainer.bundle import Bundle

# Pseudo-stages every run can be evaluated at besides its trained stages.
BASE_STAGE = "base"
PROTOTYPE_STAGE = "prototype"
RUN_ID_PATTERN = re.compile(r"[^A-Za-z0-9._-]+")


def new_run_id(name: str) -> str:
    """`SKYPILOT_TASK_ID` when SkyPilot started us (a recovered job gets the same id), else a fresh one."""
    task_id = os.environ.get("SKYPILOT_TASK_ID")
    if task_id:
        return RUN_ID_PATTERN.sub("-", task_id).strip("-")[:96]
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def is_adapter(folder: Path) -> bool:
    """A stage's model folder holds a PEFT adapter (else full weights)."""
    return (Path(folder) / "adapter_config.json").exists()


@dataclass(frozen=True)
class Run:
    store_uri: str
    run_id: str

    def __post_init__(self) -> None:
        # the run id becomes a store key and a local folder: one name grammar, no way out of runs/
        check_name(self.run_id, "run id")

    # ------------------------------------------------------------------------------ naming
    @classmethod
    def in_store(cls, store: Store, run_id: str) -> Run:
        """A run in an already opened store (the trainer's), sharing its client."""
        run = cls(store.uri, run_id)
        run.__dict__["store"] = store
        return run

    @classmethod
    def with_record(cls, store_uri: str, record: dict[str, Any]) -> Run:
        """A run whose run.json is already in hand (read before, or built by a test)."""
        run = cls(store_uri, record["run_id"])
        run.__dict__["info"] = record
        return run

    @classmethod
    def from_ref(cls, ref: str, store_uri: str = DEFAULT_STORE) -> Run:
        """`s3://b/p/runs/ID`, `<store>/runs/ID` (local) or a bare `ID` (in `store_uri`)."""
        ref = ref.rstrip("/")
        if ref.startswith("runs/"):
            ref = "./" + ref
        if "/runs/" in ref:
            store, _, run_id = ref.rpartition("/runs/")
            if not run_id or "/" in run_id:
                raise BadInput(f"{ref!r}: expected …/runs/<run-id>")
            problem = store_uri_problem(store)
            if problem:
                raise BadInput(f"{ref!r}: its store {store!r}: {problem}")
            return cls(store, run_id)
        if "/" in ref:
            raise BadInput(f"{ref!r} is not a run: expected s3://…/runs/<id>, <store>/runs/<id> or a run id")
        return cls(store_uri, ref)

    @classmethod
    def find(cls, ref: str, store_uri: str = DEFAULT_STORE) -> Run | None:
        """The run `ref` names when it has a run.json; None for a model folder, a Hub id or nothing. A
        reference shaped like a run's (`…/runs/<id>`) with a broken store is an error, not a model name."""
        try:
            run = cls.from_ref(ref, store_uri)
        except BadInput:
            if "/runs/" in ref:
                raise
            return None
        try:
            return run if run.store.exists(run.record_key) else None
        except OSError:
            return None

    @cached_property
    def store(self) -> Store:  # one client per run, not one per call
        return open_store(self.store_uri)

    # -------------------------------------------------------------------------------- keys
    @property
    def root(self) -> str:
        return f"runs/{self.run_id}"

    @property
    def record_key(self) -> str:
        return f"{self.root}/run.json"

    @property
    def lease(self) -> str:
        return f"{self.root}/_LEASE"

    def stage(self, stage: str) -> str:
        return f"{self.root}/{stage}"

    def checkpoints(self, stage: str) -> str:
        return f"{self.stage(stage)}/checkpoints"

    def checkpoint(self, stage: str, step: int) -> str:
        return f"{self.checkpoints(stage)}/{step}"

    def final(self, stage: str) -> str:
        return f"{self.stage(stage)}/final"

    def merged(self, stage: str) -> str:
        """The stage's adapter merged into its base (`python -m trainer merge`, jobs/merge.yaml)."""
        return f"{self.stage(stage)}/merged"

    def metrics(self, stage: str) -> str:
        return f"{self.stage(stage)}/metrics.jsonl"

    def tensorboard(self, stage: str) -> str:
        return f"{self.stage(stage)}/tensorboard"

    def on_policy_pairs(self, stage: str) -> str:
        """DPO pairs sampled from the incoming model, stored once so a resumed stage trains on the same."""
        return f"{self.stage(stage)}/on_policy_pairs"

    @property
    def eval_dir(self) -> str:
        return f"{self.root}/eval"

    def eval_result(self, stage: str, cut_to: int | None = None) -> str:
        """A stage's evaluation; one cut to fewer items than the spec's lives apart, so it never
        replaces the full result the comparison, report and model card show."""
        return f"{self.eval_dir}/n{cut_to}/{stage}.json" if cut_to else f"{self.eval_dir}/{stage}.json"

    def lm_eval_result(self, stage: str) -> str:
        return f"{self.eval_dir}/lm_eval/{stage}.json"

    def comparison(self, suffix: str = "json") -> str:
        return f"{self.eval_dir}/comparison.{suffix}"

    @property
    def report(self) -> str:
        return f"{self.root}/report/report.html"

    def url(self, key: str | None = None) -> str:
        return self.store.url(key or self.root)

    # ------------------------------------------------------------------------- the record
    def read_record(self) -> dict[str, Any]:
        """run.json as stored now; {} before the trainer wrote it."""
        try:
            return json.loads(self.store.read_text(self.record_key))
        except FileNotFoundError:
            return {}

    def write_record(self, record: dict[str, Any]) -> None:
        self.store.write_text(self.record_key, json.dumps(record, indent=2) + "\n")

    @cached_property
    def info(self) -> dict[str, Any]:
        """run.json of a run that exists (readers); a bad-input error naming the place otherwise."""
        record = self.read_record()
        if not record:
            raise BadInput(f"no run at {self.url()} (no run.json)")
        return record

    @cached_property
    def spec(self) -> JobSpec:
        return parse_spec(self.info["spec"], "run.json:spec")

    @cached_property
    def bundle(self) -> Bundle:
        """The run's bundle, fetched and verified once per Run however many stages are evaluated."""
        from trainer.bundle import fetch_bundle

        return fetch_bundle(self.info["bundle_uri"], progress=False)

    def stage_names(self) -> list[str]:
        """Trained stages in the spec's order, then any others run.json lists."""
        ordered = [s["name"] for s in self.info.get("spec", {}).get("stages", []) if s.get("name")]
        return ordered + [s for s in self.info.get("stages", {}) if s not in ordered]

    def done_stages(self, generating: bool = False) -> list[str]:
        """Finished stages in order; `generating` leaves out reward models (they score, not write)."""
        stages = self.info.get("stages", {})
        return [s for s in self.stage_names() if stages.get(s, {}).get("status") == "done"
                and not (generating and stages[s].get("method") == "reward")]

    def last_done_stage(self) -> str:
        done = self.done_stages()
        if not done:
            raise BadInput(f"run {self.run_id} has no finished stage yet")
        return done[-1]

    def final_key(self, stage: str) -> str:
        """The store folder of a finished stage's model; bad input for an unknown or unfinished stage."""
        entry = self.info.get("stages", {}).get(stage)
        if entry is None:
            known = ", ".join(self.stage_names()) or "none"
            raise BadInput(f"run {self.run_id} has no stage {stage!r} (stages: {known})")
        if entry.get("status") != "done":
            raise BadInput(f"stage {stage!r} of run {self.run_id} is {entry.get('status')!r}, not done")
        key = entry.get("final") or self.final(stage)
        if not self.store.is_complete(key):
            raise BadInput(f"{self.url(key)} is not complete (no {MARKER} marker)")
        return key

    def model_dir(self, stage: str) -> Path:
        """Local folder of a finished stage's adapter (or full weights)."""
        return self.fetch_dir(self.final_key(stage))

    def complete_checkpoints(self, stage: str) -> list[int]:
        """Steps of the checkpoints whose completion marker exists, oldest first."""
        steps = set()
        for rel, _ in self.store.list(self.checkpoints(stage)):
            step, _, name = rel.partition("/")
            if name == MARKER and step.isdigit():
                steps.add(int(step))
        return sorted(steps)

    # --------------------------------------------------------------------------- reading
    def fetch_dir(self, key: str, local: Path | None = None) -> Path:
        """A complete store folder as a local one, verified against its manifest and downloaded once:
        the folder itself in a local store, else a copy under `local` (default: the cache)."""
        if local is None:
            if isinstance(self.store, LocalStore):
                return self.store.root / key
            local = cache_root() / "runs" / self.store_uri.replace("://", "/").strip("/") / key
        done = local / ".fetched"
        if not done.exists():
            self.store.download_dir(key, local, progress=False)
            done.touch()
        return local

    def read_json(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.read_text(key))
        except FileNotFoundError:
            return None

    def read_jsonl(self, key: str) -> list[dict[str, Any]]:
        """Rows of a JSONL object the trainer wrote (metrics): a last line cut off by preemption is skipped."""
        try:
            text = self.store.read_text(key)
        except FileNotFoundError:
            return []
        return read_jsonl(self.url(key), text=text, tolerate_cut_last_line=True)
