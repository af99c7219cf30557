"""What a careful engineer would spot in a finished run, as one-line findings: flagged at the top of the
report and printed in the demo summary. Each rule reads the metrics the trainer wrote
(trainer/metric_names.py), the evaluations and the data's token lengths, never the model.

    diagnose(Run(...)) or diagnose(gather(run)) -> [Finding(severity, rule, text, stage), …]

| rule | flags |
| --- | --- |
| `dpo_loss_at_ln2` | a DPO stage whose training loss never left ln 2 ≈ 0.693 (± 0.01): the policy stayed put |
| `grpo_all_clipped` | a GRPO stage where every completion hit `max_completion_length` at every step |
| `grpo_zero_variance` | a GRPO stage where each group's completions all got one reward at every step |
| `reward_constant` | a GRPO reward function that gave every completion the same value at every step |
| `eval_below_base` | a stage whose evaluation scores below the base model's |
| `truncation` | more than 5% of a data file's rows longer than the max_length of the stage that reads it |
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from trainer import metric_names as m
from trainer.report_data import ReportData, gather
from trainer.run import BASE_STAGE, Run

Severity = Literal["error", "warning", "info"]
LN2 = math.log(2)
LN2_TOLERANCE = 0.01
CLIPPED_ALL = 0.999  # clipped_ratio is a mean over the step's completions: 1.0 when every one was cut
TRUNCATION_SHARE = 0.05
# metrics where lower is better (the comparison's headline is otherwise higher-is-better)
LOWER_IS_BETTER = frozenset({"ter"})


@dataclass(frozen=True)
class Finding:
    severity: Severity
    rule: str
    text: str  # one line, says what was seen and what it means
    stage: str | None = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.text}"


def _values(rows: list[dict], key: str) -> list[float]:
    return [v for _, v in m.series(m.training_rows(rows), key)]


def dpo_loss_at_ln2(data: ReportData) -> list[Finding]:
    out = []
    for stage in data.stages_of("dpo"):
        losses = _values(data.metrics.get(stage, []), m.LOSS)
        # one logged step is ln 2 by construction (policy = reference); it takes two to say "never left"
        if len(losses) >= 2 and all(abs(v - LN2) <= LN2_TOLERANCE for v in losses):
            out.append(Finding("warning", "dpo_loss_at_ln2", f"{stage}: the DPO loss never left ln 2 ≈ 0.693 "
                               f"({min(losses):.4f}–{max(losses):.4f} over {len(losses)} logged steps): the policy "
                               "barely moved from the reference (raise learning_rate or beta, or train longer)", stage))
    return out


def grpo_all_clipped(data: ReportData) -> list[Finding]:
    out = []
    for stage in data.stages_of("grpo"):
        rows = data.metrics.get(stage, [])
        clipped = _values(rows, m.CLIPPED_RATIO)
        if clipped and all(v >= CLIPPED_ALL for v in clipped):
            limit = data.stage_spec(stage).get("max_completion_length")
            lengths = _values(rows, m.MEAN_LENGTH)
            mean = f", mean length {sum(lengths) / len(lengths):.0f}" if lengths else ""
            out.append(Finding("warning", "grpo_all_clipped", f"{stage}: every completion was cut at "
                               f"max_completion_length {limit if limit is not None else '?'} at every step{mean}: "
                               "no completion ended by itself, so the rewards scored cut-off answers (raise "
                               "max_completion_length)", stage))
    return out


def grpo_zero_variance(data: ReportData) -> list[Finding]:
    out = []
    for stage in data.stages_of("grpo"):
        rows = data.metrics.get(stage, [])
        zero = _values(rows, m.REWARD_ZERO_STD)
        stds = _values(rows, m.REWARD_STD)
        if (zero and all(v >= 1.0 for v in zero)) or (not zero and stds and all(v == 0 for v in stds)):
            means = _values(rows, m.REWARD_MEAN)
            at = f" (reward {means[-1]:.3g})" if means else ""
            out.append(Finding("error", "grpo_zero_variance", f"{stage}: every group of generations got the same "
                               f"reward at every step{at}: zero advantages, no learning signal (make the task "
                               "easier, sample more generations or at a higher temperature, or add a graded "
                               "reward)", stage))
    return out


def reward_constant(data: ReportData) -> list[Finding]:
    out = []
    for stage in data.stages_of("grpo"):
        rows = m.training_rows(data.metrics.get(stage, []))
        for name in m.reward_functions(rows):
            stds = _values(rows, m.reward_function_key(name, "std"))
            means = _values(rows, m.reward_function_key(name, "mean"))
            if stds and all(v == 0 for v in stds) and len(set(means)) <= 1:
                value = f" {means[0]:.3g}" if means else ""
                out.append(Finding("warning", "reward_constant", f"{stage}: reward {name} was{value} for every "
                                   f"completion at every step: it gave no signal", stage))
    return out


def eval_below_base(data: ReportData) -> list[Finding]:
    table = data.comparison or {}
    metric = table.get("metric")
    rows = {r.get("stage"): r for r in table.get("rows", [])}
    base = (rows.get(BASE_STAGE) or {}).get(metric)
    if metric is None or not isinstance(base, int | float):
        return []
    out = []
    sign = -1 if metric in LOWER_IS_BETTER else 1
    for stage, row in rows.items():
        value = row.get(metric)
        if stage == BASE_STAGE or not isinstance(value, int | float) or sign * (value - base) >= 0:
            continue
        shown = (lambda v: f"{100 * v:.1f}%") if metric == "accuracy" else (lambda v: f"{v:.2f}")
        if shown(value) == shown(base):  # below only past the digits shown ("0.34 is below 0.34")
            continue
        out.append(Finding("warning", "eval_below_base", f"{stage}: {metric} {shown(value)} is below the base "
                           f"model's {shown(base)} (n={row.get('n') or '?'}): this stage made the model worse "
                           "on the test set", stage))
    return out


def truncation(data: ReportData) -> list[Finding]:
    out = []
    for role, lengths in data.token_lengths.items():
        if lengths.limit and lengths.share_over > TRUNCATION_SHARE:
            out.append(Finding("warning", "truncation", f"{role}: {100 * lengths.share_over:.0f}% of the rows "
                               f"({lengths.over} of {len(lengths.counts)} read) are longer than {lengths.limit_name} "
                               f"{lengths.limit} {data.token_unit.split()[0]}: they are {lengths.cut} (raise "
                               "max_length or shorten the data)"))
    return out


RULES: tuple[Callable[[ReportData], list[Finding]], ...] = (
    grpo_zero_variance, dpo_loss_at_ln2, grpo_all_clipped, reward_constant, eval_below_base, truncation)
ORDER = {"error": 0, "warning": 1, "info": 2}


def diagnose(source: Run | ReportData) -> list[Finding]:
    """Every finding of every rule, errors first. A Run is gathered first (its metrics, evaluations and
    the data's token lengths, which loads the tokenizer)."""
    data = gather(source) if isinstance(source, Run) else source
    found = [f for rule in RULES for f in rule(data)]
    return sorted(found, key=lambda f: ORDER[f.severity])
