"""The names of the fields in `runs/<id>/<stage>/metrics.jsonl`: one JSON object per log event of the
Hugging Face Trainer, written by `trainer.callbacks.MetricsCallback`. The report, the diagnostics,
`ft status` and the demo summary read these names, so a run from any machine (the cloud's too) shows the
same sections. Light module (no torch): the workstation reads it as well.

Every numeric value TRL logs is kept under TRL's own key, except the few renamed in `RENAMES`. A row is
one of three kinds: a training row (has `loss`), an evaluation row (has `eval_loss`: the stage's
validation file, a few batches at every `save_steps` and at the end), or the stage's summary (`final`).

| field | stages | what it is |
| --- | --- | --- |
| `stage`, `step`, `epoch` | all | the stage's name, the optimizer step (global), the epoch (fraction) |
| `loss` | all | training loss: SFT cross-entropy, DPO preference loss (ln 2 ≈ 0.693 at the start), GRPO policy loss |
| `eval_loss` | SFT, DPO with validation data | loss on `sft_valid` / `dpo_valid` (first 16 rows on a CPU, 512 on GPU) |
| `learning_rate` | all | the scheduler's learning rate at that step |
| `grad_norm` | all | the gradient norm before clipping |
| `step_time`, `tokens_per_s` | all | seconds per optimizer step since the last row; trained tokens per second |
| `num_tokens`, `mean_token_accuracy`, `entropy` | SFT, DPO | TRL's token count, next-token accuracy, entropy |
| `rewards/margins`, `rewards/accuracies` | DPO | mean chosen − rejected implicit reward; share of pairs chosen wins |
| `rewards/chosen`, `rewards/rejected`, `logps/chosen`, `logps/rejected` | DPO | the two sides apart |
| `eval_rewards/margins`, `eval_rewards/accuracies`, … | DPO | the same on `dpo_valid` |
| `reward_mean`, `reward_std` | GRPO | weighted total reward of the step's completions (TRL's `reward`, `reward_std`) |
| `rewards/<function>/mean`, `rewards/<function>/std` | GRPO | each reward function's own mean and std |
| `frac_reward_zero_std` | GRPO | share of prompt groups whose completions all got the same reward (zero advantage) |
| `kl` | GRPO with beta > 0 | mean per-token KL to the reference model |
| `completions/mean_length`, `completions/max_length` | GRPO | generated tokens per completion |
| `completions/clipped_ratio` | GRPO | share of completions cut at `max_completion_length` (no EOS) |
| `prompts_dropped`, `prompts_kept` | GRPO | prompts longer than the stage's `max_length` (dropped before training) |
| `final`, `train_runtime`, `train_loss` | all | the stage's summary row (one, last) |
"""

from __future__ import annotations

from typing import Any

STEP = "step"
LOSS = "loss"
EVAL_LOSS = "eval_loss"
LEARNING_RATE = "learning_rate"
GRAD_NORM = "grad_norm"
FINAL = "final"

DPO_MARGINS = "rewards/margins"
DPO_ACCURACIES = "rewards/accuracies"
DPO_CHOSEN = "rewards/chosen"
DPO_REJECTED = "rewards/rejected"

REWARD_MEAN = "reward_mean"
REWARD_STD = "reward_std"
REWARD_ZERO_STD = "frac_reward_zero_std"
KL = "kl"
CLIPPED_RATIO = "completions/clipped_ratio"
MEAN_LENGTH = "completions/mean_length"

# TRL's log keys → ours (TRL's GRPO logs the total reward as `reward`; earlier runs stored `reward_mean`)
RENAMES = {"reward": REWARD_MEAN}


def eval_key(name: str) -> str:
    """The key of a training field in an evaluation row (`rewards/margins` → `eval_rewards/margins`)."""
    return f"eval_{name}"


def reward_functions(rows: list[dict[str, Any]]) -> list[str]:
    """The GRPO reward functions named in `rewards/<function>/mean` keys, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "rewards" and parts[2] == "mean":
                names[parts[1]] = None
    return list(names)


def reward_function_key(name: str, stat: str = "mean") -> str:
    return f"rewards/{name}/{stat}"


def training_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if LOSS in r and not r.get(FINAL)]


def eval_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if EVAL_LOSS in r and not r.get(FINAL)]


def series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) for every row that has a number under `key`."""
    return [(int(r.get(STEP, 0)), float(r[key])) for r in rows
            if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]


# A curve's start and end as the summaries print them: the mean of up to three values at each end,
# since one step of a few-step CPU run is too noisy to compare (a loss can rise on one batch).
EDGE_WINDOW = 3


def first_last(values: list[float]) -> tuple[float, float] | None:
    """(mean of the first values, mean of the last), windows of up to EDGE_WINDOW that never overlap;
    a single value is both; None for none."""
    if not values:
        return None
    k = max(1, min(EDGE_WINDOW, len(values) // 2))
    return sum(values[:k]) / k, sum(values[-k:]) / k


# The columns of the evaluation comparison (`eval/comparison.json` rows, from `scores.headline`), per
# task: (key, label, shown as a percentage, lower is better). Accuracy barely moves on a small model
# after minutes of training; the format share, the format reward and the eval loss show the learning.
EVAL_COLUMNS: dict[str, list[tuple[str, str, bool, bool]]] = {
    "gsm8k": [("accuracy", "GSM8K accuracy", True, False), ("format_rate", "#### format", True, False),
              ("format_reward", "format reward", False, False), (EVAL_LOSS, "eval loss", False, True)],
    "translation": [("bleu", "BLEU", False, False), ("chrf", "chrF", False, False), ("ter", "TER", False, True),
                    ("comet", "COMET", False, False), (EVAL_LOSS, "eval loss", False, True)],
}


def eval_columns(task: str, rows: list[dict[str, Any]] | None = None) -> list[tuple[str, str, bool, bool]]:
    """The task's comparison columns; given rows, the eval loss only when some row measured it (the
    task's scores always, `–` where missing: COMET without its model)."""
    columns = EVAL_COLUMNS["gsm8k" if task == "gsm8k" else "translation"]
    if rows is None:
        return columns
    return [c for c in columns if c[0] != EVAL_LOSS or any(isinstance(r.get(EVAL_LOSS), int | float) for r in rows)]


def eval_cell(value: Any, percent: bool) -> str:
    """One comparison cell as the tables print it: `38.0%`, `1.214`, or `–`."""
    if not isinstance(value, int | float):
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
