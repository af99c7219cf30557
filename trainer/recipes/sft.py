"""SFT with TRL's SFTTrainer: LoRA / QLoRA / full, packing, loss on the assistant's tokens only."""

from __future__ import annotations

from trainer.recipes.common import (
    StageContext,
    common_args,
    eval_args,
    load_dataset_file,
    load_eval_dataset,
    load_tokenizer_for,
    load_train_model,
)


def to_prompt_completion(row: dict) -> dict:
    """ChatML messages → conversational prompt/completion, so TRL masks the loss to the last
    assistant turn with any chat template (no `{% generation %}` markers needed)."""
    messages = row["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def build(ctx: StageContext):
    from trl import SFTConfig, SFTTrainer

    stage = ctx.stage
    tokenizer = load_tokenizer_for(ctx)
    train = load_dataset_file(ctx.bundle.data_path("sft_train"))
    valid = load_eval_dataset(ctx, "sft_valid")
    if stage.assistant_only_loss:
        train = train.map(to_prompt_completion, remove_columns=train.column_names)
        if valid is not None:
            valid = valid.map(to_prompt_completion, remove_columns=valid.column_names)
    config = SFTConfig(
        **common_args(ctx),
        max_length=stage.max_length,
        packing=stage.packing,
        packing_strategy="bfd",
        completion_only_loss=stage.assistant_only_loss,
        **eval_args(ctx, valid),
    )
    model, peft_config = load_train_model(ctx)
    return SFTTrainer(model=model, args=config, train_dataset=train, eval_dataset=valid,
                      processing_class=tokenizer, peft_config=peft_config, callbacks=ctx.callbacks)
