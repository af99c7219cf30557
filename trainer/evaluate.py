"""Evaluation: generate answers for a test set with a model (base, base + adapter, or full weights)
and score them; per run, one result file per stage and a comparison table across stages.

Generation uses vLLM's offline engine on a GPU when vLLM is installed (fast, the adapter applied
as a LoRA request) and transformers otherwise (CPU, Mac, CI). Greedy decoding either way so a
score is reproducible. Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from trainer import metrics
from trainer.run_refs import (
    BASE_STAGE,
    PROTOTYPE_STAGE,
    RunRef,
    is_adapter,
    load_run,
    run_spec,
    stage_model_dir,
    stage_names,
)
from trainer.spec import JobSpec
from trainer.textio import load_test_rows

Task = Literal["gsm8k", "translation"]
Backend = Literal["auto", "transformers", "vllm"]
LOCAL_TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
HEADLINE = {"gsm8k": "accuracy", "translation": "bleu"}


# ------------------------------------------------------------------------------------- data
def task_of(spec: JobSpec) -> Task:
    if spec.evaluation.task:
        return spec.evaluation.task
    return "gsm8k" if spec.data.task == "math" else "translation"


def _source_text(messages: list[dict[str, str]]) -> str:
    """The user's last message: the sentence to translate (COMET's `src`)."""
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


# -------------------------------------------------------------------------------- generation
def pick_backend(backend: Backend = "auto") -> Literal["transformers", "vllm"]:
    if backend != "auto":
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise RuntimeError("backend vllm: vLLM is not installed (it is in the vLLM image; GPU only)")
        return backend
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


def _chat_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # A base model without a chat template: plain text turns, answer invited at the end.
    return "\n\n".join(m["content"] for m in messages) + "\n"


def generate_transformers(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy completions, batched with left padding (so every prompt ends where generation starts)."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [_chat_text(tokenizer, m) for m in prompts]
    outputs: list[str] = []
    device = next(model.parameters()).device
    for i in range(0, len(texts), batch_size):
        # The chat template already holds the special tokens; adding BOS again would shift the model.
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        new = out[:, enc["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return [o.strip() for o in outputs]


def generate_vllm(
    base_path: str, adapter_dir: Path | None, prompts: list[list[dict[str, str]]], max_new_tokens: int
) -> list[str]:  # pragma: no cover -- needs a GPU and vLLM (the vLLM image)
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    lora = None
    kwargs: dict[str, Any] = {}
    if adapter_dir is not None and is_adapter(adapter_dir):
        rank = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"]
        kwargs = {"enable_lora": True, "max_lora_rank": _vllm_lora_rank(rank)}
        lora = LoRARequest("adapter", 1, str(adapter_dir))
    elif adapter_dir is not None:
        base_path = str(adapter_dir)  # full fine-tune: the stage folder is the whole model
    llm = LLM(model=base_path, dtype="auto", **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    results = llm.chat(prompts, params, lora_request=lora, use_tqdm=False)
    return [r.outputs[0].text.strip() for r in results]


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _vllm_lora_rank(r: int) -> int:
    """vLLM accepts only these `max_lora_rank` values; the adapter's rank rounded up."""
    for allowed in VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {r} exceeds vLLM's largest supported max_lora_rank ({VLLM_LORA_RANKS[-1]})")


# ---------------------------------------------------------------------------------- scoring
def score(task: Task, predictions: list[str], rows: list[dict[str, Any]], comet: bool = True) -> dict[str, Any]:
    refs = [r["answer"] for r in rows]
    if task == "gsm8k":
        return metrics.gsm8k_scores(predictions, refs)
    out = metrics.translation_scores(predictions, refs, [_source_text(r["messages"]) for r in rows], comet=comet)
    out["items"] = [
        {"index": i, "source": _source_text(r["messages"]), "reference": r["answer"]} for i, r in enumerate(rows)
    ]
    return out


