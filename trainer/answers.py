"""Answer extraction and comparison for math tasks (GSM8K and friends).

One module shared by the GRPO correctness reward and by evaluation, so a model is rewarded for
exactly what it is later scored on. Pure standard library: it runs inside reward functions
called thousands of times per step, and on a Mac without torch.

Numbers are compared as exact fractions (`fractions.Fraction`), never as floats parsed from
text, so `0.1 + 0.2`-style artefacts cannot make two equal answers differ.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = [
    "answers_match",
    "extract_answer",
    "gold_answer",
    "normalize_number",
    "parse_number",
]

# A number as models write it: optional sign, thousands groups (1,234,567) or plain digits,
# optional decimals, or a leading-dot decimal (.5), optionally followed by `/denominator`.
_NUMBER = re.compile(
    r"(?P<sign>-\s?)?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?"
)

_GSM8K_MARK = re.compile(r"####\s*(?P<rest>[^\n]*)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "The answer is", "final answer:", "Answer:" -- the last such phrase wins (models restate).
_ANSWER_PHRASE = re.compile(
    r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=|would\s+be|will\s+be)\s*:?",
    re.IGNORECASE,
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_SENTENCE_END = re.compile(r"\.(?=\s|$)|[;!?\n]")

# Decimal digits used when rounding a non-terminating gold (1/3) to a prediction's precision.
_MIN_ROUNDING_DIGITS = 2


def _clean(text: str) -> str:
    """Rewrite the notations models use around numbers into plain ASCII digits and signs."""
    t = text.replace("\u2212", "-").replace("\u2013", "-").replace("\u00a0", " ")
    t = t.replace("{,}", ",").replace("\\,", "").replace("\\!", "").replace("\\ ", " ")
    t = t.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    t = t.replace("\\left", "").replace("\\right", "")
    t = _LATEX_TEXT.sub(r" \1", t)
    t = _LATEX_FRAC.sub(r"(\1)/(\2)", t)
    # `(3)/(4)` from a \frac of plain numbers -> `3/4`; `-(3)/(4)` keeps its sign.
    t = re.sub(r"\(\s*(-?[\d.,]+)\s*\)\s*/\s*\(\s*([\d.,]+)\s*\)", r"\1/\2", t)
    return t


def _numbers(text: str) -> list[Fraction]:
    """Every number in already-cleaned text, in order, as exact fractions."""
    found: list[Fraction] = []
    for m in _NUMBER.finditer(text):
        start = m.start()
        # Digits glued to letters ("x2", "3rd" is fine, "A4") are identifiers, not quantities;
        # only reject a leading letter so "3rd"/"5th" still read as 3 and 5.
        if start > 0 and (text[start - 1].isalpha() or text[start - 1] == "_"):
            continue
        num = Fraction(m.group("num").replace(",", ""))
        if m.group("den") is not None:
            den = Fraction(m.group("den"))
            if den == 0:
                continue
            num = num / den
        sign = m.group("sign")
        if sign is not None:
            # A minus right after a digit or a closing bracket is subtraction ("16 - 3"), not a sign.
            before = text[:start].rstrip()
            if not (before and (before[-1].isdigit() or before[-1] in ")]}")):
                num = -num
        found.append(num)
    return found


def _format(value: Fraction) -> str:
    """Canonical text for a number: `5`, `-0.25`, `1/3` (a decimal whenever one is exact)."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    # Terminating decimal: scale by 10^k until integral, then place the point.
    k = 0
    scaled = value
    while scaled.denominator != 1:
        scaled *= 10
        k += 1
    digits = str(abs(scaled.numerator)).rjust(k + 1, "0")
    text = f"{digits[:-k]}.{digits[-k:]}".rstrip("0").rstrip(".")
    return ("-" if value < 0 else "") + text


def parse_number(text: str) -> Fraction | None:
    """The first number in `text` (after cleaning `$`, `%`, commas, LaTeX), or None."""
    nums = _numbers(_clean(text))
    return nums[0] if nums else None


