"""DPO with TRL's DPOTrainer, continuing the previous stage's adapter. The reference is a frozen copy
of that adapter (TRL's "ref" adapter: the SFT model), not a second copy of the base in memory.

Pairs come from the bundle, or are built on-policy: sample the current model on training prompts
and pair the reference solution (chosen) with a sampled solution whose answer is wrong (rejected)."""

from __future__ import annotations

import re

from trainer.recipes.common import StageContext, common_args, load_dataset_file, load_tokenizer_for, load_train_model

CALCULATOR = re.compile(r"<<[^>]*>>")


def on_policy_pairs(model, tokenizer, rows: list[dict], samples: int, max_new_tokens: int,
                    temperature: float, seed: int) -> list[dict]:
    import torch

    from trainer.answers import answers_match, extract_answer, gold_answer

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    pairs = []
    for row in rows:
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        inputs = tokenizer([text], return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                                 num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id)
        completions = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        gold = gold_answer(row["answer"])
        wrong = [c for c in completions if c.strip() and not answers_match(extract_answer(c), gold)]
        if wrong:
            chosen = CALCULATOR.sub("", row["answer"]).strip()
            pairs.append({"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": wrong[0]}]})
    tokenizer.padding_side = "right"
    return pairs


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
        pairs = ctx.stored_rows(lambda: on_policy_pairs(model, tokenizer, list(rows), p.samples_per_prompt,
                                                        p.max_new_tokens, p.temperature, stage.seed))
        if not pairs:
            raise ValueError("on-policy DPO: every sampled solution was correct; no pairs to learn from")
        train = Dataset.from_list(pairs)
    else:
        train = load_dataset_file(ctx.bundle.data_path("dpo_train"))
    config = DPOConfig(**common_args(ctx), beta=stage.beta, loss_type=[stage.loss_type], max_length=stage.max_length)
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=ctx.callbacks)
    return trainer
