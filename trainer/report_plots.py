"""The report's plots as PNG bytes (matplotlib, Agg: no display on a cloud VM), one function per figure
kind, each given the gathered `ReportData` and returning zero or more figures."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from trainer import metric_names as m
from trainer.report_data import ReportData, stage_cost


@dataclass
class Figure:
    title: str
    png: bytes
    caption: str = ""
    section: str = "Training"  # the report section it belongs to


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _line(ax: Any, rows: list[dict[str, Any]], key: str, label: str, **style: Any) -> bool:
    pts = m.series(rows, key)
    if pts:
        ax.plot([s for s, _ in pts], [v for _, v in pts], label=label, **style)
    return bool(pts)


def _panel(ax: Any, title: str, drew: bool) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if drew:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")


def training_figures(plt: Any, data: ReportData) -> list[Figure]:
    """Per stage: training and eval loss, learning rate, grad norm."""
    figures = []
    for stage, rows in data.metrics.items():
        train, evals = m.training_rows(rows), m.eval_rows(rows)
        if not train:
            continue
        fig, (loss, lr, grad) = plt.subplots(1, 3, figsize=(11, 2.8))
        drew = _line(loss, train, m.LOSS, "training", marker=".", color="C0")
        drew = _line(loss, evals, m.EVAL_LOSS, "eval (validation)", marker="o", color="C3", ls="--") or drew
        _panel(loss, "loss", drew)
        _panel(lr, "learning rate", _line(lr, train, m.LEARNING_RATE, "lr", color="C2"))
        _panel(grad, "grad norm", _line(grad, train, m.GRAD_NORM, "grad norm", color="C1", marker="."))
        fig.tight_layout()
        caption = ("Eval loss on the stage's validation file: before the first step, at every checkpoint and at "
                   "the end. " if evals else "No validation loss (no validation file for this method). ")
        figures.append(Figure(f"Training: {stage} ({data.method(stage)})", _png(fig), caption + "Loss scales differ "
                              "between methods (SFT cross-entropy, DPO preference loss, GRPO policy loss)."))
    return figures


def dpo_figures(plt: Any, data: ReportData) -> list[Figure]:
    figures = []
    for stage in data.stages_of("dpo"):
        rows = data.metrics.get(stage, [])
        train, evals = m.training_rows(rows), m.eval_rows(rows)
        if not train:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 2.8))
        for ax, key, title in ((axes[0], m.DPO_MARGINS, "reward margin (chosen − rejected)"),
                               (axes[1], m.DPO_ACCURACIES, "reward accuracy (chosen wins)")):
            drew = _line(ax, train, key, "training", marker=".", color="C0")
            drew = _line(ax, evals, m.eval_key(key), "eval", marker="o", ls="--", color="C3") or drew
            _panel(ax, title, drew)
        axes[1].set_ylim(-0.05, 1.05)
        fig.tight_layout()
        figures.append(Figure(f"DPO rewards: {stage}", _png(fig),
                              "The implicit reward β·log(π/π_ref) of the chosen minus the rejected answer, and the "
                              "share of pairs where the chosen one wins; both start at 0 (policy = reference).",
                              "DPO"))
    return figures


def grpo_figures(plt: Any, data: ReportData) -> list[Figure]:
    figures = []
    for stage in data.stages_of("grpo"):
        train = m.training_rows(data.metrics.get(stage, []))
        if not train:
            continue
        fig, (rew, kl, comp) = plt.subplots(1, 3, figsize=(11, 2.8))
        curves = [("total", m.REWARD_MEAN, m.REWARD_STD)] + [(name, m.reward_function_key(name),
                                                               m.reward_function_key(name, "std"))
                                                              for name in m.reward_functions(train)]
        for i, (label, mean_key, std_key) in enumerate(curves):
            mean, std = dict(m.series(train, mean_key)), dict(m.series(train, std_key))
            if not mean:
                continue
            steps = sorted(mean)
            ys = [mean[s] for s in steps]
            rew.plot(steps, ys, marker=".", color=f"C{i}", label=f"{label} mean ± std", ls="-" if i == 0 else "--")
            if std:
                rew.fill_between(steps, [y - std.get(s, 0) for s, y in zip(steps, ys, strict=True)],
                                 [y + std.get(s, 0) for s, y in zip(steps, ys, strict=True)], color=f"C{i}", alpha=0.15)
        _panel(rew, "reward per function", len(curves) > 0 and bool(m.series(train, m.REWARD_MEAN)))
        _panel(kl, "KL to the reference", _line(kl, train, m.KL, "kl", color="C4", marker="."))
        drew = _line(comp, train, m.CLIPPED_RATIO, "clipped ratio", color="C3", marker=".")
        comp.set_ylim(-0.05, 1.05)
        lengths = m.series(train, m.MEAN_LENGTH)
        if lengths:
            twin = comp.twinx()
            twin.plot([s for s, _ in lengths], [v for _, v in lengths], color="C5", marker=".", label="mean length")
            limit = data.stage_spec(stage).get("max_completion_length")
            if limit:
                twin.axhline(limit, color="C5", ls=":", lw=1)
            twin.set_ylabel("tokens", fontsize=8)
            twin.tick_params(labelsize=8)
            twin.legend(fontsize=7, loc="lower right")
        _panel(comp, "completions", drew)
        fig.tight_layout()
        figures.append(Figure(f"GRPO: {stage}", _png(fig),
                              "Reward over each step's completions, per reward function (band: ± one std); KL to "
                              "the reference; the share of completions cut at max_completion_length (dotted) and "
                              "their mean length.", "GRPO"))
    return figures


def evaluation_figure(plt: Any, data: ReportData) -> list[Figure]:
    """One panel per comparison column with numbers (accuracy, format share, eval loss, ...), stages side
    by side, each bar labelled with its value."""
    table = data.comparison or {}
    rows = table.get("rows") or []
    columns = [c for c in m.eval_columns(table.get("task", ""), rows)
               if any(isinstance(r.get(c[0]), int | float) for r in rows)]
    if not columns:
        return []
    fig, axes = plt.subplots(1, len(columns), figsize=(min(3.4 * len(columns), 13), 3.2), squeeze=False)
    for ax, (key, label, percent, lower) in zip(axes[0], columns, strict=True):
        ys = [(100 * r[key] if percent else r[key]) if isinstance(r.get(key), int | float) else 0.0 for r in rows]
        bars = ax.bar(range(len(rows)), ys, color=[f"C{i}" for i in range(len(rows))])
        ax.bar_label(bars, fmt="%.1f" if percent or max(ys, default=0) >= 10 else "%.3f", fontsize=7)
        ax.set_xticks(range(len(rows)), [r["stage"] for r in rows], rotation=30, fontsize=8)
        ax.set_title(label + (" (%)" if percent else "") + (" ↓" if lower else ""), fontsize=9)
        if percent:
            ax.set_ylim(0, 100)
        elif lower and ys:  # eval loss, TER: show the differences between stages, not the distance from 0
            low, high = min(ys), max(ys)
            ax.set_ylim(low - 0.6 * (high - low or 0.1), high + 0.4 * (high - low or 0.1))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    lowered = [label for _, label, _, lower in columns if lower]
    caption = "The same test items for every stage, greedy decoding"
    if any(key == m.EVAL_LOSS for key, *_ in columns):
        caption += "; eval loss on the validation split"
    caption += f" ({', '.join(lowered)}: lower is better)." if lowered else "."
    return [Figure("Evaluation across stages", _png(fig), caption, "Evaluation")]


def token_length_figure(plt: Any, data: ReportData) -> list[Figure]:
    lengths = list(data.token_lengths.values())
    if not lengths:
        return []
    cols = min(3, len(lengths))
    rows = (len(lengths) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.6 * rows), squeeze=False)
    for ax, tl in zip(axes.flat, lengths, strict=False):
        ax.hist(tl.counts, bins=30, color="C0", alpha=0.7)
        title = f"{tl.role} (n={len(tl.counts)})"
        if tl.limit:
            ax.axvline(tl.limit, color="red", ls="--", label=f"{tl.limit_name} {tl.limit}")
            ax.legend(fontsize=7)
            title += f": {100 * tl.share_over:.1f}% {tl.cut}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(data.token_unit, fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(lengths):]:
        ax.axis("off")
    fig.tight_layout()
    return [Figure("Token lengths", _png(fig), "Rows as the model sees them (chat template applied; DPO: prompt + "
                   "the longer answer; GRPO: the prompt), against the max_length of the stage that reads them "
                   "(red): SFT and DPO truncate a longer row, GRPO drops the prompt.", "Data")]


def time_and_cost_figure(plt: Any, data: ReportData) -> list[Figure]:
    timed = {s: e for s, e in data.info.get("stages", {}).items() if e.get("seconds")}
    if not timed:
        return []
    fig, ax = plt.subplots(figsize=(9, 2.8))
    bars = ax.bar(list(timed), [e["seconds"] / 60 for e in timed.values()], color="C2")
    labels = []
    for e in timed.values():
        cost = stage_cost(data.info, e)
        labels.append(f"{e['seconds'] / 60:.1f} min" + (f"\n${cost:.2f}" if cost is not None else ""))
    ax.bar_label(bars, labels=labels, fontsize=8)
    ax.set_ylabel("minutes")
    ax.margins(y=0.3)
    return [Figure("Time and cost per stage", _png(fig), "Wall-clock time per stage and its cost at the run's "
                   "price (a local run costs $0).", "Cost")]


FIGURES = (training_figures, dpo_figures, grpo_figures, evaluation_figure, token_length_figure, time_and_cost_figure)


def plots(data: ReportData) -> list[Figure]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return [f for make in FIGURES for f in make(plt, data)]
