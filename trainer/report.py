"""The run report: one self-contained `report.html` (PNG plots embedded as data URIs, inline CSS,
no scripts, nothing fetched) so it opens from a bucket download, an e-mail attachment or a laptop
offline. Stored with the run at `runs/<id>/report/report.html`."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from typing import Any

from trainer.run import Run
from trainer.textio import read_jsonl


@dataclass
class Figure:
    title: str
    png: bytes
    caption: str = ""


@dataclass
class ReportData:
    info: dict[str, Any]
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None
    token_lengths: dict[str, list[int]] = field(default_factory=dict)
    token_unit: str = "tokens"
    max_length: int | None = None
    stage_order: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- gathering
def gather(run: Run) -> ReportData:
    data = ReportData(info=run.info, stage_order=run.stage_names())
    for stage in data.stage_order:
        rows = [r for r in run.read_jsonl(run.metrics(stage)) if not r.get("final")]
        if rows:
            data.metrics[stage] = rows
    data.comparison = run.read_json(run.comparison())
    if data.comparison is None:
        try:
            from trainer.evaluate import comparison

            table = comparison(run)
            data.comparison = table if table["rows"] else None
        except (OSError, ValueError, KeyError):
            data.comparison = None
    _token_lengths(data, run)
    return data


def _token_lengths(data: ReportData, run: Run) -> None:
    """Lengths of the validation examples as the model sees them (chat template applied), so the
    histogram shows how much a `max_length` cut would drop. Falls back to words without a tokenizer."""
    try:
        bundle = run.bundle
    except (OSError, ValueError, KeyError):
        return
    spec = data.info.get("spec", {})
    lengths = [s.get("max_length") for s in spec.get("stages", []) if s.get("method") == "sft"]
    data.max_length = lengths[0] if lengths else None
    tokenizer = None
    try:
        from trainer.models import load_tokenizer

        tokenizer = load_tokenizer(spec["model"]["base"])
    except Exception:  # noqa: BLE001 -- offline Hub id, missing model: words are still informative
        data.token_unit = "words (tokenizer unavailable)"
    for role in ("sft_valid", "dpo_valid", "test"):
        path = bundle.data_path(role)
        if path is None or not path.exists():
            continue
        counts = []
        for row in read_jsonl(path):
            messages = row.get("messages") or row.get("prompt")
            if isinstance(messages, list):
                if role == "dpo_valid" and isinstance(row.get("chosen"), list):
                    messages = messages + row["chosen"]
                text = None
                if tokenizer is not None and getattr(tokenizer, "chat_template", None):
                    text = tokenizer.apply_chat_template(messages, tokenize=False)
                else:
                    text = "\n".join(str(m.get("content", "")) for m in messages)
            else:
                text = json.dumps(row, ensure_ascii=False)
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer else len(text.split())
            counts.append(n)
        if counts:
            data.token_lengths[role] = counts


# ------------------------------------------------------------------------------------ plots
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _loss_figure(plt: Any, data: ReportData) -> list[Figure]:
    loss_stages = {s: rows for s, rows in data.metrics.items() if any("loss" in r for r in rows)}
    if not loss_stages:
        return []
    fig, ax = plt.subplots(figsize=(8, 3.5))
    offset = 0
    for stage, rows in loss_stages.items():
        pts = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
        if not pts:
            continue
        ax.plot([offset + s for s, _ in pts], [v for _, v in pts], marker=".", label=stage)
        offset += max(s for s, _ in pts)
        ax.axvline(offset, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("optimizer step (stages back to back)")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return [Figure("Loss per stage", _png(fig), "Each stage's own loss (SFT: cross-entropy, "
                   "DPO: preference loss, GRPO: policy loss); scales differ between methods.")]


def _reward_figures(plt: Any, data: ReportData) -> list[Figure]:
    figures = []
    for stage, rows in data.metrics.items():
        pts = [r for r in rows if "reward_mean" in r and "step" in r]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(8, 3.5))
        steps = [r["step"] for r in pts]
        mean = [r["reward_mean"] for r in pts]
        std = [r.get("reward_std", 0.0) for r in pts]
        ax.plot(steps, mean, color="C0", label="reward mean")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], color="C0", alpha=0.2, label="± std")
        names = sorted({k for r in pts for k in r if k.startswith("rewards/") and k.endswith("/mean")})
        for i, name in enumerate(names):
            ax.plot(steps, [r.get(name) for r in pts], ls="--", color=f"C{i + 1}", label=name.split("/")[1])
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        figures.append(Figure(f"GRPO reward ({stage})", _png(fig),
                              "Mean reward over the group of generations per step; the band is one "
                              "standard deviation (a collapsing band means the group stopped disagreeing)."))
    return figures


def _evaluation_figure(plt: Any, data: ReportData) -> list[Figure]:
    if not (data.comparison and data.comparison.get("rows")):
        return []
    metric = data.comparison["metric"]
    rows = [r for r in data.comparison["rows"] if r.get(metric) is not None]
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(8, 3.5))
    values = [100 * r[metric] if metric == "accuracy" else r[metric] for r in rows]
    bars = ax.bar([r["stage"] for r in rows], values, color=[f"C{i}" for i in range(len(rows))])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("GSM8K accuracy (%)" if metric == "accuracy" else metric.upper())
    if metric == "accuracy":
        ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    return [Figure("Evaluation across stages", _png(fig), "Same test set for every stage.")]


def _token_length_figure(plt: Any, data: ReportData) -> list[Figure]:
    if not data.token_lengths:
        return []
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for role, counts in data.token_lengths.items():
        ax.hist(counts, bins=30, alpha=0.5, label=f"{role} (n={len(counts)})")
    if data.max_length:
        ax.axvline(data.max_length, color="red", ls="--", label=f"SFT max_length {data.max_length}")
    ax.set_xlabel(data.token_unit)
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    return [Figure("Token lengths (validation and test data)", _png(fig))]


def _time_and_cost_figure(plt: Any, data: ReportData) -> list[Figure]:
    timed = {s: e for s, e in data.info.get("stages", {}).items() if e.get("seconds")}
    if not timed:
        return []
    fig, ax = plt.subplots(figsize=(8, 3))
    bars = ax.bar(list(timed), [e["seconds"] / 60 for e in timed.values()], color="C2")
    labels = []
    for e in timed.values():
        cost = _stage_cost(data.info, e)
        labels.append(f"{e['seconds'] / 60:.1f} min" + (f"\n${cost:.2f}" if cost is not None else ""))
    ax.bar_label(bars, labels=labels, fontsize=8)
    ax.set_ylabel("minutes")
    return [Figure("Time and cost per stage", _png(fig))]


FIGURES = (_loss_figure, _reward_figures, _evaluation_figure, _token_length_figure, _time_and_cost_figure)


def plots(data: ReportData) -> list[Figure]:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cloud VM; the report only needs PNG bytes
    import matplotlib.pyplot as plt

    return [figure for make in FIGURES for figure in make(plt, data)]


def _stage_cost(info: dict[str, Any], entry: dict[str, Any]) -> float | None:
    """A stage's cost: as recorded, else its seconds at the run's hourly price when known."""
    if entry.get("cost_usd") is not None:
        return float(entry["cost_usd"])
    price = info.get("price_per_hour") or (info.get("resources") or {}).get("price_per_hour")
    return float(price) * entry["seconds"] / 3600 if price and entry.get("seconds") else None


def _offer_text(offer: dict[str, Any]) -> str:
    """A catalog offer (FT_PRICES row) or the instance a run found itself on, as one phrase."""
    gpus = f"{offer.get('count') or offer.get('gpus_per_node') or 1}× {offer.get('accelerator') or 'GPU'}"
    if (offer.get("nodes") or 1) > 1:
        gpus = f"{offer['nodes']} nodes × {gpus}"
    where = " ".join(str(offer[k]) for k in ("cloud", "instance_type") if offer.get(k))
    spot = "spot" if offer.get("spot") else "on-demand"
    price = f", ${offer['price_per_hour']:.2f}/h" if offer.get("price_per_hour") is not None else ""
    return f"{gpus} on {where} ({spot}{price})"


def cost_section(info: dict[str, Any], stages: list[str]) -> list[str]:
    """What the run cost, stage by stage and attempt by attempt, beside what was estimated before it ran.
    A local run costs nothing; the estimate then says what the cheapest fitting cloud offer would have."""
    rows, total, known = [], 0.0, True
    for stage in stages:
        entry = info.get("stages", {}).get(stage)
        if not entry:
            continue
        cost = _stage_cost(info, entry)
        known = known and cost is not None
        total += cost or 0.0
        rows.append([stage, entry.get("attempts_count") or len(entry.get("attempts", [])) or None,
                     entry.get("seconds_billed") or entry.get("seconds"), entry.get("gpu_hours"), cost])
    if not rows:
        return []
    block = info.get("cost") or {}
    rows.append(["total", None, None, None, round(total, 4) if known else None])
    parts = ["<h2>Cost</h2>", _table(["stage", "attempts", "billed seconds", "GPU-hours", "actual ($)"], rows)]
    where = block.get("instance")
    parts.append(f"<p>Ran on {html.escape(_offer_text(where | {'price_per_hour': block.get('price_per_hour')}))}."
                 "</p>" if where else "<p>Ran locally: no cloud bill (actual $0).</p>")
    estimate = block.get("estimate")
    if estimate and estimate.get("est_cost_usd") is not None:
        basis = estimate.get("basis") or "the launch's estimate"
        actual = f"; actual ${total:.2f}" if known and where else ""
        parts.append(f"<p>Estimated before the run ({html.escape(basis)}): about {estimate['est_hours']:.2f} h, "
                     f"${estimate['est_cost_usd']:.2f} on {html.escape(_offer_text(estimate))}{actual}.</p>")
    elif estimate and estimate.get("note"):
        parts.append(f"<p>No cloud estimate: {html.escape(estimate['note'])}.</p>")
    if block.get("max_cost_usd") is not None:
        parts.append(f"<p>Budget (resources.max_cost_usd): ${block['max_cost_usd']:.2f}.</p>")
    return parts


# ------------------------------------------------------------------------------------- html
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:960px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}img{max-width:100%}
code{background:#f4f4f4;padding:0 .2em}
"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}%"


def render(data: ReportData, figures: list[Figure]) -> str:
    info = data.info
    spec = info.get("spec", {})
    run_id = str(info.get("run_id", "?"))
    summary = _table(["field", "value"], [
        ["run", run_id],
        ["job", spec.get("name")],
        ["base model", (spec.get("model") or {}).get("base")],
        ["fine-tune", (spec.get("finetune") or {}).get("method")],
        ["task", (spec.get("data") or {}).get("task")],
        ["bundle", info.get("bundle_id")],
    ])
    stage_rows = []
    for stage in data.stage_order:
        entry = info.get("stages", {}).get(stage, {})
        losses = [r["loss"] for r in data.metrics.get(stage, []) if "loss" in r]
        stage_rows.append([stage, entry.get("method"), entry.get("status"), entry.get("steps"),
                           entry.get("seconds"), losses[-1] if losses else None, _stage_cost(info, entry)])
    stages = _table(["stage", "method", "status", "steps", "seconds", "last loss", "cost ($)"], stage_rows)
    parts = [f"<h1>Run report: {html.escape(run_id)}</h1>", "<h2>Run</h2>", summary, "<h2>Stages</h2>", stages,
             *cost_section(info, data.stage_order)]
    if data.comparison and data.comparison.get("rows"):
        cols = ["accuracy"] if data.comparison["task"] == "gsm8k" else ["bleu", "chrf", "ter", "comet"]
        parts += ["<h2>Evaluation</h2>", _table(["stage", *cols, "n", "source"],
                  [[r["stage"], *[_pct(r.get(c)) if c == "accuracy" else r.get(c) for c in cols],
                    r.get("n"), r.get("source")]
                   for r in data.comparison["rows"]])]
    parts.append("<h2>Plots</h2>")
    if not figures:
        parts.append("<p>No metrics logged yet.</p>")
    for f in figures:
        uri = "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")
        caption = f"<figcaption>{html.escape(f.caption)}</figcaption>" if f.caption else ""
        parts.append(f'<figure><h3>{html.escape(f.title)}</h3><img alt="{html.escape(f.title)}" '
                     f'src="{uri}">{caption}</figure>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>ft report '
            f"{html.escape(run_id)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def build_report(run: Run) -> str:
    data = gather(run)
    return render(data, plots(data))


def write_report(run: Run) -> str:
    """Render and store the report; returns its URL (a local path for a local store)."""
    run.store.write_text(run.report, build_report(run))
    return run.url(run.report)
