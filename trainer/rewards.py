"""Verifiable rewards for GRPO. TRL calls each as `fn(completions, **dataset_columns) -> list[float]`;
completions are strings, or (conversational data) lists with one assistant message."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from trainer.answers import answers_match, extract_answer, gold_answer

RewardFn = Callable[..., list[float]]
FINAL_LINE = re.compile(r"^####\s*-?\$?\s*[\d,]*\.?\d+(?:/\d+)?\s*$")


def completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return ""


def math_correctness(completions: list, answer: list[str], **_: Any) -> list[float]:
    """1.0 when the completion's final answer equals the GSM8K reference, else 0.0."""
    return [1.0 if answers_match(extract_answer(completion_text(c)), gold_answer(gold)) else 0.0
            for c, gold in zip(completions, answer, strict=True)]


def format_reward(completions: list, **_: Any) -> list[float]:
    """1.0 for reasoning followed by a final `#### N` line; 0.5 for an answer stated some other
    parseable way; 0.0 for no answer, or a bare answer with no reasoning before it."""
    scores = []
    for c in completions:
        lines = [line.strip() for line in completion_text(c).strip().splitlines() if line.strip()]
        if len(lines) >= 2 and FINAL_LINE.match(lines[-1]):
            scores.append(1.0)
        elif lines and extract_answer("\n".join(lines)) is not None and len(lines) >= 2:
            scores.append(0.5)
        else:
            scores.append(0.0)
    return scores


def chrf_reward(completions: list, answer: list[str], **_: Any) -> list[float]:
    """Sentence chrF against the reference translation, scaled to 0..1."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    return [chrf.sentence_score(completion_text(c).strip(), [ref]).score / 100.0
            for c, ref in zip(completions, answer, strict=True)]


REWARDS: dict[str, RewardFn] = {"math_correctness": math_correctness, "format": format_reward, "chrf": chrf_reward}


def reward_functions(names: list[str]) -> list[RewardFn]:
    return [REWARDS[name] for name in names]
