"""Accelerate configs for the spec's `distributed.strategy`: DDP, FSDP, DeepSpeed ZeRO-2, ZeRO-3 with
CPU offload. The dicts below are the single source; `jobs/accelerate/*.yaml|json` are the same
configs rendered for people (`accelerate launch --config_file jobs/accelerate/ddp.yaml ...`), and
a test keeps the two identical:

    python -m jobs.accelerate_config --write-checked-in

`ft launch` passes the spec's config to the job as base64 envs (jobs/launch.py `accelerate_envs`); the
job YAML's run script writes them out on each node and gives accelerate this node's rank, the head
node's address and the process counts from SkyPilot's variables as flags.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.spec import JobSpec

STRATEGIES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3_offload")
CONFIG_DIR = Path(__file__).parent / "accelerate"
MAIN_PROCESS_PORT = 29500

# "auto" values are filled in by transformers' DeepSpeed integration from the TrainingArguments,
# so batch size, accumulation and clipping have one source: the spec's stage.
_DS_TRAINER: dict[str, Any] = {
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "steps_per_print": 1000000,
    "wall_clock_breakdown": False,
}
DEEPSPEED: dict[str, dict[str, Any]] = {
    "deepspeed_zero2": {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "reduce_bucket_size": "auto",
            "allgather_bucket_size": 500000000,
        },
        **_DS_TRAINER,
    },
    "deepspeed_zero3_offload": {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 3,
            # Optimizer states (12 bytes/param) and parameters wait in pinned CPU memory: the
            # guide's setting for 70B+ models that do not fit the GPUs otherwise.
            "offload_optimizer": {"device": "cpu", "pin_memory": True},
            "offload_param": {"device": "cpu", "pin_memory": True},
            "overlap_comm": True,
            "contiguous_gradients": True,
            "sub_group_size": 1000000000,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1000000000,
            "stage3_max_reuse_distance": 1000000000,
            # Checkpoints and the final model are saved as ordinary 16-bit weights, so the
            # artifact layout is the same as a single-GPU run's.
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        **_DS_TRAINER,
    },
}

_BASE: dict[str, Any] = {
    "compute_environment": "LOCAL_MACHINE",
    "debug": False,
    "downcast_bf16": "no",
    "machine_rank": 0,
    "main_training_function": "main",
    "mixed_precision": "bf16",
    "num_machines": 1,
    "num_processes": 1,
    "rdzv_backend": "static",
    "same_network": True,
    "tpu_env": [],
    "tpu_use_cluster": False,
    "tpu_use_sudo": False,
    "use_cpu": False,
}

ACCELERATE: dict[str, dict[str, Any]] = {
    "ddp": {**_BASE, "distributed_type": "MULTI_GPU"},
    "fsdp": {
        **_BASE,
        "distributed_type": "FSDP",
        "fsdp_config": {
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_forward_prefetch": False,
            "fsdp_offload_params": False,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_sync_module_states": True,
            "fsdp_use_orig_params": True,
        },
    },
    "deepspeed_zero2": {
        **_BASE,
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": "ds_zero2.json", "zero3_init_flag": False},
    },
    "deepspeed_zero3_offload": {
        **_BASE,
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": "ds_zero3_offload.json", "zero3_init_flag": True},
    },
}
DS_FILES = {"deepspeed_zero2": "ds_zero2.json", "deepspeed_zero3_offload": "ds_zero3_offload.json"}


# The spec's `model.dtype` → accelerate's --mixed_precision. `auto` is decided on the node by the job
# YAML's run script (bf16 on compute capability 8+, fp16 before), as trainer.models.decide_placement
# decides it for the model itself.
MIXED_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "no", "auto": "auto"}


def mixed_precision_for(spec: JobSpec) -> str:
    """bf16 | fp16 | no, or auto (the node's GPU decides) for the spec's `model.dtype`."""
    return MIXED_PRECISION[spec.model.dtype]


def accelerate_config(strategy: str, num_machines: int = 1, machine_rank: int = 0, num_processes: int = 1,
                      main_process_ip: str | None = None, ds_dir: Path | None = None,
                      mixed_precision: str = "bf16") -> dict[str, Any]:
    """The accelerate config for one node of a `num_machines` × GPUs job. `mixed_precision` `auto` keeps
    the bf16 placeholder: the run script's --mixed_precision flag (decided on the node) overrides it."""
    if strategy not in ACCELERATE:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    cfg = copy.deepcopy(ACCELERATE[strategy])
    cfg.update(num_machines=num_machines, machine_rank=machine_rank, num_processes=num_processes)
    if mixed_precision != "auto":
        cfg["mixed_precision"] = mixed_precision
    if num_machines > 1:
        cfg.update(main_process_ip=main_process_ip, main_process_port=MAIN_PROCESS_PORT)
    if strategy in DS_FILES:
        cfg["deepspeed_config"]["deepspeed_config_file"] = str((ds_dir or CONFIG_DIR) / DS_FILES[strategy])
    return cfg


def strategy_for(spec: JobSpec) -> str | None:
    """The accelerate strategy a spec asks for; None: a single process (`python -m trainer`)."""
    return None if spec.distributed.strategy == "none" else spec.distributed.strategy


def render(cfg: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=True)


def checked_in_files() -> dict[str, str]:
    """File name → content of the configs checked in under jobs/accelerate/ (single node, 8 GPUs)."""
    files = {}
    for strategy in STRATEGIES:
        cfg = accelerate_config(strategy, num_processes=8)
        if strategy in DS_FILES:
            cfg["deepspeed_config"]["deepspeed_config_file"] = f"jobs/accelerate/{DS_FILES[strategy]}"
        files[f"{strategy}.yaml"] = render(cfg)
    for strategy, name in DS_FILES.items():
        files[name] = json.dumps(DEEPSPEED[strategy], indent=2) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-checked-in", action="store_true", required=True, help="regenerate jobs/accelerate/")
    parser.parse_args(argv)
    CONFIG_DIR.mkdir(exist_ok=True)
    for name, text in checked_in_files().items():
        (CONFIG_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
