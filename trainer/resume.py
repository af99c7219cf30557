"""Resuming a stage exactly where it stopped: pick the newest checkpoint in the store that proves
itself against its manifest (falling back to the one before when it does not), and load it so that
the adapter, optimizer, scheduler, RNG and data position all continue as if nothing had happened.

Why the Trainer's own loading is not enough: TRL's DPO and GRPO trainers continue an adapter by
training "default" against a frozen copy named "ref", and save both: "default" in the checkpoint's
root and "ref" in `checkpoint-N/ref/`. transformers' `Trainer._load_from_checkpoint`, seeing adapter
sub-folders, loads only those, so the trained policy was never restored while step, schedule and
optimizer moments carried on. Here the policy adapter is loaded from the root, every one of its
tensors accounted for, and the reference is left as it was built: a copy of the stage's input.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.console import Console

from trainer.run import Run
from trainer.store import IntegrityError
from trainer.textio import read_jsonl

console = Console(stderr=True)


def resume_point(run: Run, stage: str, output_dir: Path, metrics_file: Path) -> Path | None:
    """The newest complete checkpoint of `stage` whose files match its manifest, downloaded to
    `output_dir/checkpoint-N`; `metrics_file` is cut back to the lines logged up to that step."""
    for step in reversed(run.complete_checkpoints(stage)):
        local = output_dir / f"checkpoint-{step}"
        if not (local / ".fetched").exists():
            shutil.rmtree(local, ignore_errors=True)  # e.g. what the killed process had written locally
            try:
                run.store.download_dir(run.checkpoint(stage, step), local, progress=False,
                                          require_manifest=True)
            except (IntegrityError, FileNotFoundError) as e:
                console.print(f"[yellow]{stage}: checkpoint {step} is corrupt or incomplete ({e}); "
                              "falling back to the one before[/]")
                continue
            (local / ".fetched").touch()
        _metrics_up_to(run, stage, metrics_file, step)
        return local
    metrics_file.unlink(missing_ok=True)
    return None


def _metrics_up_to(run: Run, stage: str, metrics_file: Path, step: int) -> None:
    """The stored metrics without lines past `step` (they are logged again after resuming)."""
    try:
        run.store.download_file(run.metrics(stage), metrics_file)
    except FileNotFoundError:
        metrics_file.unlink(missing_ok=True)
        return
    # json.dumps(row) is how MetricsCallback wrote each line, so the kept lines come back unchanged.
    kept = [json.dumps(row) for row in read_jsonl(metrics_file, tolerate_cut_last_line=True)
            if row.get("step", 0) <= step and not row.get("final")]
    metrics_file.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def finished(checkpoint: Path) -> bool:
    """Whether a checkpoint was saved at the stage's last optimizer step."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def load_policy_adapter(model, checkpoint: Path) -> None:
    """Load the checkpoint's root adapter into the model's active (trained) adapter; other adapters
    (TRL's frozen "ref") stay untouched. Every tensor of the active adapter must come from the file."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    active = model.active_adapters[0] if hasattr(model, "active_adapters") else model.active_adapter
    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights, adapter_name=active)
    expected = {n for n, _ in model.named_parameters() if f".{active}." in n}
    missing = sorted(k for k in result.missing_keys if k in expected)
    if missing or result.unexpected_keys:
        raise IntegrityError(f"{checkpoint}: adapter does not match the model (missing {missing[:3]}, "
                             f"unexpected {list(result.unexpected_keys)[:3]})")


def restore_cpu_index_locations() -> None:
    """Let `torch.load` map a storage to "cpu:N". The Trainer loads the optimizer with
    `map_location=args.device` when several processes train, and on CPUs (gloo) that device is "cpu:0",
    which torch has no restore rule for ("don't know how to restore data location of
    torch.storage.UntypedStorage (tagged with cpu:0)"): a multi-process CPU run could never resume."""
    import torch.serialization as serialization

    def restore(obj, location: str):
        return obj if location.startswith("cpu:") else None

    if not getattr(serialization, "_ft_cpu_index_rule", False):
        serialization.register_package(11, lambda obj: None, restore)  # after torch's own "cpu" (10)
        serialization._ft_cpu_index_rule = True


def make_resume_exact(trainer) -> None:
    """Replace the Trainer's checkpoint-weights loading for PEFT models by `load_policy_adapter`
    (optimizer, scheduler, RNG and data position are still restored by the Trainer itself)."""
    from peft import PeftModel

    restore_cpu_index_locations()

    if not isinstance(trainer.model, PeftModel):
        return
    original = trainer._load_from_checkpoint

    def load(resume_from_checkpoint: str, model=None) -> None:
        target = model if model is not None else trainer.model
        if isinstance(target, PeftModel) and (Path(resume_from_checkpoint) / "adapter_model.safetensors").exists():
            load_policy_adapter(target, Path(resume_from_checkpoint))
        else:
            original(resume_from_checkpoint, model)

    trainer._load_from_checkpoint = load


def load_finished(trainer, checkpoint: Path) -> None:
    """A checkpoint taken at the last step: load it instead of resuming (the Trainer checks its step
    limit only after a step, so resuming would train one step past max_steps)."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
