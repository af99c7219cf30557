"""What every recipe shares: the stage context, model loading (LoRA / QLoRA / full, continuing the
previous stage's adapter), and the TrainingArguments fields that come from the spec."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.bundle import Bundle
from trainer.models import has_cuda, model_init_kwargs, pick_dtype, resolve_model_path
from trainer.spec import JobSpec, StageBase


@dataclass
class StageContext:
    spec: JobSpec
    stage: StageBase
    bundle: Bundle
    output_dir: Path
    init_from: Path | None = None  # the previous stage's final/ (adapter or full weights)
    callbacks: list = field(default_factory=list)
    run_name: str = ""
    # rows a stage makes for itself (on-policy pairs): made once, kept with the run, the same on resume
    stored_rows: Callable[[Callable[[], list[dict]]], list[dict]] = lambda make: make()


def load_dataset_file(path: Path, split: str = "train"):
    from datasets import load_dataset

    return load_dataset("json", data_files={split: str(path)}, split=split)


# Validation rows an evaluation reads: a few batches on a CPU (an eval there must cost less than the steps it
# measures), more on a GPU where a forward pass over them takes seconds. The first rows of the file: the
# prepared validation splits are already shuffled, and the same rows every time keep the curve comparable.
EVAL_ROWS_CPU = 16
EVAL_ROWS_GPU = 512


def load_eval_dataset(ctx: StageContext, role: str):
    """The stage's validation split (`sft_valid`, `dpo_valid`) cut to the rows an evaluation reads, or
    None when the bundle has none."""
    path = ctx.bundle.data_path(role)
    if path is None:
        return None
    rows = load_dataset_file(path, "validation")
    limit = EVAL_ROWS_GPU if has_cuda() else EVAL_ROWS_CPU
    return rows.select(range(min(limit, len(rows)))) if len(rows) > limit else rows


def eval_args(ctx: StageContext, valid) -> dict[str, Any]:
    """TrainingArguments fields for the eval loss in metrics.jsonl (`eval_loss` and TRL's `eval_*`): once
    before the first step (the incoming model's loss), at every checkpoint, and at the last step
    (transformers evaluates there when the step is not a multiple of eval_steps)."""
    if valid is None:
        return {"eval_strategy": "no"}
    s = ctx.stage
    return {"eval_strategy": "steps", "eval_steps": s.save_steps, "eval_on_start": True,
            "per_device_eval_batch_size": s.per_device_train_batch_size}


def load_tokenizer_for(ctx: StageContext):
    from transformers import AutoTokenizer

    source = ctx.init_from if ctx.init_from and (ctx.init_from / "tokenizer_config.json").exists() \
        else resolve_model_path(ctx.spec.model.base)
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def lora_config(spec: JobSpec):
    from peft import LoraConfig

    lora = spec.finetune.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      layers_to_transform=lora.layers_to_transform, task_type="CAUSAL_LM")


def load_train_model(ctx: StageContext) -> tuple[Any, Any]:
    """(model, peft_config): a fresh LoRA config on the first stage, the previous stage's adapter
    (trainable) on later ones, so every stage's adapter applies to the original base model."""
    from transformers import AutoModelForCausalLM

    spec = ctx.spec
    kwargs = model_init_kwargs(spec.model, spec.finetune, spec.distributed.strategy)
    if spec.finetune.method == "full":
        source = str(ctx.init_from) if ctx.init_from else resolve_model_path(spec.model.base)
        return AutoModelForCausalLM.from_pretrained(source, **kwargs), None
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(spec.model.base), **kwargs)
    if spec.finetune.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ctx.stage.gradient_checkpointing)
    if ctx.init_from is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(ctx.init_from), is_trainable=True), None
    return model, lora_config(spec)


def report_to() -> list[str]:
    targets = ["tensorboard"]
    if os.environ.get("WANDB_API_KEY"):
        targets.append("wandb")
    return targets


def common_args(ctx: StageContext) -> dict[str, Any]:
    """TrainingArguments fields shared by SFTConfig, DPOConfig and GRPOConfig."""
    import torch

    s = ctx.stage
    dtype = pick_dtype(ctx.spec.model)
    cuda = has_cuda()
    return {
        "output_dir": str(ctx.output_dir),
        "run_name": ctx.run_name,
        "learning_rate": s.learning_rate,
        "num_train_epochs": s.epochs,
        "max_steps": s.max_steps,
        "per_device_train_batch_size": s.per_device_train_batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps,
        "warmup_steps": s.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        "lr_scheduler_type": s.lr_scheduler_type,
        "weight_decay": s.weight_decay,
        "gradient_checkpointing": s.gradient_checkpointing,
        "logging_steps": s.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": s.save_steps,
        "save_total_limit": s.save_total_limit,
        "seed": s.seed,
        "data_seed": s.seed,
        "report_to": report_to(),
        "use_cpu": not cuda,
        "bf16": cuda and dtype == torch.bfloat16,
        "fp16": cuda and dtype == torch.float16,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False if ctx.spec.finetune.method != "full" else None,
    }
