"""GRPO with TRL's GRPOTrainer and verifiable rewards (math correctness, format, chrF), plus a
trained reward model when the spec names one. vLLM generates (colocated) when it is installed and a
GPU is present; TRL's own generation otherwise."""

from __future__ import annotations

import importlib.util

from trainer.models import has_cuda
from trainer.recipes.common import StageContext, common_args, load_dataset_file, load_tokenizer_for, load_train_model
from trainer.rewards import reward_functions


def use_vllm(setting: str) -> bool:
    available = importlib.util.find_spec("vllm") is not None and has_cuda()
    if setting == "on" and not available:
        from trainer.models import CapabilityError

        raise CapabilityError("use_vllm: on needs vLLM and a CUDA GPU (use auto or off)")
    return setting == "on" or (setting == "auto" and available)


def build(ctx: StageContext):
    from trl import GRPOConfig, GRPOTrainer

    stage = ctx.stage
    tokenizer = load_tokenizer_for(ctx)
    train = load_dataset_file(ctx.bundle.data_path("grpo_train")).select_columns(["prompt", "answer"])
    # TRL does not truncate GRPO prompts; drop the ones longer than the stage's max_length instead.
    def fits(row: dict) -> bool:
        return len(tokenizer.apply_chat_template(row["prompt"], tokenize=True)) <= stage.max_length

    train = train.filter(fits)
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
    return GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=train,
                       processing_class=tokenizer, peft_config=peft_config, callbacks=ctx.callbacks)
