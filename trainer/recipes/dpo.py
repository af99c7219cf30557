"""DPO with TRL's DPOTrainer, continuing the previous stage's adapter. The reference is a frozen copy
of that adapter (TRL's "ref" adapter: the SFT model), not a second copy of the base in memory.

Pairs come from the bundle, or are built on-policy: sample the current model on training prompts
and pair the reference solution (chosen) with a sampled solution whose answer is wrong (rejected)."""

from __future__ import annotations

import re

from trainer.recipes.common import (
    StageContext,
    common_args,
    eval_args,
    load_dataset_file,
    load_eval_dataset,
    load_tokenizer_for,
    load_train_model,
)

CALCULATOR = re.compile(r"<<[^>]*>>")


SAMPLE_BATCH = 8  # prompts per generate call (× samples_per_prompt sequences)


def on_policy_pairs(model, tokenizer, rows: list[dict], samples: int, max_new_tokens: int,
                    temperature: float, seed: int, batch_size: int = SAMPLE_BATCH) -> list[dict]:
    """Sample `samples` solutions per prompt, batched with left padding on the model's device, and pair
    the reference solution (chosen) with the first wrong one (rejected)."""
    import torch

    from trainer.answers import answers_match, extract_answer, gold_answer
    from trainer.generation import chat_text

    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # every prompt ends where generation starts
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no LoRA dropout while sampling
    pairs = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            # The chat template already holds the special tokens; adding BOS again would shift the model.
            inputs = tokenizer([chat_text(tokenizer, r["prompt"]) for r in batch], return_tensors="pt",
                               padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=True, temperature=temperature,
                                     max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                     pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, row in enumerate(batch):  # generate keeps each prompt's samples together
                completions = texts[i * samples:(i + 1) * samples]
                gold = gold_answer(row["answer"])
                wrong = [c for c in completions if c.strip() and not answers_match(extract_answer(c), gold)]
                if wrong:
                    chosen = CALCULATOR.sub("", row["answer"]).strip()
                    pairs.append({"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                                  "rejected": [{"role": "assistant", "content": wrong[0].strip()}]})
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return pairs


def sample_on_training_device(model, strategy: str, sample):
    """Run `sample()` with the model on this process's training device (its GPU when there is one):
    transformers loads a LoRA/full model on the CPU and only the Trainer moves it, so sampling there
    would run on the CPU. A quantized model already sits on its GPU. Under a parameter-sharding
    strategy (FSDP, ZeRO-3) the model goes back to the CPU afterwards, where the sharding expects it."""
    from trainer.models import SHARDED_STRATEGIES, training_device

    device = training_device()
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    before = next(model.parameters()).device
    if not quantized and before != device:
        model.to(device)
    try:
        return sample()
    finally:
        if not quantized and strategy in SHARDED_STRATEGIES and before != device:
            model.to(before)


def build(ctx: StageContext):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    stage = ctx.stage
    tokenizer = load_tokenizer_for(ctx)
    model, peft_config = load_train_model(ctx)
    if stage.pairs == "on_policy":
        rows = load_dataset_file(ctx.bundle.data_path("grpo_train")).select_columns(["prompt", "answer"])
        rows = rows.shuffle(seed=stage.seed).select(range(min(stage.on_policy.prompts, len(rows))))
        p = stage.on_policy
        pairs = ctx.stored_rows(lambda: sample_on_training_device(
            model, ctx.spec.distributed.strategy,
            lambda: on_policy_pairs(model, tokenizer, list(rows), p.samples_per_prompt, p.max_new_tokens,
                                    p.temperature, stage.seed)))
        if not pairs:
            raise ValueError("on-policy DPO: every sampled solution was correct; no pairs to learn from")
        train = Dataset.from_list(pairs)
    else:
        train = load_dataset_file(ctx.bundle.data_path("dpo_train"))
    valid = load_eval_dataset(ctx, "dpo_valid")  # the bundle's held-out pairs, also for on-policy training pairs
    config = DPOConfig(**common_args(ctx), **eval_args(ctx, valid), beta=stage.beta, loss_type=[stage.loss_type],
                       max_length=stage.max_length)
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=train, eval_dataset=valid,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=ctx.callbacks)
    return trainer
