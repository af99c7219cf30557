"""Evaluation: the one entry that scores a run (`evaluate_run`: base, Mac prototype and every finished
stage on the bundle's test set, lm-eval tasks, the comparison table across stages), and the model-level
pieces under it (generate for a test set and score; lm-eval harness tasks). Generation lives in
`trainer.generation`, the metrics in `trainer.scores`. Greedy decoding, so a score is reproducible.
Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from trainer import metric_names, scores
from trainer.errors import BadInput
from trainer.generation import Backend, pick_backend
from trainer.run import BASE_STAGE, PROTOTYPE_STAGE, Run, is_adapter
from trainer.spec import JobSpec
from trainer.textio import load_test_rows

Task = Literal["gsm8k", "translation"]
LOCAL_TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
HEADLINE = {"gsm8k": "accuracy", "translation": "bleu"}


def task_of(spec: JobSpec) -> Task:
    if spec.evaluation.task:
        return spec.evaluation.task
    return "gsm8k" if spec.data.task == "math" else "translation"


def _source_text(messages: list[dict[str, str]]) -> str:
    """The user's last message: the sentence to translate (COMET's `src`)."""
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


# ---------------------------------------------------------------------------------- scoring
def score(task: Task, predictions: list[str], rows: list[dict[str, Any]], comet: bool = True) -> dict[str, Any]:
    refs = [r["answer"] for r in rows]
    if task == "gsm8k":
        return scores.gsm8k_scores(predictions, refs)
    sources = [_source_text(r["messages"]) for r in rows]
    out = scores.translation_scores(predictions, refs, sources, comet=comet)
    out["items"] = [{"index": i, "source": src, "reference": r["answer"]}
                    for i, (src, r) in enumerate(zip(sources, rows, strict=True))]
    return out


def evaluate_model(
    base: str,
    model_dir: Path | None,
    test_rows: list[dict[str, Any]],
    task: Task,
    limit: int | None = None,
    max_new_tokens: int = 256,
    backend: Backend = "auto",
    batch_size: int = 8,
    dtype: str = "auto",
    valid_rows: list[dict[str, Any]] | None = None,
    max_length: int = 2048,
) -> dict[str, Any]:
    """Generate for the first `limit` rows with `base` (+ a stage's adapter or full weights in
    `model_dir`) and score. Items carry the raw predictions. With `valid_rows` (SFT chat rows) the same
    model's loss on them is measured too (`eval_loss`, see `validation_loss`)."""
    from trainer import generation

    rows = test_rows[:limit] if limit else list(test_rows)
    if not rows:
        raise BadInput("no test rows to evaluate")
    prompts = [r["messages"] for r in rows]
    chosen = pick_backend(backend)
    started = time.perf_counter()
    if chosen == "vllm":  # pragma: no cover -- GPU only
        from trainer.models import resolve_model_path

        predictions = generation.generate_vllm(resolve_model_path(base), model_dir, prompts, max_new_tokens)
    else:
        model, tokenizer = generation.load_model(base, model_dir, dtype=dtype)
        predictions = generation.generate_transformers(model, tokenizer, prompts, max_new_tokens, batch_size)
    seconds = time.perf_counter() - started
    result = score(task, predictions, rows)
    if valid_rows and chosen == "transformers":  # vLLM gives no logits here; the trainer logs eval loss there
        result.update(validation_loss(model, tokenizer, valid_rows, max_length))
    for item, pred in zip(result["items"], predictions, strict=True):
        item["prediction"] = pred
    result.update({"model": base, "adapter": str(model_dir) if model_dir else None, "backend": chosen,
                   "limit": limit, "max_new_tokens": max_new_tokens, "generation_seconds": round(seconds, 3)})
    return result


# ----------------------------------------------------------------------------- eval loss
# Rows the eval loss reads: the first of the validation split, as the trainer's own eval does on a CPU
# (trainer/recipes/common.EVAL_ROWS_CPU), so one forward pass per row stays a second or two per model.
EVAL_LOSS_ROWS = 16


