"""GRPO rewards on tables of real GSM8K-style completions, including wrong, malformed and adversarial ones."""

from __future__ import annotations

import pytest

from trainer.rewards import chrf_reward, format_reward, math_correctness

GOLD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"

# (completion, math_correctness, format)
TABLE = [
    ("Natalia sold 48/2 = 24 clips in May.\nIn total 48 + 24 = 72.\n#### 72", 1.0, 1.0),
    ("In May she sold 24.\nAltogether: 72 clips.\n#### 72.", 1.0, 0.5),  # trailing period: correct, looser format
    ("She sold 24 in May, so 48 + 24 = 72.\nThe answer is 72.", 1.0, 0.5),
    ("We add them up.\n\\boxed{72}", 1.0, 0.5),
    ("May: 24\nTotal: 72 clips\n#### 72", 1.0, 1.0),
    ("#### 72", 1.0, 0.0),  # a bare answer with no reasoning earns no format reward
    ("48 + 48 = 96\n#### 96", 0.0, 1.0),  # well formatted but wrong
    ("She sold 72 clips... or was it 70?\n#### 70", 0.0, 1.0),  # the final line decides, not earlier numbers
    ("I don't know.", 0.0, 0.0),
    ("", 0.0, 0.0),
    ("The answer is 72 or 73 or 74", 1.0, 0.0),  # adversarial hedging: the stated answer is read, one line only
    ("#### seventy-two\nreasoning", 0.0, 0.0),
    ("Total is $72.00\n#### $72.00", 1.0, 1.0),
    ("Step 1: 48/2 = 24\nStep 2: 48 + 24 = 72\n#### 72 clips", 1.0, 0.5),  # units on the final line
]


@pytest.mark.parametrize("completion,correct,fmt", TABLE)
def test_math_and_format(completion, correct, fmt):
    assert math_correctness([completion], answer=[GOLD]) == [correct]
    assert format_reward([completion]) == [fmt]


def test_conversational_completions_and_batches():
    completions = [[{"role": "assistant", "content": "24 + 48 = 72\n#### 72"}],
                   [{"role": "assistant", "content": "#### 5"}]]
    assert math_correctness(completions, answer=[GOLD, GOLD]) == [1.0, 0.0]


def test_chrf_reward_orders_translations():
    ref = "The supercomputer will mainly be used to simulate nuclear weapons."
    scores = chrf_reward(["The supercomputer will mainly be used to simulate nuclear weapons.",
                          "The computer is used for weapons.", "Bonjour"], answer=[ref] * 3)
    assert scores[0] == pytest.approx(1.0) and scores[0] > scores[1] > scores[2] >= 0.0
