"""Scoring of model outputs: sacrebleu's BLEU / chrF / TER (with their signatures, so a number can
be reproduced), COMET when installed, and GSM8K exact match through `trainer.answers` -- the very
extraction the GRPO correctness reward uses."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from trainer.answers import answers_match, extract_answer, gold_answer, parse_number

COMET_MODEL = "Unbabel/wmt22-comet-da"
# unbabel-comet is in no extra and not in the image: its newest release (2.2.7) pins
# huggingface-hub<1 and numpy<2, so beside transformers 5 pip either downgrades transformers to 4.x or
# backtracks to comet 1.1.3 with torch 1.13 (checked with `pip install --dry-run`). Until a release
# allows huggingface-hub 1.x, COMET is reported as skipped, with this reason.
COMET_MISSING = ("unbabel-comet not installed: its releases so far need huggingface-hub<1 and numpy<2, which "
                 "conflict with transformers 5, so it is in no extra and not in the image; COMET skipped "
                 "(BLEU, chrF and TER are computed)")


def translation_scores(
    hyps: list[str], refs: list[str], sources: list[str] | None = None, comet: bool = True
) -> dict[str, Any]:
    """Corpus BLEU, chrF and TER exactly as sacrebleu computes them (default tokenisation 13a,
    one reference per segment), each with its signature; COMET when possible, else a note why not."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    from sacrebleu.metrics import BLEU, CHRF, TER

    out: dict[str, Any] = {"task": "translation", "n": len(hyps), "signatures": {}}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        score = metric.corpus_score(hyps, [refs])
        out[name] = round(float(score.score), 4)
        out["signatures"][name] = str(metric.get_signature())
    out["comet"], out["comet_note"] = (None, "not requested") if not comet else _comet(hyps, refs, sources)
    return out


def _comet(hyps: list[str], refs: list[str], sources: list[str] | None) -> tuple[float | None, str]:
    """COMET needs unbabel-comet, the source sentences and its model (downloaded once from the Hub);
    any of those missing gives None with the reason rather than failing the whole evaluation."""
    if sources is None:
        return None, "no source sentences given"
    if importlib.util.find_spec("comet") is None:
        return None, COMET_MISSING
    try:
        from comet import download_model, load_from_checkpoint

        model = load_from_checkpoint(download_model(COMET_MODEL))
        data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs, strict=True)]
        result = model.predict(data, batch_size=16, gpus=1 if _cuda() else 0, progress_bar=False)
        return round(float(result.system_score), 4), COMET_MODEL
    except Exception as e:  # noqa: BLE001 -- offline Hub, missing weights: report, don't crash
        return None, f"COMET unavailable: {type(e).__name__}: {e}"


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


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
