"""Answer extraction against a hand-checked table (each expected value read off by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.answers import answers_match, extract_answer, gold_answer, normalize_number

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "gsm8k" / "test.jsonl"

EXTRACT_TABLE: list[tuple[str, str | None]] = [
    # GSM8K reference format, calculator annotations and all.
    (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18",
        "18",
    ),
    ("#### 1,000,000", "1000000"),
    ("Working 3 + 4 = 7\n####   $70,000.00 ", "70000"),
    ("#### -12", "-12"),
    # \boxed{}, nested braces and LaTeX money / fractions / thousands.
    ("So the total is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{\\dfrac{1}{3}}", "1/3"),
    ("\\boxed{\\$18}", "18"),
    ("\\boxed{1{,}000}", "1000"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("first \\boxed{3} then corrected \\boxed{5}", "5"),
    ("\\boxed{2 + 3 = 5}", "5"),
    # "The answer is", "Answer:", "Final answer:".
    ("The answer is 42.", "42"),
    ("the answer is $1,234.50.", "1234.5"),
    ("Answer: -5 degrees", "-5"),
    ("Final answer: 50%", "50"),
    ("The answer is: 5.0", "5"),
    ("The answer is 12 + 6 = 18. Then she buys 7 more.", "18"),
    ("So the answer is 7. I double-checked with 3 + 4 = 7 and 10 - 3.", "7"),
    # Trailing units and punctuation.
    ("She runs 540 meters.", "540"),
    ("It costs $18.00!", "18"),
    ("about 2.50 kg.", "2.5"),
    ("costs .5 dollars", "0.5"),
    # Negative numbers (and subtraction that is not a sign).
    ("The temperature dropped to -7.", "-7"),
    ("\u22127", "-7"),
    ("16 - 3 - 4 = 9", "9"),
    ("He owes -$20", "-20"),
    # Thousands separators.
    ("He made a profit of $70,000", "70000"),
    ("There were 1,234,567 people", "1234567"),
    # Fractions.
    ("She ate 3/4 of the pie", "0.75"),
    ("x = -3/4", "-0.75"),
    ("2/3", "2/3"),
    # Several numbers: the last one, unless a marker says otherwise.
    ("He has 3 apples and 5 pears, so 8 fruit in total.", "8"),
    ("48 / 2 = 24 in May, so 48 + 24 = 72 clips", "72"),
    ("#### 9 is what I get, not 10", "9"),
    # Garbage.
    ("", None),
    ("I don't know.", None),
    ("\\boxed{x}", None),
    ("The answer is unclear", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_TABLE)
def test_extract_answer_table(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$1,000.00", "1000"),
        ("5.0", "5"),
        ("0.50", "0.5"),
        ("-0.25", "-0.25"),
        ("3/4", "0.75"),
        ("\\frac{1}{3}", "1/3"),
        ("-5 dollars.", "-5"),
        ("75%", "75"),
        ("abc", None),
        (None, None),
    ],
)
def test_normalize_number(text: str | None, expected: str | None) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("5.0", "5", True),
        ("5", "5.00", True),
        ("3/4", "0.75", True),
        ("0.75", "3/4", True),
        ("0.333", "1/3", True),  # rounded to the shown precision
        ("0.33", "1/3", True),
        ("0.3", "1/3", False),  # one decimal is too coarse to count as the same answer
        ("70000", "Some working\n#### 70,000", True),  # a whole GSM8K answer field as gold
        ("I think it is 18 dollars.", "18", True),  # raw model text as prediction
        ("69999", "70000", False),
        ("-5", "5", False),
        (None, "5", False),
        ("no idea", "5", False),
        ("Paris", "paris", True),  # non-numeric gold compares as text
    ],
)
def test_answers_match(pred: str | None, gold: str, expected: bool) -> None:
    assert answers_match(pred, gold) is expected


def test_gold_answer() -> None:
    assert gold_answer("Working...\n#### 70,000") == "70000"
    assert gold_answer("#### 18") == "18"
    assert gold_answer("42") == "42"


def test_every_sample_reference_extracts_to_its_gold() -> None:
    # The reference text itself is a perfect "prediction": extraction must recover every gold.
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    assert len(rows) >= 10
    for row in rows:
        gold = gold_answer(row["answer"])
        assert gold == row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert extract_answer(row["answer"]) == gold
        assert answers_match(row["answer"], row["answer"])
