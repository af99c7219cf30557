"""Scoring of model outputs: sacrebleu's BLEU / chrF / TER (with their signatures, so a number can
be reproduced), COMET from its own layer (`trainer.comet_layer`), and GSM8K exact match through
`trainer.answers` -- the very extraction the GRPO correctness reward uses."""

from __future__ import annotations

import re
from typing import Any

from trainer import settings
from trainer.answers import answers_match, extract_answer, gold_answer, parse_number
from trainer.errors import first_line

COMET_SKIPPED = "COMET skipped (BLEU, chrF and TER are computed)"


def translation_scores(
    hyps: list[str], refs: list[str], sources: list[str] | None = None, comet: bool = True
) -> dict[str, Any]:
    """Corpus BLEU, chrF and TER exactly as sacrebleu computes them (default tokenisation 13a,
    one reference per segment), each with its signature; COMET (system score, and one score per
    segment in `comet_segments`) when possible, else a note why not."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    from sacrebleu.metrics import BLEU, CHRF, TER

    out: dict[str, Any] = {"task": "translation", "n": len(hyps), "signatures": {}}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        score = metric.corpus_score(hyps, [refs])
        out[name] = round(float(score.score), 4)
        out["signatures"][name] = str(metric.get_signature())
    out["comet"], out["comet_segments"], out["comet_note"] = (
        (None, None, "not requested") if not comet else _comet(hyps, refs, sources))
    return out


def _comet(hyps: list[str], refs: list[str], sources: list[str] | None) -> tuple[float | None, list[float] | None, str]:
    """COMET needs the source sentences, its layer and its model; any of them missing gives None with the
    reason (one line, no traceback) rather than failing the whole evaluation. The note names the model."""
    if sources is None:
        return None, None, "no source sentences given"
    from trainer import comet_layer

    name = settings.comet_model()
    try:
        system, segments = comet_layer.score(name, sources, hyps, refs)
    except comet_layer.CometUnavailable as e:
        return None, None, f"{e}; {COMET_SKIPPED}"
    except Exception as e:  # noqa: BLE001 -- the layer broken by a newer library: report it, keep the other scores
        return None, None, f"COMET failed ({name}): {type(e).__name__}: {first_line(e)}; {COMET_SKIPPED}"
    return round(system, 4), [round(s, 4) for s in segments], name


# GSM8K's answer format: a line `#### N` with N a number (what the references end in and the prompt asks for).
_GSM8K_LINE = re.compile(r"^\s*####\s*(?P<value>\S[^\n]*?)\s*$", re.MULTILINE)


def in_gsm8k_format(text: str) -> bool:
    """Whether the output states its answer on a `#### N` line, N a number. Looser than the GRPO format
    reward (which also wants reasoning before it and the line last): a model that learned the format
    but rambles on after it still counts here, so the two numbers together say what moved."""
    return any(parse_number(m.group("value")) is not None for m in _GSM8K_LINE.finditer(text or ""))


def gsm8k_scores(preds: list[str], golds: list[str]) -> dict[str, Any]:
    """Exact-match accuracy, plus what a small model learns long before it solves problems: the share
    of outputs in GSM8K's `#### N` format (`format_rate`) and the mean of the GRPO format reward
    (`format_reward`). `preds` are free-form model outputs, `golds` GSM8K answer fields (`...#### N`)
    or bare answers. `items` holds one record per example for `--per-item`."""
    from trainer.rewards import format_reward  # the very reward GRPO trains on

    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} references")
    items = []
    rewards = format_reward(list(preds))
    for i, (pred, gold_field) in enumerate(zip(preds, golds, strict=True)):
        extracted = extract_answer(pred)
        gold = gold_answer(gold_field)
        items.append({"index": i, "extracted": extracted, "gold": gold, "correct": answers_match(extracted, gold),
                      "formatted": in_gsm8k_format(pred), "format_reward": rewards[i]})
    correct = sum(it["correct"] for it in items)
    n = len(items)
    return {
        "task": "gsm8k",
        "n": n,
        "correct": correct,
        "accuracy": round(correct / n, 6) if items else 0.0,
        "no_answer": sum(it["extracted"] is None for it in items),
        "format_rate": round(sum(it["formatted"] for it in items) / n, 6) if items else 0.0,
        "format_reward": round(sum(rewards) / n, 6) if items else 0.0,
        "extraction": "trainer.answers.extract_answer (same as the GRPO math_correctness reward)",
        "items": items,
    }


def headline(scores: dict[str, Any]) -> dict[str, float | None]:
    """The numbers a comparison table shows for one evaluation (with the eval loss when it was measured)."""
    loss = {"eval_loss": scores["eval_loss"]} if isinstance(scores.get("eval_loss"), int | float) else {}
    if scores.get("task") == "gsm8k":
        return {"accuracy": scores.get("accuracy"), "format_rate": scores.get("format_rate"),
                "format_reward": scores.get("format_reward")} | loss
    return {k: scores.get(k) for k in ("bleu", "chrf", "ter", "comet")} | loss