def evaluate_model(
    base: str,
    adapter_dir: Path | None,
    test_rows: list[dict[str, Any]],
    task: Task,
    limit: int | None = None,
    max_new_tokens: int = 256,
    backend: Backend = "auto",
    batch_size: int = 8,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Generate for the first `limit` rows and score. Items carry the raw predictions."""
    rows = test_rows[:limit] if limit else list(test_rows)
    if not rows:
        raise ValueError("no test rows to evaluate")
    prompts = [r["messages"] for r in rows]
    chosen = pick_backend(backend)
    started = time.perf_counter()
    if chosen == "vllm":  # pragma: no cover -- GPU only
        from trainer.models import resolve_model_path

        predictions = generate_vllm(resolve_model_path(base), adapter_dir, prompts, max_new_tokens)
    else:
        from trainer.models import load_model_for_inference, load_tokenizer

        model = load_model_for_inference(base, adapter_dir, dtype=dtype)
        # A stage folder carries the tokenizer it was trained with (chat template included).
        has_tok = adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").exists()
        tok_source = str(adapter_dir) if has_tok else base
        tokenizer = load_tokenizer(tok_source)
        predictions = generate_transformers(model, tokenizer, prompts, max_new_tokens, batch_size)
    seconds = time.perf_counter() - started
    result = score(task, predictions, rows)
    for item, pred in zip(result["items"], predictions, strict=True):
        item["prediction"] = pred
    result.update(
        {
            "model": base,
            "adapter": str(adapter_dir) if adapter_dir else None,
            "backend": chosen,
            "limit": limit,
            "max_new_tokens": max_new_tokens,
            "generation_seconds": round(seconds, 3),
        }
    )
    return result


# ----------------------------------------------------------------------------------- runs
def _bundle_test_rows(info: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    from trainer.bundle import fetch_bundle

    bundle = fetch_bundle(info["bundle_uri"], progress=False)
    test = bundle.data_path("test")
    if test is None:
        raise ValueError(f"bundle {info['bundle_uri']} has no test data (data.test in the spec)")
    return load_test_rows(test), bundle


def stage_adapter(run: RunRef, info: dict[str, Any], stage: str, bundle: Any) -> Path | None:
    """The weights to put on the base for `stage`: None for the base model itself."""
    if stage == BASE_STAGE:
        return None
    if stage == PROTOTYPE_STAGE:
        if bundle.prototype_adapter is None:
            raise ValueError("the bundle holds no prototype adapter (the Mac prototype was not exported)")
        return bundle.prototype_adapter
    return stage_model_dir(run, info, stage)


def evaluate_stage(
    run_store_uri: str,
    run_id: str,
    stage: str,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    backend: Backend = "auto",
) -> dict[str, Any]:
    """Evaluate one stage (or `base` / `prototype`) of a run on its bundle's test set; writes
    `runs/<id>/eval/<stage>.json` and refreshes the comparison across stages."""
    run = RunRef(run_store_uri, run_id)
    info = load_run(run)
    spec = run_spec(info)
    rows, bundle = _bundle_test_rows(info)
    adapter = stage_adapter(run, info, stage, bundle)
    result = evaluate_model(
        spec.model.base,
        adapter,
        rows,
        task_of(spec),
        limit=limit or spec.evaluation.limit,
        max_new_tokens=max_new_tokens or spec.evaluation.max_new_tokens,
        backend=backend,
        dtype=spec.model.dtype,
    )
    result["stage"] = stage
    result["run_id"] = run_id
    run.store.write_text(f"{run.prefix}/eval/{stage}.json", json.dumps(result, indent=2, ensure_ascii=False))
    write_comparison(run_store_uri, run_id)
    return result


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


def comparison(run_store_uri: str, run_id: str) -> dict[str, Any]:
    """One row per evaluated stage, in pipeline order: base, Mac prototype, then the trained stages."""
    run = RunRef(run_store_uri, run_id)
    info = load_run(run)
    spec = run_spec(info)
    task = task_of(spec)
    found = {
        key.removesuffix(".json")
        for key, _ in run.store.list(f"{run.prefix}/eval")
        if "/" not in key and key.endswith(".json") and key != "comparison.json"
    }
    order = [BASE_STAGE, PROTOTYPE_STAGE] + stage_names(info)
    order += sorted(found - set(order))
    rows = []
    for stage in order:
        if stage in found:
            result = json.loads(run.store.read_text(f"{run.prefix}/eval/{stage}.json"))
            rows.append({"stage": stage, "source": f"ft eval ({result.get('backend')})", "n": result.get("n")}
                        | metrics.headline(result))
        elif stage == PROTOTYPE_STAGE:
            proto = None
            try:
                from trainer.bundle import fetch_bundle

                proto = _prototype_headline(fetch_bundle(info["bundle_uri"], progress=False).prototype_metrics, task)
            except (OSError, ValueError, KeyError):
                proto = None  # no bundle reachable: the table simply lacks the prototype row
            if proto:
                rows.append({"stage": stage, "source": "bundle prototype metrics (mlx-lm)"} | proto)
    return {"run_id": run_id, "task": task, "metric": HEADLINE[task], "rows": rows}


def comparison_markdown(table: dict[str, Any]) -> str:
    """The guide's "expected results" table, with this run's numbers."""
    if table["task"] == "gsm8k":
        header, cols = "| Stage | GSM8K accuracy | n | source |\n|---|---|---|---|", ["accuracy"]
    else:
        header = "| Stage | BLEU | chrF | TER | COMET | n | source |\n|---|---|---|---|---|---|---|"
        cols = ["bleu", "chrf", "ter", "comet"]
    lines = [header]
    for row in table["rows"]:
        cells = []
        for c in cols:
            v = row.get(c)
            if v is None:
                cells.append("–")
            elif c == "accuracy":
                cells.append(f"{100 * v:.1f}%")
            else:
                cells.append(f"{v:.2f}")
        lines.append(f"| {row['stage']} | " + " | ".join(cells) + f" | {row.get('n') or '–'} | {row['source']} |")
    return "\n".join(lines) + "\n"


def write_comparison(run_store_uri: str, run_id: str) -> dict[str, Any]:
    table = comparison(run_store_uri, run_id)
    run = RunRef(run_store_uri, run_id)
    run.store.write_text(f"{run.prefix}/eval/comparison.json", json.dumps(table, indent=2))
    run.store.write_text(f"{run.prefix}/eval/comparison.md", comparison_markdown(table))
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
                raise ValueError(f"local tasks {sorted(local & set(tasks))} need test rows")
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


def lm_eval_stage(
    run_store_uri: str, run_id: str, stage: str, tasks: list[str], limit: int | None = None
) -> dict[str, Any]:
    """`run_lm_eval` for a run's stage; stored at `runs/<id>/eval/lm_eval/<stage>.json`."""
    run = RunRef(run_store_uri, run_id)
    info = load_run(run)
    spec = run_spec(info)
    rows, bundle = _bundle_test_rows(info)
    adapter = stage_adapter(run, info, stage, bundle)
    result = run_lm_eval(spec.model.base, adapter, tasks, limit=limit, test_rows=rows,
                         max_new_tokens=spec.evaluation.max_new_tokens)
    result["stage"] = stage
    run.store.write_text(f"{run.prefix}/eval/lm_eval/{stage}.json", json.dumps(result, indent=2))
    return result
