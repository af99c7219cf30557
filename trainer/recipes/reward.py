"""A reward model from preference pairs with TRL's RewardTrainer: the guide's PPO row, since TRL 1.16
has no PPOTrainer. A later GRPO stage names this stage in `reward_model:` and optimises against it.

The final output is a full sequence-classification model (LoRA merged in), because GRPO loads reward
models by path with AutoModelForSequenceClassification."""

from __future__ import annotations

from pathlib import Path

from trainer.models import model_init_kwargs, resolve_model_path
from trainer.recipes.common import StageContext, common_args, load_dataset_file, load_tokenizer_for


def build(ctx: StageContext):
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    spec, stage = ctx.spec, ctx.stage
    tokenizer = load_tokenizer_for(ctx)
    init = model_init_kwargs(spec.model, spec.finetune)
    config = RewardConfig(**common_args(ctx), max_length=stage.max_length, model_init_kwargs=init)
    peft_config = None
    if spec.finetune.method != "full":
        lora = spec.finetune.lora
        peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=lora.target_modules, task_type="SEQ_CLS")
    train = load_dataset_file(ctx.bundle.data_path("dpo_train"))
    return RewardTrainer(model=resolve_model_path(spec.model.base), args=config, train_dataset=train,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=ctx.callbacks)


def finalize(trainer, final: Path) -> None:
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.config.pad_token_id = trainer.processing_class.pad_token_id
    model.save_pretrained(str(final))
