"""Run a SkyPilot job YAML here the way SkyPilot would run it on N nodes, to find a broken cloud job
in a minute instead of an hour on rented GPUs (`ft rehearse`, and tests/test_rehearsal.py).

Each "node" is the YAML's own `setup:` and `run:` text in bash, with the variables SkyPilot sets on a
node (`SKYPILOT_NODE_RANK`, `SKYPILOT_NODE_IPS`, `SKYPILOT_NUM_NODES`, `SKYPILOT_NUM_GPUS_PER_NODE`,
`SKYPILOT_TASK_ID`), the YAML's envs and secrets, and its own HOME, scratch folder and work folder
(what a VM has to itself); all nodes meet on 127.0.0.1 over gloo. A preemption is every node's
process tree killed with SIGKILL at a sealed checkpoint, then the same task id started again, as
SkyPilot's recovery does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer import settings

# Values no real credential has: found anywhere in the store or a log, a secret leaked.
PROBE_SECRETS = {"HF_TOKEN": "hf_rehearsalProbe0000000000000000",
                 "WANDB_API_KEY": "rehearsal0probe0wandb0key0000000000000000",
                 "AWS_SESSION_TOKEN": "rehearsal-probe-session-token-000000"}


@dataclass
class Attempt:
    """One start of every node: their exit codes (None: killed by the rehearsal) and logs."""

    codes: list[int | None]
    logs: list[Path]
    preempted: bool = False

    def text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())


@dataclass
class Rehearsal:
    """A job YAML on N local nodes. `env` is what `sky jobs launch --env` would give; `secrets` what
    `--secret` would. The nodes' python is this interpreter."""

    job_yaml: Path
    work: Path
    nodes: int = 2
    task_id: str = "rehearsal"
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 900
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.task = yaml.safe_load(Path(self.job_yaml).read_text(encoding="utf-8"))
        self.port = _free_port()

    def node_env(self, rank: int) -> dict[str, str]:
        home = self.work / f"node-{rank}"
        for sub in ("home", "tmp", "work"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        env = {k: "" if v is None else str(v) for k, v in (self.task.get("envs") or {}).items()}
        env.update({k: "" if v is None else str(v) for k, v in (self.task.get("secrets") or {}).items()})
        env.update(self.env)
        env.update(self.secrets)
        env.update({
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home / "home"), "TMPDIR": str(home / "tmp"),
            # the YAML's FT_WORKDIR is under /tmp, which every VM has to itself; here each node gets its own
            "FT_WORKDIR": str(home / "work"),
            "SKYPILOT_NODE_RANK": str(rank), "SKYPILOT_NUM_NODES": str(self.nodes),
            "SKYPILOT_NODE_IPS": "\n".join(["127.0.0.1"] * self.nodes), "SKYPILOT_NUM_GPUS_PER_NODE": "1",
            "SKYPILOT_TASK_ID": self.task_id,
            # CPU stand-ins for the GPUs: gloo, one thread per process (2 cores shared by every node)
            "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "FT_RENDEZVOUS_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline",  # a W&B key is rehearsed, never sent
        })
        # what this machine's store and caches need; a secret set here is passed on unless probed
        for name in ("PYTHONPATH", "HF_HOME", "FT_CACHE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                     *settings.SECRET_NAMES):
            if name in os.environ and name not in self.env and name not in self.secrets:
                env.setdefault(name, os.environ[name])
        return env

    def start(self, fault: str = "", until: Callable[[], bool] | None = None) -> Attempt:
        """Start every node (setup, then run) and wait. With `until`, kill every node's process tree the
        moment it holds (the preemption); `fault` is FT_FAULT for this start only."""
        n = len(self.attempts)
        logs = [self.work / f"node-{rank}" / f"attempt-{n}.log" for rank in range(self.nodes)]
        script = "\n".join(filter(None, ["set -e", self.task.get("setup") or "", self.task["run"]]))
        procs = []
        for rank, log in enumerate(logs):
            env = self.node_env(rank)
            if fault:
                env["FT_FAULT"] = fault
            with log.open("w") as out:
                procs.append(subprocess.Popen(["bash", "-c", script], env=env, cwd=self.work, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + self.timeout_s
        preempted = False
        while any(p.poll() is None for p in procs):
            if until is not None and not preempted and until():
                for p in procs:
                    kill_tree(p.pid)
                preempted = True
            if time.monotonic() > deadline:
                for p in procs:
                    kill_tree(p.pid)
                raise TimeoutError(f"{self.job_yaml}: the nodes did not finish in {self.timeout_s:.0f} s "
                                   f"(logs: {', '.join(map(str, logs))})")
            time.sleep(0.2)
        codes = [None if preempted else p.returncode for p in procs]
        attempt = Attempt(codes, logs, preempted)
        self.attempts.append(attempt)
        return attempt


def kill_tree(pid: int) -> None:
    """SIGKILL a node: its shell and every process under it (torch's launcher starts its workers in
    sessions of their own, so the process group is not enough)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(family, timeout=30)


def leaked_secrets(texts: Mapping[str, str], secrets: Mapping[str, str]) -> list[str]:
    """'where: NAME' for every secret value found in the given texts."""
    return [f"{where}: {name}" for where, text in texts.items() for name, value in secrets.items()
            if value and value in text]


def store_texts(store: Any, prefix: str) -> dict[str, str]:
    """Every object under `prefix`, as text (binary files too: a secret would show up in their bytes)."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rel, _size in store.list(prefix):
            local = Path(tmp) / "f"
            store.download_file(f"{prefix}/{rel}", local)
            out[store.url(f"{prefix}/{rel}")] = local.read_bytes().decode("latin-1")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- `ft rehearse`: the job shrunk
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}


def tiny_model(base: str, out: Path) -> Path:
    """A random model of `base`'s own architecture (its config.json, shrunk to 2 layers of width 64)
    with its real tokenizer and chat template: the cloud job's code paths at a CPU's speed."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from trainer import builtin_model

    source = str(builtin_model.materialize()) if builtin_model.is_builtin(base) else base
    config = AutoConfig.from_pretrained(source)
    for key, value in TINY.items():
        if hasattr(config, key):
            setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def shrunk_spec(spec: Any, spec_dir: Path, model: Path, out: Path, rows: int, nodes: int) -> Path:
    """The spec with the tiny model, the first `rows` rows of each data file, a few steps per stage
    (a checkpoint every 2), DDP on `nodes` nodes, two test items: written to `out/job.yaml`."""
    raw = spec.resolved()
    raw["model"] = {**raw["model"], "base": str(model), "dtype": "auto", "attn_implementation": "auto"}
    raw["finetune"] = {**raw["finetune"], "method": "lora" if raw["finetune"]["method"] == "qlora"
                       else raw["finetune"]["method"]}
    raw.pop("prototype", None)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for role, rel in spec.data.files().items():
        lines = (spec_dir / rel).read_text(encoding="utf-8").splitlines()[:rows]
        (out / "data" / f"{role}.jsonl").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        raw["data"][role] = f"data/{role}.jsonl"
    for stage in raw["stages"]:
        stage.pop("init_adapter", None)
        stage.update(max_steps=4, save_steps=2, logging_steps=1, per_device_train_batch_size=2,
                     gradient_accumulation_steps=1, gradient_checkpointing=False)
        for key, small in (("max_completion_length", 8), ("num_generations", 2), ("max_length", 256)):
            if key in stage:
                stage[key] = small
    raw["distributed"] = {**raw.get("distributed", {}), "num_nodes": nodes, "strategy": "ddp"}
    if nodes > 1:  # the clouds a multi-node job may go to (jobs.pricing.NO_MULTI_NODE)
        from jobs.pricing import NO_MULTI_NODE

        clouds = [c for c in raw["resources"]["clouds"] if c not in NO_MULTI_NODE]
        raw["resources"]["clouds"] = clouds or ["aws"]
    raw["evaluation"] = {**raw["evaluation"], "limit": 2, "max_new_tokens": 8, "lm_eval_tasks": []}
    (out / "job.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out / "job.yaml"


@dataclass
class Verdict:
    step: str
    ok: bool
    detail: str


def verdicts(job: Rehearsal, run: Any, first_stage: str, preempt: bool) -> list[Verdict]:
    """What the rehearsal proved, step by step."""
    store, last = run.store, job.attempts[-1]
    text = "\n".join(a.text() for a in job.attempts)
    entry = job.task["run"].strip().splitlines()[-1]
    out = [Verdict("image entry point", "python -m trainer launch" in entry, entry),
           Verdict("rendezvous", last.codes == [0] * job.nodes,
                   f"{job.nodes} nodes, exit codes {last.codes}")]
    saved = run.complete_checkpoints(first_stage)
    parts = {rel for step in saved for rel, _ in store.list(run.checkpoint(first_stage, step))
             if rel.startswith("_PARTS/")}
    out.append(Verdict("checkpoint upload", len(parts) >= job.nodes,
                       f"{first_stage}: checkpoints {saved}, node parts {sorted(parts)}"))
    if preempt:
        resumed = text.count(f"{first_stage}: resuming from checkpoint")
        out.append(Verdict("resume", job.attempts[0].preempted and resumed >= job.nodes,
                           f"every node killed at a sealed checkpoint; {resumed} node(s) resumed"))
    comparison = run.read_json(run.comparison()) or {}
    out.append(Verdict("eval", bool(comparison.get("rows")),
                       f"{len(comparison.get('rows', []))} rows in {run.url(run.comparison())}"))
    out.append(Verdict("report", store.exists(run.report), run.url(run.report)))
    leaks = leaked_secrets({**store_texts(store, run.root), **{str(p): p.read_text(errors="replace")
                                                              for a in job.attempts for p in a.logs}},
                           PROBE_SECRETS)
    out.append(Verdict("secrets", not leaks, "; ".join(leaks) or
                       f"probe values of {', '.join(PROBE_SECRETS)} in no stored file and no log"))
    return out