def normalize_number(text: str | None) -> str | None:
    """Canonical form of the first number in `text`: `"$1,000.00"` -> `"1000"`, `"3/4"` ->
    `"0.75"`, `"\\frac{1}{3}"` -> `"1/3"`, `"-5 dollars."` -> `"-5"`; None when there is none."""
    if text is None:
        return None
    value = parse_number(text)
    return None if value is None else _format(value)


def _boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}`, honouring nested braces (`\\boxed{\\frac{1}{2}}`)."""
    out: list[str] = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _number_in_span(span: str) -> Fraction | None:
    """The number a short answer span states: the result after the last `=` if it shows working
    (`12 + 6 = 18`), else its first number (`18 dollars, or 3 per day` -> 18)."""
    cleaned = _clean(span)
    if "=" in cleaned:
        after = _numbers(cleaned.rsplit("=", 1)[1])
        if after:
            return after[0]
    nums = _numbers(cleaned)
    return nums[0] if nums else None


def extract_answer(text: str | None) -> str | None:
    """The final numeric answer in free-form model text, normalised, or None.

    Tried in order, each from its last occurrence: GSM8K's `#### N`, `\\boxed{N}`, a phrase like
    "the answer is N" / "Answer: N", and finally the last number anywhere in the text.
    """
    if not text:
        return None
    marks = list(_GSM8K_MARK.finditer(text))
    if marks:
        value = _number_in_span(marks[-1].group("rest"))
        if value is not None:
            return _format(value)
    for boxed in reversed(_boxed_contents(text)):
        value = _number_in_span(boxed)
        if value is not None:
            return _format(value)
    phrases = list(_ANSWER_PHRASE.finditer(text))
    for phrase in reversed(phrases):
        rest = text[phrase.end() :]
        # The answer is stated before the sentence ends; ignore numbers in later sentences.
        end = _SENTENCE_END.search(rest)
        value = _number_in_span(rest[: end.start()] if end else rest)
        if value is not None:
            return _format(value)
    nums = _numbers(_clean(text))
    return _format(nums[-1]) if nums else None


def gold_answer(gsm8k_answer: str) -> str:
    """The reference answer from a GSM8K `answer` field: the text after `####`, normalised when
    numeric (`"...#### 70,000"` -> `"70000"`). A field without `####` is taken whole."""
    tail = gsm8k_answer.rsplit("####", 1)[-1].strip()
    return normalize_number(tail) or tail


def _rounds_to(gold: Fraction, pred_text: str, pred: Fraction) -> bool:
    """Whether a decimal prediction is the gold rounded to the prediction's shown precision
    (`0.33` or `0.333` for 1/3), for golds that have no exact decimal form."""
    m = re.search(r"\.(\d+)", pred_text)
    if m is None or len(m.group(1)) < _MIN_ROUNDING_DIGITS:
        return False
    digits = len(m.group(1))
    return round(gold, digits) == round(pred, digits)


def answers_match(pred: str | None, gold: str, rel_tol: float = 1e-6) -> bool:
    """Whether a predicted answer equals the gold one.

    Both sides are normalised first, so `pred` may be raw text or `extract_answer`'s output and
    `gold` a bare answer or a whole GSM8K answer field. Numbers compare exactly as fractions up
    to a tiny relative tolerance (`5.0` == `5`, `3/4` == `0.75`); a non-terminating gold also
    matches a prediction rounded to two or more decimals. Non-numeric golds compare as text.
    """
    if pred is None:
        return False
    gold_text = gold_answer(gold) if "####" in gold else gold
    gold_value = parse_number(gold_text)
    if gold_value is None:
        return pred.strip().lower().rstrip(".") == gold_text.strip().lower().rstrip(".")
    pred_text = extract_answer(pred)
    pred_value = parse_number(pred_text) if pred_text is not None else None
    if pred_text is None or pred_value is None:
        return False
    if abs(pred_value - gold_value) <= Fraction(rel_tol) * max(Fraction(1), abs(gold_value)):
        return True
    return _rounds_to(gold_value, pred_text, pred_value)