def validation_loss(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_length: int = 2048,
                    limit: int = EVAL_LOSS_ROWS) -> dict[str, Any]:
    """Mean cross-entropy per answer token on SFT chat rows (`messages` ending in the assistant's reply),
    the prompt masked as the SFT stage masks it (`assistant_only_loss`). Unlike the trainer's `eval_loss`,
    which each stage measures on its own validation file, this is one yardstick for every model (base,
    prototype, each stage), so it shows what training moved even where accuracy cannot yet."""
    import torch

    from trainer.generation import chat_text

    total, tokens = 0.0, 0
    model.eval()
    device = next(model.parameters()).device
    for row in rows[:limit]:
        messages = row["messages"]
        prompt = tokenizer(chat_text(tokenizer, messages[:-1]), add_special_tokens=False)["input_ids"]
        full = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
        ids = full["input_ids"][:max_length]
        if len(ids) <= len(prompt):
            continue  # the answer was cut off entirely: nothing to score
        labels = [-100] * len(prompt) + ids[len(prompt):]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids], device=device), labels=torch.tensor([labels], device=device))
        n = len(ids) - len(prompt)
        total += float(out.loss) * n
        tokens += n
    return {"eval_loss": round(total / tokens, 6) if tokens else None, "eval_loss_rows": min(limit, len(rows)),
            "eval_loss_tokens": tokens}


def bundle_valid_rows(run: Run) -> list[dict[str, Any]] | None:
    """The bundle's SFT validation rows (chat format), or None when it has none."""
    from trainer.textio import read_jsonl

    path = run.bundle.data_path("sft_valid")
    return read_jsonl(path)[:EVAL_LOSS_ROWS] if path is not None else None


# ----------------------------------------------------------------------------------- runs
def bundle_test_rows(run: Run) -> list[dict[str, Any]]:
    test = run.bundle.data_path("test")
    if test is None:
        raise BadInput(f"bundle {run.info['bundle_uri']} has no test data (data.test in the spec)")
    return load_test_rows(test)


def stage_model(run: Run, stage: str) -> Path | None:
    """The weights to put on the base for `stage`: None for the base model itself."""
    if stage == BASE_STAGE:
        return None
    if stage == PROTOTYPE_STAGE:
        if run.bundle.prototype_adapter is None:
            raise BadInput("the bundle holds no prototype adapter (the Mac prototype was not exported)")
        return run.bundle.prototype_adapter
    return run.model_dir(stage)


