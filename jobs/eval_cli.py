"""Evaluation, merging, serving, publishing and reporting commands, registered on the `ft` app:
`ft eval run|score`, `ft merge`, `ft serve up|check`, `ft push`, `ft chat`, `ft report`.

RUN is `s3://…/runs/<id>`, a local `<store>/runs/<id>` folder, or a bare run id with `--store`. Errors
we raise on purpose (a missing stage, an unreachable store) reach the `ft` entry point, which prints
one line and exits with their code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from jobs.console import console, fail, resolve_store, store_option
from trainer.textio import read_lines

STORE_OPT = store_option()
STAGE_OPT = typer.Option(None, "--stage", "-s", help="stage name, `base` or `prototype` (default: last done)")


def _run(ref: str, store: str | None):
    from trainer.run import Run

    return Run.from_ref(ref, resolve_store(store))


def _print_scores(result: dict[str, Any]) -> None:
    if result.get("task") == "gsm8k":
        console.print(f"GSM8K accuracy: [bold]{100 * result['accuracy']:.1f}%[/] "
                      f"({result['correct']}/{result['n']}; no answer found in {result['no_answer']})")
    elif "bleu" in result:
        console.print(f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  TER {result['ter']:.2f}  "
                      f"COMET {result['comet'] if result.get('comet') is not None else '–'}  (n={result['n']})")
        for name, sig in result.get("signatures", {}).items():
            console.print(f"  {name}: {sig}", highlight=False)
        if result.get("comet") is None and result.get("comet_note"):
            console.print(f"  COMET: {result['comet_note']}", style="dim", highlight=False)
    for name, values in (result.get("results") or {}).items():  # lm-eval
        shown = {k: v for k, v in values.items() if isinstance(v, int | float)}
        console.print(f"{name}: {shown}", highlight=False)


def _items(path: Path, field: str) -> list[str]:
    """Plain text (one item a line) or JSONL with `field` per line."""
    if path.suffix != ".jsonl":
        return read_lines(path)
    from trainer.textio import read_jsonl

    return [row[field] if isinstance(row, dict) else str(row) for row in read_jsonl(path)]


def score_files(task: str, predictions: Path, references: Path, per_item: Path | None) -> dict[str, Any]:
    from trainer import scores

    if task == "gsm8k":
        result = scores.gsm8k_scores(_items(predictions, "answer"), _items(references, "answer"))
    else:
        hyps, refs = read_lines(predictions), read_lines(references)
        result = scores.translation_scores(hyps, refs, comet=False)
        result["items"] = [{"index": i, "prediction": h, "reference": r}
                           for i, (h, r) in enumerate(zip(hyps, refs, strict=True))]
    if per_item:
        per_item.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in result["items"]),
                            encoding="utf-8")
    return result


def _show(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "items"}, indent=2, default=str))
    else:
        _print_scores(result)


def _check_task(task: str | None) -> None:
    if task not in (None, "gsm8k", "translation"):
        fail(f"--task {task!r}: use gsm8k or translation", 2)


def eval_run(target: str, task: str | None = None, stage: str | None = None, limit: int | None = None,
             max_new_tokens: int | None = None, lm_eval: str | None = None, test_file: Path | None = None,
             adapter: Path | None = None, backend: str = "auto", as_json: bool = False,
             store: str | None = None) -> None:
    """Generate with a model and score it on a test set, or run lm-eval harness tasks. TARGET is a run
    (scored on its bundle's test set; results stored with the run), or a model folder / Hub id with
    --test FILE."""
    from trainer import evaluate
    from trainer.run import Run

    _check_task(task)
    tasks = [t.strip() for t in lm_eval.split(",") if t.strip()] if lm_eval else []
    run = Run.find(target, resolve_store(store))
    if run is not None:
        stages = [stage or run.last_done_stage()]
        results: dict[str, dict[str, Any]] = {}
        with console.status(f"evaluating {run.run_id}/{stages[0]}"):
            if tasks:
                results[stages[0]] = evaluate.lm_eval_stage(run, stages[0], tasks, limit)
            else:
                evaluate.evaluate_run(run, stages, limit, backend, max_new_tokens,  # type: ignore[arg-type]
                                      lm_eval_tasks=[], on_result=results.__setitem__)
        result = results[stages[0]]
    else:
        if test_file is None and not tasks:
            fail(f"{target!r} is not a run in {resolve_store(store)}; for a model folder or Hub id pass --test FILE",
                 2)
        rows = evaluate.load_test_rows(test_file) if test_file else None
        with console.status(f"evaluating {target}"):
            if tasks:
                result = evaluate.run_lm_eval(target, adapter, tasks, limit=limit, test_rows=rows)
            else:
                result = evaluate.evaluate_model(target, adapter, rows or [], task or "gsm8k", limit=limit,
                                                 max_new_tokens=max_new_tokens or 256,
                                                 backend=backend)  # type: ignore[arg-type]
    _show(result, as_json)
    if not as_json and result.get("stored"):
        console.print(f"stored in {result['stored']}", style="dim")


def eval_score(task: str, predictions: Path, references: Path, per_item: Path | None = None,
               as_json: bool = False) -> None:
    """Score model outputs already written to files, offline: one item a line (or JSONL with `answer`)."""
    _check_task(task)
    for p in (predictions, references):
        if not p.is_file():
            fail(f"{p}: no such file", 2)
    try:
        result = score_files(task, predictions, references, per_item)
    except (ValueError, KeyError) as e:
        fail(f"cannot score: {e}", 2)
    _show(result, as_json)


def serve_up(run_ref: str, stage: str | None = None, merged: str | None = None, image: str | None = None,
             gpu: str | None = None, service_name: str | None = None, dry_run: bool = False,
             store: str | None = None, registry: str | None = None) -> None:
    """Serve a run's stage with SkyServe + vLLM: the base from the Hub plus the adapter from the store
    (or a merged model with --merged), the vLLM image from --registry / $FT_REGISTRY, the Hub token and
    AWS keys set here passed to the replicas as SkyPilot secrets. --dry-run prints the service YAML
    (secret names only) and launches nothing."""
    import yaml

    from jobs import images_ref, serve
    from trainer.errors import BadInput

    if image and registry:
        raise BadInput("--image names the whole image; --registry only picks the registry of the default one")
    image = image or serve.default_image(registry)  # a bad --registry / FT_REGISTRY fails here
    run = _run(run_ref, store)
    stage = stage or run.last_done_stage()
    envs = serve.service_envs(run, stage, merged)
    spec = run.spec
    problems = serve.check_envs(envs, serve.lora_rank_of(run, stage) if not merged else None,
                                spec.model.trust_remote_code)
    config = serve.service_config(envs, image, gpu or spec.resources.accelerators, spec.resources.use_spot)
    secrets = serve.service_secrets(config)  # BadInput for a partial docker login
    try:
        serve.to_task(config, secrets)  # SkyPilot's own validation, also on --dry-run
    except Exception as e:  # noqa: BLE001 - SkyPilot's schema errors: one line, bad input
        from jobs.launch import sky_reason

        raise BadInput(f"SkyPilot refused the service: {sky_reason(e)}") from None
    if dry_run:
        print(yaml.safe_dump(config, sort_keys=False))
        console.print("# vLLM: " + " ".join(serve.vllm_command(envs)), highlight=False, style="dim")
        console.print(f"# image: {image} (registry: {images_ref.registry_source(registry)})", highlight=False,
                      style="dim", markup=False, soft_wrap=True)
        console.print(f"# secrets: {', '.join(sorted(secrets)) or 'none set here'} (SkyPilot secrets; values "
                      "never printed)", highlight=False, style="dim", markup=False, soft_wrap=True)
        for p in problems:
            console.print(f"[yellow]warning:[/] {p}", highlight=False)
        return
    if problems:
        fail("cannot serve:\n  " + "\n  ".join(problems), 2)
    serve.launch(config, service_name or f"{spec.name}-{stage}", secrets)


def serve_check(url: str, prompt: str, model: str | None = None) -> None:
    """Send one chat request to an OpenAI-compatible endpoint (vLLM, SkyServe) and print the answer."""
    from jobs import serve

    try:
        result = serve.check_endpoint(url, prompt, model=model, api_key=os.environ.get("OPENAI_API_KEY"))
    except (ConnectionError, KeyError, ValueError) as e:
        fail(f"endpoint check failed: {e}", 75)
    console.print(f"{result['model']} answered in [bold]{result['latency_s'] * 1000:.0f} ms[/]:")
    console.print(result["answer"], highlight=False)


def chat(model_ref: str, stage: str | None = None, adapter: Path | None = None, mlx: bool = False,
         system: str | None = None, max_new_tokens: int = 256, store: str | None = None) -> None:
    """Chat with a model (a run's stage, a model folder or a Hub id) in the terminal."""
    from trainer import chat as chat_module
    from trainer.run import BASE_STAGE, Run

    base = model_ref
    run = Run.find(model_ref, resolve_store(store))
    if run is not None:
        stage = stage or run.last_done_stage()
        base = run.spec.model.base
        system = system or run.spec.data.system_prompt
        if stage != BASE_STAGE:
            adapter = run.model_dir(stage)
    if mlx and adapter and not (adapter / "adapters.safetensors").exists():
        fail("--mlx needs an MLX adapter (adapters.safetensors); PEFT adapters run without --mlx", 2)
    with console.status("loading model"):
        reply = chat_module.model_reply(base, adapter, mlx=mlx, max_new_tokens=max_new_tokens)
    console.print("[dim]/reset clears the conversation, /exit ends[/]")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat_module.chat_loop(reply, lambda: input("> "), write, system)


def _help(function: Any) -> str:
    """A docstring as one paragraph, so the terminal wraps it instead of keeping our line breaks."""
    return " ".join((function.__doc__ or "").split())


def register(app: typer.Typer) -> None:
    eval_app = typer.Typer(help="Score models: a run's stages or any model on a test set, lm-eval tasks, or "
                                "outputs already written.", no_args_is_help=True)
    serve_app = typer.Typer(help="Serve a run with SkyServe + vLLM, or check an OpenAI-compatible endpoint.",
                            no_args_is_help=True)
    app.add_typer(eval_app, name="eval")
    app.add_typer(serve_app, name="serve")
    _register_eval(eval_app)
    _register_serve(serve_app)
    _register_run_tools(app)


def _register_eval(eval_app: typer.Typer) -> None:
    @eval_app.command("run", help=_help(eval_run))
    def eval_run_cmd(
        target: str = typer.Argument(..., metavar="RUN_OR_MODEL"),
        task: str = typer.Option(None, "--task", help="gsm8k | translation (default: the run's spec)"),
        stage: str = STAGE_OPT,
        limit: int = typer.Option(None, "--limit", help="first N test items (stored apart from the full result)"),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens"),
        lm_eval: str = typer.Option(None, "--lm-eval", help="comma-separated lm-eval tasks (Hub tasks, or the "
                                    "local offline gsm8k_local)"),
        test_file: Path = typer.Option(None, "--test", help="test JSONL for a model (runs use their bundle's)"),
        adapter: Path = typer.Option(None, "--adapter", help="PEFT adapter on the model"),
        backend: str = typer.Option("auto", "--backend", help="auto | transformers | vllm"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
        store: str | None = STORE_OPT,
    ) -> None:
        eval_run(target, task, stage, limit, max_new_tokens, lm_eval, test_file, adapter, backend, as_json, store)

    @eval_app.command("score", help=_help(eval_score))
    def eval_score_cmd(
        task: str = typer.Option(..., "--task", help="gsm8k | translation"),
        predictions: Path = typer.Option(..., "--predictions", help="model outputs"),
        references: Path = typer.Option(..., "--references", help="references"),
        per_item: Path = typer.Option(None, "--per-item", help="write one JSON line per item here"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        eval_score(task, predictions, references, per_item, as_json)


def _register_serve(serve_app: typer.Typer) -> None:
    @serve_app.command("up", help=_help(serve_up))
    def serve_up_cmd(
        run_ref: str = typer.Argument(..., metavar="RUN"),
        stage: str = STAGE_OPT,
        merged: str = typer.Option(None, "--merged", help="serve this merged model (store URI) instead"),
        image: str = typer.Option(None, "--image", help="vLLM image (default: REGISTRY/ft-vllm:<content tag>)"),
        gpu: str = typer.Option(None, "--gpu", help="NAME[:COUNT], e.g. L4:1 (default: the spec's)"),
        service_name: str = typer.Option(None, "--name", help="service name (default: JOB-STAGE)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the service YAML, launch nothing"),
        store: str | None = STORE_OPT,
        registry: str = typer.Option(None, "--registry", help="registry of the vLLM image, e.g. ghcr.io/me "
                                     "(default: $FT_REGISTRY, else ghcr.io/llm-finetuning)"),
    ) -> None:
        serve_up(run_ref, stage, merged, image, gpu, service_name, dry_run, store, registry)

    @serve_app.command("check", help=_help(serve_check))
    def serve_check_cmd(
        url: str = typer.Argument(..., help="the endpoint, http://host:port"),
        prompt: str = typer.Option("What is 12 * 7? Answer with the number.", "--prompt"),
        model: str = typer.Option(None, "--model", help="model name (default: the last one listed)"),
    ) -> None:
        serve_check(url, prompt, model)


def _register_run_tools(app: typer.Typer) -> None:
    @app.command("merge")
    def merge_cmd(
        run_ref: str = typer.Argument(..., metavar="RUN"),
        out: str = typer.Option(..., "--out", help="local folder or store URI (s3://…)"),
        stage: str = STAGE_OPT,
        store: str | None = STORE_OPT,
    ) -> None:
        """Merge a stage's LoRA adapter into its base: safetensors + tokenizer for transformers and vLLM."""
        from trainer.merge import merge_run

        run = _run(run_ref, store)
        with console.status("merging"):
            where = merge_run(run, stage, out)
        console.print(f"merged model: {where}")

    @app.command("push")
    def push_cmd(
        run_ref: str = typer.Argument(..., metavar="RUN"),
        hub: str = typer.Option(..., "--hub", help="Hub repo id, e.g. you/korean-english-translator"),
        stage: str = STAGE_OPT,
        merged: bool = typer.Option(False, "--merged", help="push the merged model instead of the adapter"),
        private: bool = typer.Option(False, "--private"),
        license_id: str = typer.Option("apache-2.0", "--license"),
        out: Path = typer.Option(None, "--out", help="where to build the folder (default: outputs/hub/REPO)"),
        base_model_id: str = typer.Option(None, "--base-model-id", help="Hub id of the base, when model.base "
                                          "is a local folder"),
        dry_run: bool = typer.Option(False, "--dry-run", help="build the folder and card, upload nothing"),
        store: str | None = STORE_OPT,
    ) -> None:
        """Publish a stage's adapter (or merged model) to the Hugging Face Hub with a model card."""
        from trainer.publish import prepare_hub_folder, upload_folder

        run = _run(run_ref, store)
        folder = out or Path("outputs/hub") / hub.replace("/", "__")
        prepare_hub_folder(run, stage, folder, hub, merged=merged, license_id=license_id,
                           base_model_id=base_model_id)
        if dry_run:
            console.print(f"folder ready (not uploaded): {folder}")
            for p in sorted(folder.iterdir()):
                console.print(f"  {p.name}", highlight=False)
            return
        console.print(f"uploaded: {upload_folder(folder, hub, private=private)}")

    @app.command("chat")
    def chat_cmd(
        model_ref: str = typer.Argument(..., metavar="MODEL_OR_RUN"),
        stage: str = STAGE_OPT,
        adapter: Path = typer.Option(None, "--adapter", help="PEFT (or, with --mlx, MLX) adapter"),
        mlx: bool = typer.Option(False, "--mlx", help="generate with mlx-lm (Mac)"),
        system: str = typer.Option(None, "--system", help="system prompt (default: the run's)"),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
        store: str | None = STORE_OPT,
    ) -> None:
        """Chat with a model in the terminal; tokens stream as they come. /reset clears, /exit ends."""
        chat(model_ref, stage, adapter, mlx, system, max_new_tokens, store)

    @app.command("report")
    def report_cmd(
        run_ref: str = typer.Argument(..., metavar="RUN"),
        out: Path = typer.Option(None, "--out", help="also write the HTML here"),
        store: str | None = STORE_OPT,
    ) -> None:
        """Build the run's self-contained report.html (plots embedded) and store it with the run."""
        from trainer.report import write_report

        run = _run(run_ref, store)
        with console.status("rendering report"):
            url = write_report(run)
        if out:
            out.write_text(run.store.read_text(run.report), encoding="utf-8")
            console.print(f"report: {out}")
        console.print(f"stored: {url}")
