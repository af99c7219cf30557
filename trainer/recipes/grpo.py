"""GRPO with TRL's GRPOTrainer and verifiable rewards (math correctness, format, chrF), plus a
trained reward model when the spec names one. vLLM generates (colocated) when it is installed and a
GPU is present (`use_vllm: auto`, trainer.generation.decide_vllm); TRL's own generation otherwise."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from trainer.errors import BadInput
from trainer.generation import use_vllm  # the one vLLM decision, shared with evaluation
from trainer.recipes.common import StageContext, common_args, load_dataset_file, load_tokenizer_for, load_train_model
from trainer.rewards import reward_functions

log = logging.getLogger(__name__)


def prompt_lengths(tokenizer, prompts: list) -> list[int]:
    """Token counts of GRPO prompts as TRL tokenizes them: the chat template with the generation prompt.
    In transformers 5 `apply_chat_template(..., tokenize=True)` returns a BatchEncoding, whose len() is its
    number of keys; return_dict=False gives the ids themselves."""
    chats = [p for p in prompts if not isinstance(p, str)]
    ids = iter(tokenizer.apply_chat_template(chats, tokenize=True, add_generation_prompt=True,
                                             return_dict=False) if chats else [])
    texts = iter(tokenizer([p for p in prompts if isinstance(p, str)], add_special_tokens=False)["input_ids"]
                 if any(isinstance(p, str) for p in prompts) else [])
    return [len(next(texts)) if isinstance(p, str) else len(next(ids)) for p in prompts]


class PromptFilterLog(TrainerCallback):
    """Puts the prompt filter's counts into every logged row, so metrics.jsonl (and the report) carry them."""

    def __init__(self, dropped: int, kept: int):
        self.counts = {"prompts_dropped": dropped, "prompts_kept": kept}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs.update(self.counts)


def filter_prompts(train, tokenizer, max_length: int, stage_name: str = "grpo"):
    """(rows whose prompt fits `max_length` tokens, number dropped). TRL 1.x does not truncate GRPO
    prompts (it has no max_prompt_length any more), so a longer prompt would run past the memory the
    job was sized for; it is dropped instead, and a stage where none fits stops with exit 2."""
    lengths = prompt_lengths(tokenizer, list(train["prompt"]))
    keep = [i for i, n in enumerate(lengths) if n <= max_length]
    dropped = len(lengths) - len(keep)
    if not keep:
        shortest = min(lengths) if lengths else 0
        raise BadInput(f"stage {stage_name}: no GRPO prompt fits max_length {max_length} tokens (the shortest "
                       f"of {len(lengths)} has {shortest}); raise the stage's max_length or shorten the prompts")
    if dropped:
        log.warning("%s: dropped %d of %d GRPO prompts longer than max_length %d tokens",
                    stage_name, dropped, len(lengths), max_length)
    return (train.select(keep) if dropped else train), dropped


def build(ctx: StageContext):
    from trl import GRPOConfig, GRPOTrainer

    stage = ctx.stage
    tokenizer = load_tokenizer_for(ctx)
    train = load_dataset_file(ctx.bundle.data_path("grpo_train")).select_columns(["prompt", "answer"])
    train, dropped = filter_prompts(train, tokenizer, stage.max_length, stage.stage_name)
    ctx.callbacks.insert(0, PromptFilterLog(dropped, len(train)))  # before MetricsCallback writes the row
    rewards = reward_functions(stage.rewards)
    weights = list(stage.reward_weights) if stage.reward_weights else None
    if stage.reward_model:
        rewards.append(stage.reward_model)  # TRL loads it as a sequence-classification reward model
        weights = weights + [1.0] if weights else None
    vllm = use_vllm(stage.use_vllm)
    config = GRPOConfig(
        **common_args(ctx),
        num_generations=stage.num_generations,
        max_completion_length=stage.max_completion_length,
        temperature=stage.temperature,
        beta=stage.beta,
        reward_weights=weights,
        use_vllm=vllm,
        **({"vllm_mode": "colocate"} if vllm else {}),
    )
    model, peft_config = load_train_model(ctx)
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=train,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=ctx.callbacks)
    # For the stage's entry in run.json (the pipeline merges `ft_record` into it when present).
    trainer.ft_record = {"prompts_dropped": dropped, "prompts_kept": len(train)}
    return trainer
