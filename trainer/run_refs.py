"""Reading finished runs from the store: what `ft eval`, `ft merge`, `ft serve`, `ft push` and
`ft report` share. A run is named on the command line as `s3://…/runs/<id>`, a local
`<store>/runs/<id>` folder, or a bare id with `--store`.

Layout (written by the trainer): `runs/<id>/run.json`, `runs/<id>/<stage>/final/` (PEFT adapter or
full weights + tokenizer, `_COMPLETE` last), `runs/<id>/<stage>/metrics.jsonl`, `runs/<id>/eval/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from trainer.spec import JobSpec, parse_spec
from trainer.store import LocalStore, Store, cache_root, open_store
from trainer.textio import lines

# Pseudo-stages that every run can be evaluated at besides its trained stages.
BASE_STAGE = "base"
PROTOTYPE_STAGE = "prototype"


@dataclass(frozen=True)
class RunRef:
    store_uri: str
    run_id: str

    @cached_property
    def store(self) -> Store:  # one client per run reference, not one per call
        return open_store(self.store_uri)

    @property
    def prefix(self) -> str:
        return f"runs/{self.run_id}"


def parse_run_ref(ref: str, store_uri: str = "./outputs/store") -> RunRef:
    """`s3://b/p/runs/ID`, `<store>/runs/ID` (local) or a bare `ID` (in `store_uri`)."""
    ref = ref.rstrip("/")
    if ref.startswith("runs/"):
        ref = "./" + ref
    if "/runs/" in ref:
        store, _, run_id = ref.rpartition("/runs/")
        if not run_id or "/" in run_id:
            raise ValueError(f"{ref!r}: expected …/runs/<run-id>")
        return RunRef(store, run_id)
    if "/" in ref:
        raise ValueError(f"{ref!r} is not a run: expected s3://…/runs/<id>, <store>/runs/<id> or a run id")
    return RunRef(store_uri, ref)


def is_run_ref(ref: str, store_uri: str = "./outputs/store") -> bool:
    """Whether `ref` names a run with a run.json (as opposed to a model folder or Hub id)."""
    try:
        run = parse_run_ref(ref, store_uri)
        return run.store.exists(f"{run.prefix}/run.json")
    except (ValueError, OSError):
        return False


def load_run(run: RunRef) -> dict[str, Any]:
    try:
        return json.loads(run.store.read_text(f"{run.prefix}/run.json"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no run at {run.store.url(run.prefix)} (no run.json)") from None


def run_spec(info: dict[str, Any]) -> JobSpec:
    return parse_spec(info["spec"], "run.json:spec")


def stage_names(info: dict[str, Any]) -> list[str]:
    """Trained stages in the spec's order, then any others run.json lists."""
    ordered = [s["name"] for s in info.get("spec", {}).get("stages", []) if s.get("name")]
    return ordered + [s for s in info.get("stages", {}) if s not in ordered]


def last_done_stage(info: dict[str, Any]) -> str:
    done = [s for s in stage_names(info) if info.get("stages", {}).get(s, {}).get("status") == "done"]
    if not done:
        raise ValueError(f"run {info.get('run_id')} has no finished stage yet")
    return done[-1]


def local_copy(store: Store, key: str, name: str) -> Path:
    """A local folder holding `key`: the folder itself for a local store, else a cached download
    (re-downloaded unless the cached copy is complete)."""
    if isinstance(store, LocalStore):
        return store.root / key
    dest = cache_root() / "runs" / name
    if not (dest / "_COMPLETE").exists():
        store.download_dir(key, dest)
        (dest / "_COMPLETE").write_text("")
    return dest


def stage_final_key(run: RunRef, info: dict[str, Any], stage: str) -> str:
    entry = info.get("stages", {}).get(stage)
    if entry is None:
        known = ", ".join(stage_names(info)) or "none"
        raise ValueError(f"run {run.run_id} has no stage {stage!r} (stages: {known})")
    if entry.get("status") != "done":
        raise ValueError(f"stage {stage!r} of run {run.run_id} is {entry.get('status')!r}, not done")
    key = entry.get("final") or f"{run.prefix}/{stage}/final"
    if not run.store.is_complete(key):
        raise FileNotFoundError(f"{run.store.url(key)} is not complete (no _COMPLETE marker)")
    return key


def stage_model_dir(run: RunRef, info: dict[str, Any], stage: str) -> Path:
    """Local folder of a stage's final adapter (or full weights)."""
    key = stage_final_key(run, info, stage)
    return local_copy(run.store, key, f"{run.run_id}/{stage}/final")


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / "adapter_config.json").exists()


def read_jsonl(store: Store, key: str) -> list[dict[str, Any]]:
    try:
        text = store.read_text(key)
    except FileNotFoundError:
        return []
    rows = []
    for line in lines(text):
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut off by preemption; the rest is still good
    return rows
