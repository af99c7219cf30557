"""Evaluation, merging, serving, publishing and reporting commands, registered on the `ft` app:
`ft eval`, `ft eval score`, `ft merge`, `ft serve`, `ft serve check`, `ft push`, `ft chat`, `ft report`.

RUN is `s3://…/runs/<id>`, a local `<store>/runs/<id>` folder, or a bare run id with `--store`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from jobs.console import console, fail, resolve_store, store_option
from trainer.textio import read_lines

STORE_OPT = store_option()
STAGE_OPT = typer.Option(None, "--stage", "-s", help="stage name, `base` or `prototype` (default: last done)")


def _run(ref: str, store: str):
    from trainer.run_refs import parse_run_ref

    try:
        return parse_run_ref(ref, store)
    except ValueError as e:
        fail(str(e), 2)
        raise  # unreachable: fail exits


def _print_scores(result: dict[str, Any]) -> None:
    if result.get("task") == "gsm8k":
        console.print(f"GSM8K accuracy: [bold]{100 * result['accuracy']:.1f}%[/] "
                      f"({result['correct']}/{result['n']}; no answer found in {result['no_answer']})")
    else:
        console.print(f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  TER {result['ter']:.2f}  "
                      f"COMET {result['comet'] if result.get('comet') is not None else '–'}  (n={result['n']})")
        for name, sig in result.get("signatures", {}).items():
            console.print(f"  {name}: {sig}", highlight=False)
        if result.get("comet") is None and result.get("comet_note"):
            console.print(f"  COMET: {result['comet_note']}", style="dim", highlight=False)


def _read_lines_or_jsonl(path: Path, field: str) -> list[str]:
    """Plain text (one item a line) or JSONL with `field` per line."""
    out = []
    for line in read_lines(path):
        if path.suffix == ".jsonl":
            if line.strip():
                row = json.loads(line)
                out.append(row[field] if isinstance(row, dict) else str(row))
        else:
            out.append(line)
    return out


def score_files(task: str, predictions: Path, references: Path, per_item: Path | None) -> dict[str, Any]:
    from trainer import metrics

    if task == "gsm8k":
        preds = _read_lines_or_jsonl(predictions, "answer")
        refs = _read_lines_or_jsonl(references, "answer")
        result = metrics.gsm8k_scores(preds, refs)
    else:
        hyps, refs = read_lines(predictions), read_lines(references)
        result = metrics.translation_scores(hyps, refs, comet=False)
        result["items"] = [{"index": i, "prediction": h, "reference": r} for i, (h, r) in enumerate(zip(hyps, refs,
                                                                                                        strict=True))]
    if per_item:
        per_item.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in result["items"]),
                            encoding="utf-8")
    return result


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        target: str = typer.Argument(..., help="RUN, a model folder / Hub id, or `score` to score files"),
        task: str = typer.Option(None, "--task", help="gsm8k | translation (default: the run's spec)"),
        stage: str = STAGE_OPT,
        limit: int = typer.Option(None, "--limit", help="first N test items"),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens"),
        lm_eval_tasks: str = typer.Option(None, "--lm-eval", help="comma-separated lm-eval tasks "
                                          "(Hub tasks, or local offline: gsm8k_local)"),
        test_file: Path = typer.Option(None, "--test", help="test JSONL for a model (runs use their bundle's)"),
        adapter: Path = typer.Option(None, "--adapter", help="PEFT adapter on the model"),
        backend: str = typer.Option("auto", "--backend", help="auto | transformers | vllm"),
        predictions: Path = typer.Option(None, "--predictions", help="`score`: model outputs"),
        references: Path = typer.Option(None, "--references", help="`score`: references"),
        per_item: Path = typer.Option(None, "--per-item", help="`score`: write one JSON line per item here"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
        store: str | None = STORE_OPT,
    ) -> None:
        """Generate with a model and score it (`ft eval RUN --stage sft`), run lm-eval tasks
        (`--lm-eval gsm8k`), or score existing outputs offline (`ft eval score --task gsm8k
        --predictions P --references R`)."""
        store = resolve_store(store)
        if task not in (None, "gsm8k", "translation"):
            fail(f"--task {task!r}: use gsm8k or translation", 2)
        if target == "score":
            if not (task and predictions and references):
                fail("ft eval score needs --task, --predictions and --references", 2)
            for p in (predictions, references):
                if not p.is_file():
                    fail(f"{p}: no such file")
            try:
                result = score_files(task, predictions, references, per_item)
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                fail(f"cannot score: {e}")
            if as_json:
                print(json.dumps({k: v for k, v in result.items() if k != "items"}, indent=2))
            else:
                _print_scores(result)
            return
        _eval_target(target, task, stage, limit, max_new_tokens, lm_eval_tasks, test_file, adapter, backend,
                     as_json, store)

    def _eval_target(target: str, task: str | None, stage: str | None, limit: int | None,
                     max_new_tokens: int | None, lm_eval_tasks: str | None, test_file: Path | None,
                     adapter: Path | None, backend: str, as_json: bool, store: str) -> None:
        from trainer import evaluate
        from trainer.run_refs import is_run_ref, last_done_stage, load_run

        tasks = [t.strip() for t in lm_eval_tasks.split(",") if t.strip()] if lm_eval_tasks else []
        if is_run_ref(target, store):
            run = _run(target, store)
            info = load_run(run)
            stage = stage or last_done_stage(info)
            with console.status(f"evaluating {run.run_id}/{stage}"):
                if tasks:
                    result = evaluate.lm_eval_stage(run.store_uri, run.run_id, stage, tasks, limit)
                else:
                    result = evaluate.evaluate_stage(run.store_uri, run.run_id, stage, limit, max_new_tokens,
                                                     backend=backend)  # type: ignore[arg-type]
            where = run.store.url(f"{run.prefix}/eval/")
        else:
            if test_file is None and not tasks:
                fail(f"{target!r} is not a run in {store}; for a model folder or Hub id pass --test FILE")
            rows = evaluate.load_test_rows(test_file) if test_file else None
            with console.status(f"evaluating {target}"):
                if tasks:
                    result = evaluate.run_lm_eval(target, adapter, tasks, limit=limit, test_rows=rows)
                else:
                    result = evaluate.evaluate_model(target, adapter, rows or [], task or "gsm8k", limit=limit,
                                                     max_new_tokens=max_new_tokens or 256,
                                                     backend=backend)  # type: ignore[arg-type]
            where = None
        if as_json:
            print(json.dumps({k: v for k, v in result.items() if k != "items"}, indent=2, default=str))
            return
        if tasks:
            for name, values in (result.get("results") or {}).items():
                shown = {k: v for k, v in values.items() if isinstance(v, int | float)}
                console.print(f"{name}: {shown}", highlight=False)
        else:
            _print_scores(result)
        if where:
            console.print(f"stored in {where}", style="dim")

    @app.command("merge")
    def merge_cmd(
        run_ref: str = typer.Argument(..., metavar="RUN"),
        out: str = typer.Option(..., "--out", help="local folder or store URI (s3://…)"),
        stage: str = STAGE_OPT,
        store: str | None = STORE_OPT,
    ) -> None:
        """Merge a stage's LoRA adapter into its base: safetensors + tokenizer for transformers and vLLM."""
        store = resolve_store(store)
        from trainer.merge import merge_run

        run = _run(run_ref, store)
        try:
            with console.status("merging"):
                where = merge_run(run, stage, out)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        console.print(f"merged model: {where}")

    @app.command("serve")
    def serve_cmd(
        target: str = typer.Argument(..., metavar="RUN | check", help="a run to serve, or `check`"),
        url: str = typer.Argument(None, help="`check`: the endpoint (http://host:port)"),
        stage: str = STAGE_OPT,
        merged: str = typer.Option(None, "--merged", help="serve this merged model (store URI) instead"),
        image: str = typer.Option(None, "--image", help="vLLM image (default: ft-vllm:<content tag>)"),
        accelerators: str = typer.Option(None, "--gpus", help="e.g. L4:1 (default: the spec's, else a list)"),
        service_name: str = typer.Option(None, "--name"),
        prompt: str = typer.Option("What is 12 * 7? Answer with the number.", "--prompt"),
        model: str = typer.Option(None, "--model", help="`check`: model name (default: the last listed)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the service YAML, launch nothing"),
        store: str | None = STORE_OPT,
    ) -> None:
        """Serve a run with SkyServe + vLLM (`ft serve RUN [--dry-run]`), or send one chat request to an
        OpenAI-compatible endpoint (`ft serve check URL`)."""
        store = resolve_store(store)
        import os

        import yaml

        from jobs import serve

        if target == "check":
            if not url:
                fail("ft serve check needs a URL", 2)
            try:
                result = serve.check_endpoint(url, prompt, model=model, api_key=os.environ.get("OPENAI_API_KEY"))
            except (ConnectionError, KeyError, ValueError) as e:
                fail(f"endpoint check failed: {e}")
            console.print(f"{result['model']} answered in [bold]{result['latency_s'] * 1000:.0f} ms[/]:")
            console.print(result["answer"], highlight=False)
            return
        from trainer.run_refs import last_done_stage, load_run, run_spec

        run = _run(target, store)
        try:
            info = load_run(run)
            stage = stage or last_done_stage(info)
            envs = serve.service_envs(info, run.store_uri, stage, merged)
        except (FileNotFoundError, ValueError, KeyError) as e:
            fail(str(e))
        spec = run_spec(info)
        problems = serve.check_envs(envs, serve.lora_rank_of(run, info, stage) if not merged else None,
                                    spec.model.trust_remote_code)
        config = serve.service_config(envs, image or serve.default_image(),
                                      accelerators or spec.resources.accelerators, spec.resources.use_spot)
        if dry_run:
            print(yaml.safe_dump(config, sort_keys=False))
            console.print("# vLLM: " + " ".join(serve.vllm_command(envs)), highlight=False, style="dim")
            for p in problems:
                console.print(f"[yellow]warning:[/] {p}", highlight=False)
            return
        if problems:
            fail("cannot serve:\n  " + "\n  ".join(problems))
        serve.launch(config, service_name or f"{spec.name}-{stage}")

    @app.command("push")
    def push_cmd(
        run_ref: str = typer.Argument(..., metavar="RUN"),
        hub: str = typer.Option(..., "--hub", help="Hub repo id, e.g. you/korean-english-translator"),
        stage: str = STAGE_OPT,
        merged: bool = typer.Option(False, "--merged", help="push the merged model instead of the adapter"),
        private: bool = typer.Option(False, "--private"),
        license_id: str = typer.Option("apache-2.0", "--license"),
        out: Path = typer.Option(None, "--out", help="where to build the folder (default outputs/hub/<repo>)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="build the folder and card, upload nothing"),
        store: str | None = STORE_OPT,
    ) -> None:
        """Publish a stage's adapter (or merged model) to the Hugging Face Hub with a model card."""
        store = resolve_store(store)
        from trainer.publish import prepare_hub_folder, upload_folder

        run = _run(run_ref, store)
        folder = out or Path("outputs/hub") / hub.replace("/", "__")
        try:
            prepare_hub_folder(run, stage, folder, hub, merged=merged, license_id=license_id)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
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
        store = resolve_store(store)
        from trainer import chat
        from trainer.run_refs import is_run_ref, last_done_stage, load_run, stage_model_dir

        base = model_ref
        if is_run_ref(model_ref, store):
            run = _run(model_ref, store)
            info = load_run(run)
            stage = stage or last_done_stage(info)
            base = info["spec"]["model"]["base"]
            system = system or info["spec"]["data"].get("system_prompt")
            if stage != "base":
                adapter = stage_model_dir(run, info, stage)
        if mlx:
            if adapter and not (adapter / "adapters.safetensors").exists():
                fail("--mlx needs an MLX adapter (adapters.safetensors); PEFT adapters run without --mlx")

            def reply(messages: list[dict[str, str]]) -> Any:
                return chat.stream_mlx(base, adapter, messages, max_new_tokens)
        else:
            from trainer.models import load_model_for_inference, load_tokenizer

            with console.status("loading model"):
                model = load_model_for_inference(base, adapter)
                tok_src = str(adapter) if adapter and (adapter / "tokenizer_config.json").exists() else base
                tokenizer = load_tokenizer(tok_src)

            def reply(messages: list[dict[str, str]]) -> Any:
                return chat.stream_transformers(model, tokenizer, messages, max_new_tokens)

        console.print("[dim]/reset clears the conversation, /exit ends[/]")

        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        chat.chat_loop(reply, lambda: input("> "), write, system)

    @app.command("report")
    def report_cmd(
        run_ref: str = typer.Argument(..., metavar="RUN"),
        out: Path = typer.Option(None, "--out", help="also write the HTML here"),
        store: str | None = STORE_OPT,
    ) -> None:
        """Build the run's self-contained report.html (plots embedded) and store it with the run."""
        store = resolve_store(store)
        from trainer.report import REPORT_KEY, write_report

        run = _run(run_ref, store)
        try:
            with console.status("rendering report"):
                url = write_report(run)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        if out:
            out.write_text(run.store.read_text(f"{run.prefix}/{REPORT_KEY}"), encoding="utf-8")
            console.print(f"report: {out}")
        console.print(f"stored: {url}")