def evaluate_stage(run: Run, stage: str, limit: int | None = None, max_new_tokens: int | None = None,
                   backend: Backend = "auto", rows: list[dict[str, Any]] | None = None,
                   valid_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Evaluate one stage (or `base` / `prototype`) on the bundle's test set, and its loss on the SFT
    validation rows when the bundle has them, and store the result. A run cut shorter than the spec's
    `evaluation.limit` is stored apart (`eval/n<N>/`), so it never replaces the full result the
    comparison, the report and the model card show."""
    spec = run.spec
    rows = bundle_test_rows(run) if rows is None else rows
    valid_rows = bundle_valid_rows(run) if valid_rows is None else valid_rows
    full = len(rows[: spec.evaluation.limit] if spec.evaluation.limit else rows)
    max_length = max((s.max_length for s in spec.stages if s.method == "sft"), default=2048)
    result = evaluate_model(spec.model.base, stage_model(run, stage), rows, task_of(spec),
                            limit=limit or spec.evaluation.limit,
                            max_new_tokens=max_new_tokens or spec.evaluation.max_new_tokens,
                            backend=backend, dtype=spec.model.dtype, valid_rows=valid_rows, max_length=max_length)
    result.update(stage=stage, run_id=run.run_id)
    cut_to = result["n"] if result["n"] < full else None
    run.store.write_text(run.eval_result(stage, cut_to), json.dumps(result, indent=2, ensure_ascii=False))
    result["stored"] = run.url(run.eval_result(stage, cut_to))
    return result


def evaluate_run(
    run: Run,
    stages: list[str] | None = None,
    limit: int | None = None,
    backend: Backend = "auto",
    max_new_tokens: int | None = None,
    lm_eval_tasks: list[str] | None = None,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score `stages` (default: the base model and every finished stage that generates) on the bundle's
    test set, and the lm-eval tasks (default: the spec's) on the trained ones; store each result, then
    the comparison table once. `on_result(stage, result)` after each (for progress lines)."""
    if not stages:
        trained = run.done_stages(generating=True)
        if not trained:
            raise BadInput(f"run {run.run_id} has no finished stage in {run.store_uri}")
        stages = [BASE_STAGE, *trained]
    tasks = run.spec.evaluation.lm_eval_tasks if lm_eval_tasks is None else lm_eval_tasks
    rows = bundle_test_rows(run)
    valid_rows = bundle_valid_rows(run) or []
    for stage in stages:
        result = evaluate_stage(run, stage, limit, max_new_tokens, backend, rows=rows, valid_rows=valid_rows)
        if on_result:
            on_result(stage, result)
        if tasks and stage != BASE_STAGE:
            lm = lm_eval_stage(run, stage, tasks, limit=limit, rows=rows)
            if on_result:
                on_result(f"{stage} (lm-eval)", lm)
    return write_comparison(run)


# ------------------------------------------------------------------------------ comparison
def _prototype_headline(prototype: dict[str, Any] | None, task: Task) -> dict[str, Any] | None:
    """The Mac prototype's own scores from the bundle, whatever nesting the exporter used."""
    if not prototype:
        return None
    keys = ("accuracy",) if task == "gsm8k" else ("bleu", "chrf", "ter", "comet")
    for candidate in (prototype, prototype.get("eval") or {}, prototype.get("scores") or {}):
        if isinstance(candidate, dict) and any(isinstance(candidate.get(k), int | float) for k in keys):
            return {k: candidate.get(k) for k in keys} | {"n": candidate.get("n")}
    return None


def _bundle_prototype_row(run: Run, task: Task) -> dict[str, Any] | None:
    try:
        proto = _prototype_headline(run.bundle.prototype_metrics, task)
    except (OSError, ValueError, KeyError):
        return None  # no bundle reachable: the table simply lacks the prototype row
    return {"stage": PROTOTYPE_STAGE, "source": "bundle prototype metrics (mlx-lm)"} | proto if proto else None


def comparison(run: Run) -> dict[str, Any]:
    """One row per fully evaluated stage, in pipeline order: base, Mac prototype, the trained stages."""
    task = task_of(run.spec)
    found = {key.removesuffix(".json") for key, _ in run.store.list(run.eval_dir)
             if "/" not in key and key.endswith(".json") and key != "comparison.json"}
    order = [BASE_STAGE, PROTOTYPE_STAGE, *run.stage_names()]
    order += sorted(found - set(order))
    rows = []
    for stage in order:
        if stage in found:
            result = json.loads(run.store.read_text(run.eval_result(stage)))
            rows.append({"stage": stage, "source": f"ft eval ({result.get('backend')})", "n": result.get("n")}
                        | scores.headline(result))
        elif stage == PROTOTYPE_STAGE and (row := _bundle_prototype_row(run, task)):
            rows.append(row)
    return {"run_id": run.run_id, "task": task, "metric": HEADLINE[task], "rows": rows}


def comparison_markdown(table: dict[str, Any]) -> str:
    """The guide's "expected results" table, with this run's numbers."""
    columns = metric_names.eval_columns(table["task"], table["rows"])
    lines = ["| Stage | " + " | ".join(label for _, label, _, _ in columns) + " | n | source |",
             "|---|" + "---|" * len(columns) + "---|---|"]
    for row in table["rows"]:
        cells = [metric_names.eval_cell(row.get(key), percent) for key, _, percent, _ in columns]
        lines.append(f"| {row['stage']} | " + " | ".join(cells) + f" | {row.get('n') or '–'} | {row['source']} |")
    return "\n".join(lines) + "\n"


def write_comparison(run: Run) -> dict[str, Any]:
    table = comparison(run)
    run.store.write_text(run.comparison("json"), json.dumps(table, indent=2))
    run.store.write_text(run.comparison("md"), comparison_markdown(table))
    return table


# --------------------------------------------------------------------------------- lm-eval
def local_lm_eval_tasks() -> list[str]:
    return sorted(p.stem for p in LOCAL_TASKS_DIR.glob("*.yaml"))


def materialize_local_tasks(test_rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write the local task YAMLs into `out_dir`, pointed at a JSONL made from `test_rows`
    (`question` = the user's message, `answer` = the reference), so lm-eval runs with no Hub."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "test.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for row in test_rows:
            f.write(json.dumps({"question": _source_text(row["messages"]), "answer": row["answer"]}) + "\n")
    for template in LOCAL_TASKS_DIR.glob("*.yaml"):
        text = template.read_text(encoding="utf-8").replace("__DATA_FILE__", json.dumps(str(data)))
        (out_dir / template.name).write_text(text, encoding="utf-8")
    return out_dir


def run_lm_eval(
    base: str,
    adapter_dir: Path | None,
    tasks: list[str],
    limit: int | None = None,
    test_rows: list[dict[str, Any]] | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """lm-eval harness tasks: Hub tasks by name (need the Hub, i.e. the cloud) and the local
    offline tasks of `trainer/lm_eval_tasks` (over `test_rows`). Returns the harness's results."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from trainer.models import resolve_model_path

    local = set(local_lm_eval_tasks())
    with tempfile.TemporaryDirectory(prefix="ft-lm-eval-") as tmp:
        include = None
        if local & set(tasks):
            if not test_rows:
                raise BadInput(f"local tasks {sorted(local & set(tasks))} need test rows")
            include = str(materialize_local_tasks(test_rows, Path(tmp)))
        model_args = f"pretrained={resolve_model_path(base)}"
        if adapter_dir is not None and is_adapter(adapter_dir):
            model_args += f",peft={adapter_dir}"
        elif adapter_dir is not None:
            model_args = f"pretrained={adapter_dir}"
        cuda = torch.cuda.is_available()
        model_args += ",dtype=" + ("auto" if cuda else "float32")
        gen_kwargs = f"max_gen_toks={max_new_tokens}" if max_new_tokens else None
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=tasks,
            limit=limit,
            batch_size=batch_size,
            device="cuda" if cuda else "cpu",
            task_manager=TaskManager(include_path=include),
            gen_kwargs=gen_kwargs,
        )
    if results is None:  # non-zero ranks in a distributed run
        return {}
    # Keep what is small and JSON-safe: per-task metrics, versions, n-shot, the config used.
    clean = {k: results.get(k) for k in ("results", "versions", "n-shot", "higher_is_better", "n-samples")}
    clean["config"] = {k: v for k, v in (results.get("config") or {}).items() if k != "model"}
    clean["tasks"] = tasks
    return json.loads(json.dumps(clean, default=str))


def lm_eval_stage(run: Run, stage: str, tasks: list[str], limit: int | None = None,
                  rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`run_lm_eval` for a run's stage; stored at `runs/<id>/eval/lm_eval/<stage>.json`."""
    spec = run.spec
    result = run_lm_eval(spec.model.base, stage_model(run, stage), tasks, limit=limit,
                         test_rows=bundle_test_rows(run) if rows is None else rows,
                         max_new_tokens=spec.evaluation.max_new_tokens)
    result["stage"] = stage
    run.store.write_text(run.lm_eval_result(stage), json.dumps(result, indent=2))
    return result
