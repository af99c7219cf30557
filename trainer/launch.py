"""`python -m trainer launch {run,eval,pipeline} BUNDLE`: the image's one entry point for a SkyPilot job.

A job YAML's `run:` is one line calling this; everything a node must work out lives here, tested in
Python rather than in 40 lines of bash copied into every YAML:

- SkyPilot's variables (`SKYPILOT_NODE_RANK`, `SKYPILOT_NODE_IPS`, `SKYPILOT_NUM_NODES`,
  `SKYPILOT_NUM_GPUS_PER_NODE`) → one process (`python -m trainer run`) on a single GPU, or
  `accelerate launch` with one process per GPU across every node, rendezvous at the head node's IP;
- the strategy (`FT_ACCELERATE_CONFIG`/`FT_DEEPSPEED_CONFIG` as `ft launch` rendered them, else
  `FT_STRATEGY`) and mixed precision (`FT_MIXED_PRECISION`, `auto` decided from this node's GPU);
- optional variables SkyPilot passes as "" (secrets, endpoint) are unset, so boto3 and the Hub see
  "not set";
- the exit code: accelerate reports any failed rank as 1, so the trainer's own code (75 = retry, for
  `recover_on_exit_codes`) is read back from `FT_EXIT_CODE_FILE`;
- SIGTERM (a preemption notice) is passed on to the trainers, which checkpoint before exiting;
- evaluation and the report run on the head node only.

`FT_LAUNCH_DRY_RUN=1` prints each command as a JSON line instead of running it (the job YAMLs' tests
run their own `run:` text this way).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainer import settings

# Left empty in a YAML's envs/secrets when not used; "" would read as a set-but-empty value.
OPTIONAL_VARS = ("AWS_ENDPOINT_URL", "FT_STORE", *settings.SECRET_NAMES)
STRATEGY_FLAGS = {
    "ddp": ["--multi_gpu"],
    "fsdp": ["--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_auto_wrap_policy",
             "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "SHARDED_STATE_DICT"],
    "deepspeed_zero2": ["--use_deepspeed", "--zero_stage", "2"],
    "deepspeed_zero3_offload": ["--use_deepspeed", "--zero_stage", "3", "--offload_optimizer_device", "cpu",
                                "--offload_param_device", "cpu", "--zero3_init_flag", "true",
                                "--zero3_save_16bit_model", "true"],
}


@dataclass(frozen=True)
class Node:
    """This node's place in the job, from SkyPilot's variables (one node, one GPU when absent)."""

    rank: int = 0
    num_nodes: int = 1
    gpus: int = 1
    head_ip: str = "127.0.0.1"

    @property
    def processes(self) -> int:
        return self.num_nodes * max(1, self.gpus)

    @property
    def is_head(self) -> bool:
        return self.rank == 0


def node_from_env(env: Mapping[str, str]) -> Node:
    def whole(name: str, default: int) -> int:
        raw = (env.get(name) or "").strip()
        try:
            return int(raw) if raw else default
        except ValueError:
            from trainer.errors import BadInput

            raise BadInput(f"{name}={raw!r}: expected a whole number") from None

    ips = [line.strip() for line in (env.get("SKYPILOT_NODE_IPS") or "").splitlines() if line.strip()]
    return Node(rank=whole("SKYPILOT_NODE_RANK", 0), num_nodes=whole("SKYPILOT_NUM_NODES", 1),
                gpus=whole("SKYPILOT_NUM_GPUS_PER_NODE", 1), head_ip=ips[0] if ips else "127.0.0.1")


def mixed_precision(requested: str, compute_capability: int | None) -> str:
    """`auto`: bf16 on Ampere (compute capability 8) or newer, fp16 before, `no` without a GPU (what
    trainer.models.decide_placement picks for the weights)."""
    if requested != "auto":
        return requested
    if compute_capability is None:
        return "no"
    return "bf16" if compute_capability >= 8 else "fp16"


def _compute_capability() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(0)[0]


def strategy_flags(config_dir: Path) -> list[str]:
    """accelerate's flags for the job's strategy: the config `ft launch` rendered, else FT_STRATEGY's."""
    rendered = settings.accelerate_config()
    if rendered:
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "accelerate.yaml").write_bytes(base64.b64decode(rendered))
        deepspeed = settings.deepspeed_config()
        if deepspeed:  # the accelerate config names this path (jobs.launch.ACCEL_DIR_ON_NODE)
            (config_dir / "deepspeed.json").write_bytes(base64.b64decode(deepspeed))
        return ["--config_file", str(config_dir / "accelerate.yaml")]
    name = settings.strategy()
    if name not in STRATEGY_FLAGS:
        from trainer.errors import BadInput

        raise BadInput(f"FT_STRATEGY={name!r}: one of {', '.join(STRATEGY_FLAGS)}")
    return STRATEGY_FLAGS[name]


