"""trainer.diagnostics: every rule on metrics rows shaped exactly as the trainer writes them (the keys TRL
1.16 logs, renamed by trainer.callbacks.RENAMES), once where it must fire and once where it must not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trainer import diagnostics
from trainer.diagnostics import Finding, diagnose
from trainer.report_data import ReportData, TokenLengths


def dpo_row(step: int, loss: float, margin: float = 0.0) -> dict[str, Any]:
    """A DPO training row as metrics.jsonl holds it (keys of a real TRL 1.16 DPO step)."""
    return {"stage": "dpo", "step": step, "epoch": step / 31, "loss": loss, "grad_norm": 0.24,
            "learning_rate": 1e-3, "entropy": 10.79, "num_tokens": 776.0 * step, "logits/chosen": -2.6e-05,
            "logits/rejected": -3.7e-05, "mean_token_accuracy": 0.0, "rewards/chosen": margin / 2,
            "rewards/rejected": -margin / 2, "rewards/accuracies": 1.0 if margin > 0 else 0.0,
            "rewards/margins": margin, "logps/chosen": -1059.5, "logps/rejected": -1069.7, "step_time": 2.5}


def dpo_eval_row(step: int, loss: float) -> dict[str, Any]:
    return {"stage": "dpo", "step": step, "epoch": step / 31, "eval_loss": loss, "eval_runtime": 1.9,
            "eval_rewards/margins": 0.0, "eval_rewards/accuracies": 0.0}


def grpo_row(step: int, clipped: float = 0.25, correctness: tuple[float, float] = (0.5, 0.5),
             zero_std: float = 0.0) -> dict[str, Any]:
    """A GRPO training row (keys of a real TRL 1.16 GRPO step with two reward functions)."""
    mean, std = correctness
    return {"stage": "grpo", "step": step, "epoch": step / 61, "loss": 0.01, "grad_norm": 0.3, "learning_rate": 1e-6,
            "num_tokens": 178.0 * step, "completions/mean_length": 40.0 if clipped < 1 else 8.0,
            "completions/min_length": 8.0, "completions/max_length": 8.0 if clipped == 1 else 64.0,
            "completions/clipped_ratio": clipped, "completions/mean_terminated_length": 30.0,
            "completions/min_terminated_length": 10.0, "completions/max_terminated_length": 50.0,
            "rewards/math_correctness/mean": mean, "rewards/math_correctness/std": std,
            "rewards/format_reward/mean": 0.5, "rewards/format_reward/std": 0.5, "reward_mean": mean + 0.5,
            "reward_std": std + 0.5 if zero_std < 1 else 0.0, "frac_reward_zero_std": zero_std, "kl": 0.001,
            "entropy": 10.7, "clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0, "step_time": 5.0,
            "prompts_dropped": 0, "prompts_kept": 61}


def data(metrics: dict[str, list[dict[str, Any]]] | None = None, comparison: dict[str, Any] | None = None,
         lengths: dict[str, TokenLengths] | None = None) -> ReportData:
    stages = [{"name": "sft", "method": "sft", "max_length": 256}, {"name": "dpo", "method": "dpo", "max_length": 256},
              {"name": "grpo", "method": "grpo", "max_length": 256, "max_completion_length": 8}]
    info = {"run_id": "r", "spec": {"stages": stages, "data": {"task": "math"}},
            "stages": {s["name"]: {"status": "done", "method": s["method"]} for s in stages}}
    return ReportData(info=info, metrics=metrics or {}, comparison=comparison, token_lengths=lengths or {},
                      stage_order=["sft", "dpo", "grpo"])


def comparison(**accuracy: float) -> dict[str, Any]:
    return {"task": "gsm8k", "metric": "accuracy",
            "rows": [{"stage": s, "accuracy": a, "n": 50, "source": "ft eval (transformers)"}
                     for s, a in accuracy.items()]}


# rule → (data where it fires, the text it must say, data where it must stay silent)
CASES: dict[str, tuple[ReportData, str, ReportData]] = {
    "dpo_loss_at_ln2": (
        data({"dpo": [dpo_eval_row(0, 0.6931), dpo_row(1, 0.6931), dpo_row(2, 0.6931), dpo_row(3, 0.6920, 0.002)]}),
        "dpo: the DPO loss never left ln 2 ≈ 0.693 (0.6920–0.6931 over 3 logged steps)",
        data({"dpo": [dpo_row(1, 0.6931), dpo_row(2, 0.65, 0.1), dpo_row(3, 0.52, 0.4)]})),
    "grpo_all_clipped": (
        data({"grpo": [grpo_row(1, clipped=1.0), grpo_row(2, clipped=1.0)]}),
        "grpo: every completion was cut at max_completion_length 8 at every step, mean length 8",
        data({"grpo": [grpo_row(1, clipped=1.0), grpo_row(2, clipped=0.75)]})),
    "grpo_zero_variance": (
        data({"grpo": [grpo_row(1, zero_std=1.0), grpo_row(2, zero_std=1.0)]}),
        "grpo: every group of generations got the same reward at every step (reward 1): zero advantages",
        data({"grpo": [grpo_row(1, zero_std=1.0), grpo_row(2, zero_std=0.5)]})),
    "reward_constant": (
        data({"grpo": [grpo_row(1, correctness=(0.0, 0.0)), grpo_row(2, correctness=(0.0, 0.0))]}),
        "grpo: reward math_correctness was 0 for every completion at every step: it gave no signal",
        data({"grpo": [grpo_row(1, correctness=(0.0, 0.0)), grpo_row(2, correctness=(0.25, 0.4))]})),
    "eval_below_base": (
        data(comparison=comparison(base=0.2, sft=0.3, dpo=0.1, grpo=0.2)),
        "dpo: accuracy 10.0% is below the base model's 20.0% (n=50)",
        data(comparison=comparison(base=0.2, sft=0.2, dpo=0.3, grpo=0.19999))),  # below only past the digits shown
    "truncation": (
        data(lengths={"sft_train": TokenLengths("sft_train", [100] * 90 + [300] * 10, 256, "sft max_length")}),
        "sft_train: 10% of the rows (10 of 100 read) are longer than sft max_length 256 tokens: they are truncated",
        data(lengths={"sft_train": TokenLengths("sft_train", [100] * 95 + [300] * 5, 256, "sft max_length"),
                      "test": TokenLengths("test", [300] * 10)})),
}


def test_every_rule_has_a_case() -> None:
    assert {rule.__name__ for rule in diagnostics.RULES} == set(CASES)


@pytest.mark.parametrize("rule", [r.__name__ for r in diagnostics.RULES])
def test_rule_fires_on_the_problem_and_only_there(rule: str) -> None:
    fires, text, quiet = CASES[rule]
    check: Callable[[ReportData], list[Finding]] = getattr(diagnostics, rule)
    found = check(fires)
    assert len(found) == 1 and found[0].rule == rule and text in found[0].text, found
    assert "\n" not in found[0].text
    assert check(quiet) == []
    # no other rule fires on either: each case isolates its problem
    assert [f.rule for f in diagnose(fires)] == [rule]
    assert diagnose(quiet) == []


def test_findings_come_errors_first_and_a_healthy_run_has_none() -> None:
    sick = data({"dpo": [dpo_row(1, 0.6931), dpo_row(2, 0.6931)],
                 "grpo": [grpo_row(1, zero_std=1.0), grpo_row(2, zero_std=1.0)]})
    assert [f.severity for f in diagnose(sick)] == ["error", "warning"]
    assert str(diagnose(sick)[0]).startswith("error: grpo: every group")
    healthy = data({"dpo": [dpo_row(1, 0.6931), dpo_row(2, 0.61, 0.2)], "grpo": [grpo_row(1), grpo_row(2)]},
                   comparison(base=0.1, sft=0.2, dpo=0.25, grpo=0.3),
                   {"sft_train": TokenLengths("sft_train", [100] * 20, 256, "sft max_length")})
    assert diagnose(healthy) == []
