"""What the report (and the diagnostics) read from a run, gathered once: run.json, each stage's
metrics.jsonl (names: trainer/metric_names.py), the stored evaluations with their predictions, the first
test prompts, and the token lengths of the bundle's data against each stage's `max_length`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trainer import metric_names as m
from trainer.run import BASE_STAGE, PROTOTYPE_STAGE, Run
from trainer.textio import RowError, iter_jsonl

SAMPLE_PROMPTS = 3  # test prompts whose generations the report shows side by side
LENGTH_ROWS = 1000  # rows per data file the token-length histogram reads (the first ones)

# data role → (the stage method whose max_length cuts it, what the limit bounds)
LIMITED_ROLES = {"sft_train": "sft", "sft_valid": "sft", "dpo_train": "dpo", "dpo_valid": "dpo", "grpo_train": "grpo"}


@dataclass
class TokenLengths:
    role: str
    counts: list[int]
    limit: int | None = None  # the stage's max_length
    limit_name: str = ""  # e.g. "sft max_length"
    cut: str = "truncated"  # what happens to a longer row: SFT/DPO truncate it, GRPO drops the prompt

    @property
    def over(self) -> int:
        return sum(n > self.limit for n in self.counts) if self.limit else 0

    @property
    def share_over(self) -> float:
        return self.over / len(self.counts) if self.counts else 0.0


@dataclass
class ReportData:
    info: dict[str, Any]
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # stage → rows (no summary row)
    comparison: dict[str, Any] | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage (base, prototype, …) → eval/<stage>.json
    test_rows: list[dict[str, Any]] = field(default_factory=list)  # the first SAMPLE_PROMPTS rows of the test set
    token_lengths: dict[str, TokenLengths] = field(default_factory=dict)
    token_unit: str = "tokens"
    stage_order: list[str] = field(default_factory=list)

    def method(self, stage: str) -> str | None:
        entry = self.info.get("stages", {}).get(stage) or {}
        return entry.get("method") or self.stage_spec(stage).get("method")

    def stage_spec(self, stage: str) -> dict[str, Any]:
        for s in self.info.get("spec", {}).get("stages", []):
            if (s.get("name") or s.get("method")) == stage:
                return s
        return {}

    def stages_of(self, method: str) -> list[str]:
        return [s for s in self.stage_order if self.method(s) == method]

    @property
    def task(self) -> str:
        return (self.comparison or {}).get("task") or (
            "gsm8k" if self.info.get("spec", {}).get("data", {}).get("task") == "math" else "translation")


# ---------------------------------------------------------------------------------- gathering
def gather(run: Run, token_lengths: bool = True) -> ReportData:
    """Everything the report shows; `token_lengths=False` skips the tokenizer and the data files."""
    data = ReportData(info=run.info, stage_order=run.stage_names())
    for stage in data.stage_order:
        rows = [r for r in run.read_jsonl(run.metrics(stage)) if isinstance(r, dict) and not r.get(m.FINAL)]
        if rows:
            data.metrics[stage] = rows
    _evaluations(data, run)
    if token_lengths:
        _token_lengths(data, run)
    return data


def _evaluations(data: ReportData, run: Run) -> None:
    data.comparison = run.read_json(run.comparison())
    if data.comparison is None:
        try:
            from trainer.evaluate import comparison

            table = comparison(run)
            data.comparison = table if table["rows"] else None
        except (OSError, ValueError, KeyError):
            data.comparison = None
    for stage in [BASE_STAGE, PROTOTYPE_STAGE, *data.stage_order]:
        result = run.read_json(run.eval_result(stage))
        if result is not None:
            data.evals[stage] = result
    if not data.evals:
        return
    try:
        test = run.bundle.data_path("test")
    except (OSError, ValueError, KeyError):
        return  # the bundle is gone: the generations still show, without their prompts
    if test is not None and test.exists():
        from trainer.textio import load_test_rows

        data.test_rows = load_test_rows(test)[:SAMPLE_PROMPTS]


def _max_lengths(data: ReportData) -> dict[str, int]:
    """The smallest max_length per method (the one that cuts first)."""
    out: dict[str, int] = {}
    for s in data.info.get("spec", {}).get("stages", []):
        method, limit = s.get("method"), s.get("max_length")
        if isinstance(limit, int):
            out[method] = min(limit, out.get(method, limit))
    return out


def _row_text(row: dict[str, Any], tokenizer: Any) -> str:
    """A row as the model sees it: the chat template over its messages (DPO: the prompt and the longer
    answer; GRPO: the prompt with the generation prompt), else its JSON."""
    messages = row.get("messages") or row.get("prompt")
    if not isinstance(messages, list):
        return json.dumps(row, ensure_ascii=False)
    answers = [row[k] for k in ("chosen", "rejected") if isinstance(row.get(k), list)]
    if answers:
        messages = messages + max(answers, key=lambda a: sum(len(str(x.get("content", ""))) for x in a))
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=not answers and "messages" not in row)
    return "\n".join(str(x.get("content", "")) for x in messages)


def _token_lengths(data: ReportData, run: Run) -> None:
    """Lengths of the bundle's rows as the model sees them, beside the max_length that cuts them, so the
    histogram and the diagnostics show how much a stage truncates. Words without a tokenizer."""
    try:
        bundle = run.bundle
    except (OSError, ValueError, KeyError):
        return
    spec = data.info.get("spec", {})
    tokenizer = None
    try:
        from trainer.models import load_tokenizer

        tokenizer = load_tokenizer(spec["model"]["base"])
    except Exception:  # noqa: BLE001 -- offline Hub id, missing model: words are still informative
        data.token_unit = "words (tokenizer unavailable)"
    limits = _max_lengths(data)
    used = {s.get("method") for s in spec.get("stages", [])}
    for role in (*LIMITED_ROLES, "test"):
        method = LIMITED_ROLES.get(role)
        if method is not None and method not in used:
            continue  # e.g. dpo_train in a bundle whose stages never read it
        path = bundle.data_path(role)
        if path is None or not path.exists():
            continue
        counts = []
        for i, (_, row) in enumerate(iter_jsonl(path)):
            if i >= LENGTH_ROWS:
                break
            if isinstance(row, RowError) or not isinstance(row, dict):
                continue  # the bundle was validated; a row the reader cannot take is not the report's concern
            text = _row_text(row, tokenizer)
            counts.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer
                          else len(text.split()))
        if counts:
            limit = limits.get(method) if method else None
            data.token_lengths[role] = TokenLengths(role, counts, limit, f"{method} max_length" if limit else "",
                                                    "dropped" if method == "grpo" else "truncated")


# ------------------------------------------------------------------------------ the numbers
def stage_summary(data: ReportData, stage: str) -> dict[str, Any]:
    """A stage's headline numbers from its metrics, start → end (`metric_names.first_last`), as the demo's
    summary prints them too."""
    rows = data.metrics.get(stage, [])
    train, evals = m.training_rows(rows), m.eval_rows(rows)
    out: dict[str, Any] = {"stage": stage, "method": data.method(stage)}

    def first_last(source: list[dict[str, Any]], key: str, name: str) -> None:
        ends = m.first_last([v for _, v in m.series(source, key)])
        if ends:
            out[f"{name}_first"], out[f"{name}_last"] = ends

    first_last(train, m.LOSS, "loss")
    first_last(evals, m.EVAL_LOSS, "eval_loss")
    first_last(train, m.GRAD_NORM, "grad_norm")
    lrs = [v for _, v in m.series(train, m.LEARNING_RATE)]
    if lrs:
        out["learning_rate_max"] = max(lrs)
    if out["method"] == "dpo":
        first_last(train, m.DPO_MARGINS, "margins")
        first_last(train, m.DPO_ACCURACIES, "accuracies")
    if out["method"] == "grpo":
        first_last(train, m.REWARD_MEAN, "reward")
        first_last(train, m.KL, "kl")
        first_last(train, m.CLIPPED_RATIO, "clipped")
    return out


def stage_cost(info: dict[str, Any], entry: dict[str, Any]) -> float | None:
    """A stage's cost: as recorded, else its seconds at the run's hourly price when known."""
    if entry.get("cost_usd") is not None:
        return float(entry["cost_usd"])
    price = info.get("price_per_hour") or (info.get("resources") or {}).get("price_per_hour")
    return float(price) * entry["seconds"] / 3600 if price and entry.get("seconds") else None