def trainer_command(node: Node, trainer_args: list[str], config_dir: Path, precision: str) -> list[str]:
    """The command this node runs for training: plain `python -m trainer` for one process, else
    `accelerate launch` across every node's GPUs."""
    if node.processes == 1:
        return [sys.executable, "-m", "trainer", *trainer_args]
    return [sys.executable, "-m", "accelerate.commands.launch", *strategy_flags(config_dir),
            "--mixed_precision", precision,
            "--num_machines", str(node.num_nodes), "--machine_rank", str(node.rank),
            "--main_process_ip", node.head_ip, "--main_process_port", str(settings.rendezvous_port()),
            "--num_processes", str(node.processes),
            "-m", "trainer", *trainer_args]


def clean_environment(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not (k in OPTIONAL_VARS and v == "")}


def _run(command: list[str], env: dict[str, str], exit_code_file: Path) -> int:
    """Run a child, passing SIGTERM/SIGINT on; its code, or the trainer's own when accelerate said 1."""
    if settings.launch_dry_run():
        print(json.dumps({"command": command}), flush=True)
        return 0
    exit_code_file.unlink(missing_ok=True)
    child = subprocess.Popen(command, env={**env, "FT_EXIT_CODE_FILE": str(exit_code_file)})

    def forward(signum, frame) -> None:  # noqa: ARG001 -- signal handler signature
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code < 0:  # killed by a signal: the shell's convention
        return 128 - code
    if code != 0 and exit_code_file.is_file():
        try:
            return int(exit_code_file.read_text().strip())
        except ValueError:
            pass
    return code


def launch(what: str, bundle: str, stage: str | None = None, run_id: str | None = None,
           store: str | None = None) -> int:
    """Train (`run`), evaluate (`eval`, head node only) or both in turn (`pipeline`) on this node.
    Empty `stage`/`run_id`/`store` (a YAML's "" envs) mean "not given"."""
    env = clean_environment(dict(os.environ))
    stage, run_id, store = stage or None, run_id or None, store or None
    node = node_from_env(env)
    common = [bundle] + (["--run-id", run_id] if run_id else []) + (["--store", store] if store else [])
    work = Path(tempfile.mkdtemp(prefix="ft-launch-"))
    exit_code_file = work / "exit-code"
    if what in ("run", "pipeline"):
        precision = mixed_precision(settings.mixed_precision(),
                                    _compute_capability() if node.processes > 1 else None)
        command = trainer_command(node, ["run", *common, *(["--stage", stage] if stage else [])],
                                  work / "accelerate", precision)
        print(f"[ft launch] node {node.rank} of {node.num_nodes}, {node.processes} process(es) in all",
              file=sys.stderr, flush=True)
        code = _run(command, env, exit_code_file)
        if code != 0 or what == "run":
            return code
    if not node.is_head:
        return 0
    # One process, whatever the GPU count: vLLM or transformers inside use the node's GPUs themselves.
    # After training, every finished stage that generates (a reward model does not) and the report.
    only = ["--stage", stage] if stage and what == "eval" else []
    return _run([sys.executable, "-m", "trainer", "eval", *common, *only], env, exit_code_file)
