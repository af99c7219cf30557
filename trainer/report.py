"""The run report: one self-contained `report.html` (PNG plots embedded as data URIs, inline CSS,
no scripts, nothing fetched) so it opens from a bucket download, an e-mail attachment or a laptop
offline. Stored with the run at `runs/<id>/report/report.html`.

Sections, top to bottom: the diagnostics (trainer/diagnostics.py), the run (bundle, versions), the
stages with their numbers start → end (metric_names.first_last), the evaluation across stages
(base → prototype → SFT → DPO → GRPO, a chart with the numbers), sample generations side by side per
stage, training curves per stage (loss and eval loss, learning rate, grad norm), DPO reward margins and
accuracies, GRPO reward mean ± std per reward function, KL and completion lengths, token lengths against
each stage's max_length, time and cost, and the spec. Every number comes from the run itself: run.json,
the metrics the trainer wrote (`metrics.jsonl`, names in trainer/metric_names.py) and the stored
evaluations (`eval/<stage>.json`).
Gathering: trainer/report_data.py; plots: trainer/report_plots.py.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from trainer import metric_names as m
from trainer.diagnostics import RULES, Finding, diagnose
from trainer.report_data import ReportData, gather, stage_cost, stage_summary
from trainer.report_plots import Figure, plots
from trainer.run import Run

__all__ = ["Figure", "ReportData", "build_report", "cost_section", "gather", "plots", "render", "write_report"]

GENERATION_CHARS = 600  # a generation is cut here in the samples table (the eval JSON has it whole)


# ------------------------------------------------------------------------------------- cost
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
    block = info.get("cost") or {}
    estimate = block.get("estimate") or {}
    stage_hours = estimate.get("stage_hours") or {}
    rate = (estimate.get("price_per_hour") or 0.0) * (estimate.get("nodes") or 1)
    for stage in stages:
        entry = info.get("stages", {}).get(stage)
        if not entry:
            continue
        cost = stage_cost(info, entry)
        known = known and cost is not None
        total += cost or 0.0
        hours = stage_hours.get(stage)
        rows.append([stage, entry.get("attempts_count") or len(entry.get("attempts", [])) or None,
                     entry.get("seconds_billed") or entry.get("seconds"), entry.get("gpu_hours"), cost,
                     hours, round(hours * rate, 4) if hours is not None and rate else None])
    if not rows:
        return []
    rows.append(["total", None, None, None, round(total, 4) if known else None, None, None])
    parts = ["<h2>Cost</h2>", _table(["stage", "attempts", "billed seconds", "GPU-hours", "actual ($)",
                                      "est. hours", "est. ($)"], rows)]
    if stage_hours:
        parts.append("<p>Per-stage estimates are the stage's training and generation on the estimated offer; "
                     "the job's estimate below adds setup, model loads, evaluation and uploads.</p>")
    where = block.get("instance")
    parts.append(f"<p>Ran on {html.escape(_offer_text(where | {'price_per_hour': block.get('price_per_hour')}))}."
                 "</p>" if where else "<p>Ran locally: no cloud bill (actual $0).</p>")
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
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f4f4f4}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}img{max-width:100%}
code,pre{background:#f4f4f4;padding:0 .2em}pre{padding:.5em;overflow-x:auto;font-size:.85em}
ul.findings{list-style:none;padding:0}ul.findings li{padding:.3em .6em;margin:.2em 0;border-left:4px solid}
li.error{border-color:#c00;background:#fdecec}li.warning{border-color:#d80;background:#fff5e0}
li.info{border-color:#48c;background:#eef4fb}p.ok{color:#070}
td.gen{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.85em}.yes{color:#070}.no{color:#c00}
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


def _h2(title: str, anchor: str) -> str:
    return f'<h2 id="{anchor}">{html.escape(title)}</h2>'


def _figures(figures: list[Figure], section: str) -> list[str]:
    parts = []
    for f in figures:
        if f.section != section:
            continue
        uri = "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")
        caption = f"<figcaption>{html.escape(f.caption)}</figcaption>" if f.caption else ""
        parts.append(f'<figure><h3>{html.escape(f.title)}</h3><img alt="{html.escape(f.title)}" '
                     f'src="{uri}">{caption}</figure>')
    return parts


def _diagnostics(findings: list[Finding]) -> list[str]:
    parts = [_h2("Diagnostics", "diagnostics")]
    if not findings:
        checked = ", ".join(rule.__name__ for rule in RULES)
        return parts + [f'<p class="ok">No problems found by the checks ({html.escape(checked)}).</p>']
    items = "".join(f'<li class="{f.severity}"><b>{f.severity}</b> ({html.escape(f.rule)}): {html.escape(f.text)}</li>'
                    for f in findings)
    return parts + [f'<ul class="findings">{items}</ul>']


def _run_section(data: ReportData) -> list[str]:
    info, spec = data.info, data.info.get("spec", {})
    versions = info.get("versions") or {}
    rows = [["run", info.get("run_id")], ["job", spec.get("name")],
            ["base model", (spec.get("model") or {}).get("base")],
            ["fine-tune", (spec.get("finetune") or {}).get("method")],
            ["task", (spec.get("data") or {}).get("task")], ["bundle", info.get("bundle_id")],
            ["bundle URI", info.get("bundle_uri")], ["started", info.get("created_at")],
            ["versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "not recorded in run.json"]]
    return [_h2("Run", "run"), _table(["field", "value"], rows)]


def _stages_section(data: ReportData) -> list[str]:
    info = data.info
    rows = []
    for stage in data.stage_order:
        entry = info.get("stages", {}).get(stage, {})
        rows.append([stage, entry.get("method"), entry.get("status"), entry.get("steps"), entry.get("seconds"),
                     stage_cost(info, entry)])
    numbers = []
    for stage in data.stage_order:
        n = stage_summary(data, stage)

        def arrow(name: str, n: dict[str, Any] = n) -> str | None:
            if f"{name}_first" not in n:
                return None
            return f"{_fmt(n[name + '_first'])} → {_fmt(n[name + '_last'])}"

        extra = {"dpo": f"margin {arrow('margins') or '–'}, accuracy {arrow('accuracies') or '–'}",
                 "grpo": f"reward {arrow('reward') or '–'}, KL {arrow('kl') or '–'}, clipped {arrow('clipped') or '–'}"}
        numbers.append([stage, arrow("loss"), arrow("eval_loss"), arrow("grad_norm"), n.get("learning_rate_max"),
                        extra.get(n["method"] or "", "")])
    return [_h2("Stages", "stages"),
            _table(["stage", "method", "status", "steps", "seconds", "cost ($)"], rows),
            "<p>From the metrics the trainer wrote, start → end (each the mean of up to three logged steps):</p>",
            _table(["stage", "training loss", "eval loss", "grad norm", "peak lr", "method's own"], numbers)]


def _evaluation_section(data: ReportData, figures: list[Figure]) -> list[str]:
    table = data.comparison
    if not (table and table.get("rows")):
        return [_h2("Evaluation", "evaluation"), "<p>Not evaluated yet (<code>ft eval</code>).</p>"]
    columns = m.eval_columns(table["task"], table["rows"])
    rows = [[r["stage"], *[m.eval_cell(r.get(key), percent) for key, _, percent, _ in columns], r.get("n"),
             r.get("source")] for r in table["rows"]]
    header = ["stage", *[label + (" ↓" if lower else "") for _, label, _, lower in columns], "n", "source"]
    return [_h2("Evaluation", "evaluation"), _table(header, rows), *_figures(figures, "Evaluation")]


def _prompt_text(data: ReportData, index: int) -> str:
    if index < len(data.test_rows):
        users = [m.get("content", "") for m in data.test_rows[index]["messages"] if m.get("role") == "user"]
        if users:
            return str(users[-1])
    for result in data.evals.values():  # translation items keep their source sentence
        items = result.get("items") or []
        if index < len(items) and items[index].get("source"):
            return str(items[index]["source"])
    return "(prompt not available: the bundle could not be read)"


def _samples_section(data: ReportData) -> list[str]:
    from trainer.report_data import SAMPLE_PROMPTS

    parts = [_h2("Sample generations", "samples")]
    stages = [s for s in data.evals if data.evals[s].get("items")]
    if not stages:
        return parts + ["<p>No stored evaluation with predictions yet (<code>ft eval</code>).</p>"]
    gsm8k = data.task == "gsm8k"
    count = min(SAMPLE_PROMPTS, max(len(data.evals[s]["items"]) for s in stages))
    parts.append("<p>The same test prompts, greedy decoding, one row per stage"
                 + (" (✓ the extracted answer matches the reference, ✗ it does not)." if gsm8k else ".") + "</p>")
    for i in range(count):
        reference = None
        rows = []
        for stage in stages:
            items = data.evals[stage]["items"]
            if i >= len(items):
                continue
            item = items[i]
            reference = reference or item.get("gold") or item.get("reference")
            text = str(item.get("prediction", ""))
            shown = text if len(text) <= GENERATION_CHARS else text[:GENERATION_CHARS] + " …"
            mark = ""
            if gsm8k:
                ok = bool(item.get("correct"))
                mark = (f'<td class="{"yes" if ok else "no"}">{"✓" if ok else "✗"} '
                        f'{html.escape(_fmt(item.get("extracted")))}</td>')
            rows.append(f"<tr><td>{html.escape(stage)}</td>{mark}"
                        f'<td class="gen">{html.escape(shown) if shown.strip() else "<i>(empty)</i>"}</td></tr>')
        head = "<tr><th>stage</th>" + ("<th>answer</th>" if gsm8k else "") + "<th>generation</th></tr>"
        parts += [f"<h3>Prompt {i + 1}</h3>", f"<p>{html.escape(_prompt_text(data, i))}</p>",
                  f"<p>Reference: <b>{html.escape(_fmt(reference))}</b></p>",
                  f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"]
    return parts


def _data_section(data: ReportData, figures: list[Figure]) -> list[str]:
    parts = [_h2("Data: token lengths", "data")]
    if not data.token_lengths:
        return parts + ["<p>The bundle's data could not be read here.</p>"]
    rows = [[tl.role, len(tl.counts), min(tl.counts), round(sum(tl.counts) / len(tl.counts)), max(tl.counts),
             f"{tl.limit_name} {tl.limit}" if tl.limit else None,
             f"{tl.over} ({100 * tl.share_over:.1f}%) {tl.cut}" if tl.limit else None]
            for tl in data.token_lengths.values()]
    return parts + [_table(["data", "rows read", "min", "mean", "max", "limit", "over the limit"], rows),
                    f"<p>Unit: {html.escape(data.token_unit)}.</p>", *_figures(figures, "Data")]


def _spec_section(data: ReportData) -> list[str]:
    import yaml

    text = yaml.safe_dump(data.info.get("spec", {}), sort_keys=False, allow_unicode=True)
    return [_h2("Spec", "spec"), "<details><summary>The resolved job spec (every default filled in)</summary>"
            f"<pre>{html.escape(text)}</pre></details>"]


def render(data: ReportData, figures: list[Figure], findings: list[Finding] | None = None) -> str:
    run_id = str(data.info.get("run_id", "?"))
    parts = [f"<h1>Run report: {html.escape(run_id)}</h1>", *_diagnostics(findings or []),
             *_run_section(data), *_stages_section(data), *_evaluation_section(data, figures),
             *_samples_section(data), _h2("Training", "training")]
    training = _figures(figures, "Training")
    parts += training or ["<p>No metrics logged yet.</p>"]
    for section, anchor in (("DPO", "dpo"), ("GRPO", "grpo")):
        shown = _figures(figures, section)
        if shown:
            parts += [_h2(section, anchor), *shown]
    parts += [*_data_section(data, figures), _h2("Time and cost", "time-and-cost"), *_figures(figures, "Cost"),
              *cost_section(data.info, data.stage_order)[1:], *_spec_section(data)]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>ft report '
            f"{html.escape(run_id)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def build_report(run: Run) -> str:
    data = gather(run)
    return render(data, plots(data), diagnose(data))


def write_report(run: Run) -> str:
    """Render and store the report; returns its URL (a local path for a local store)."""
    run.store.write_text(run.report, build_report(run))
    return run.url(run.report)
