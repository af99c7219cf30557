"""Running bundles: `ft train` (in this process), `ft run --local|--docker`, and `ft demo`, the whole
flow offline on a CPU with the built-in model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.panel import Panel
from rich.table import Table

from jobs.console import console, fail

DEMO_CONFIG = Path("configs/demo.yaml")
DEMO_SAMPLE = Path("data/samples/gsm8k")
DEMO_DATA = Path("data/processed/demo")


def prepare_demo_data(root: Path = Path(".")):
    """The data `configs/demo.yaml` names: the bundled GSM8K sample, prepared as `ft data prepare` does."""
    from mac.data_prep import prepare_math

    return prepare_math(str(root / DEMO_SAMPLE), root / DEMO_DATA, limit=200, test_limit=50)


def train(
    bundle: str = typer.Argument(..., help="bundle folder or store URI"),
    stage: str = typer.Option(None, help="run only this stage"),
    run_id: str = typer.Option(None, help="default: $SKYPILOT_TASK_ID, else a new id"),
    store: str = typer.Option(None, help="artifact store (default: $FT_STORE, else the spec's store.uri)"),
) -> None:
    """Run a bundle's stages in this process (what the CUDA image runs as `python -m trainer run`)."""
    from jobs.console import check_store, report_error
    from trainer.run import main

    if store:
        check_store(store)
    argv = ["run", bundle] + (["--stage", stage] if stage else []) + (["--run-id", run_id] if run_id else []) \
        + (["--store", store] if store else [])
    try:
        code = main(argv)
    except Exception as e:  # the Hub, the network: one line and 2 or 75, never a traceback and 1
        code = report_error(e)
        if code is None:
            raise
    raise typer.Exit(code)


def run(
    bundle: str = typer.Argument(..., help="bundle folder or store URI"),
    local: bool = typer.Option(False, "--local", help="run `python -m trainer` as a subprocess here"),
    docker: bool = typer.Option(False, "--docker", help="run the GPU image on this machine"),
    gpus: str = typer.Option(None, help="with --docker: `all`, or device ids (`0,1`)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the command instead of running it"),
    stage: str = typer.Option(None, help="run only this stage"),
    run_id: str = typer.Option(None, help="default: $SKYPILOT_TASK_ID, else a new id"),
    store: str = typer.Option(None, help="artifact store (default: $FT_STORE, else the spec's store.uri)"),
) -> None:
    """Run a bundle on this machine: a subprocess (--local) or the GPU image (--docker). The
    trainer's exit code is passed through (0 ok, 2 bad input, 75 retryable)."""
    if local == docker:
        fail("choose one of --local or --docker", 2)
    extra = (["--stage", stage] if stage else []) + (["--run-id", run_id] if run_id else []) \
        + (["--store", store] if store else [])
    if docker:
        from images.docker_run import DockerRunError, format_docker_command, run_in_docker, run_request

        try:
            request = run_request(bundle, gpus, stage=stage, run_id=run_id, store=store)
            if dry_run:
                print(format_docker_command(request))
                return
            code = run_in_docker(request)
        except DockerRunError as e:
            fail(str(e), 2)
        raise typer.Exit(code)
    cmd = [sys.executable, "-m", "trainer", "run", bundle, *extra]
    if dry_run:
        print(" ".join(cmd))
        return
    raise typer.Exit(subprocess.call(cmd))


def demo(
    store: str = typer.Option("./outputs/store", help="local artifact store"),
    fresh: bool = typer.Option(False, "--fresh", help="a new run id instead of continuing the last demo run"),
) -> None:
    """The main job on the embedded default, offline on a CPU: prepare the bundled GSM8K sample,
    validate, bundle, SFT → DPO → GRPO on SmolLM2-135M, evaluate, report."""
    from mac.validate_job import validate_job
    from trainer.bundle import write_bundle
    from trainer.run import run_bundle

    if not DEMO_CONFIG.is_file() or not DEMO_SAMPLE.is_dir():
        fail(f"{DEMO_CONFIG} or {DEMO_SAMPLE} not found: run `ft demo` (or `make demo`) from the repository root", 2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()
    console.rule("[bold]1/6 data[/]: the bundled GSM8K sample → SFT rows, DPO pairs, GRPO prompts")
    prep = prepare_demo_data()
    console.print(", ".join(f"{k}: {v}" for k, v in prep.counts.items()))

    console.rule(f"[bold]2/6 validate[/] {DEMO_CONFIG}")
    report = validate_job(DEMO_CONFIG)
    console.print(f"{sum(r.rows for r in report.files)} rows in {len(report.files)} files: "
                  f"{report.errors} errors, {report.warnings} warnings")
    if report.errors:
        for f in report.spec_findings + [f for r in report.files for f in r.findings][:20]:
            console.print(f"[red]{f}[/]")
        fail("the demo spec or data failed validation")

    console.rule("[bold]3/6 bundle[/]")
    bundle = write_bundle(report.spec, DEMO_CONFIG.parent, Path("outputs/bundles"),
                          prototype_dir=Path("outputs/mlx") / report.spec.name)
    console.print(f"bundle {bundle.bundle_id[:12]} → {bundle.path}")

    console.rule("[bold]4/6 train[/]: SFT → DPO → GRPO (LoRA, CPU)")
    run_id = f"demo-{bundle.bundle_id[:8]}" + (f"-{int(time.time())}" if fresh else "")
    layout = run_bundle(str(bundle.path), run_id=run_id, store_uri=store)

    console.rule("[bold]5/6 evaluate[/]: GSM8K accuracy, base model vs each stage")
    from trainer.evaluate import evaluate_stage, write_comparison

    for stage in ["base"] + [s.stage_name for s in report.spec.stages]:
        result = evaluate_stage(layout.store.uri, layout.run_id, stage)
        console.print(f"{stage:>6}: GSM8K accuracy {result['accuracy']:.1%} (n={result['n']})")
    comparison = write_comparison(layout.store.uri, layout.run_id)

    console.rule("[bold]6/6 report[/]")
    from trainer.report import write_report
    from trainer.run_refs import RunRef

    report_uri = write_report(RunRef(layout.store.uri, layout.run_id))

    table = Table(title=f"demo run {layout.run_id}")
    for col in ("stage", "steps", "loss (first 3 → last 3 steps)", "reward mean", "GSM8K accuracy"):
        table.add_column(col)
    record = layout.read_run()
    for row in comparison["rows"]:
        stage = record["stages"].get(row["stage"], {})
        logs = _train_logs(layout, row["stage"]) if stage else []
        losses = [m["loss"] for m in logs if "loss" in m]
        rewards = [m["reward_mean"] for m in logs if "reward_mean" in m]
        table.add_row(row["stage"], str(stage.get("steps", "-")),
                      _first_last(losses, "{:.4g}"), _first_last(rewards, "{:.3f}"),
                      f"{row.get('accuracy') or 0:.1%} (n={row.get('n')})")
    console.print(table)
    console.print(Panel.fit(
        f"store     {layout.store.uri}\nrun       {layout.store.url(layout.root)}\nreport    {report_uri}\n"
        f"bundle    {bundle.path}\ntook      {time.time() - started:.0f} s\n\n"
        "A 135M model after a handful of CPU steps is not expected to solve GSM8K: the demo shows the flow.\n"
        f"Next: ft eval {layout.store.url(layout.root)} --task gsm8k · ft merge … · ft launch configs/math_gsm8k.yaml",
        title="done"))


def _first_last(values: list[float], fmt: str) -> str:
    """Mean of the first and of the last three values: single steps are too noisy to compare."""
    if not values:
        return "-"
    k = min(3, len(values))
    return f"{fmt.format(sum(values[:k]) / k)} → {fmt.format(sum(values[-k:]) / k)}"


def _train_logs(layout, stage: str) -> list[dict]:
    import json

    from trainer.textio import lines

    try:
        text = layout.store.read_text(layout.metrics(stage))
    except FileNotFoundError:
        return []
    return [row for row in map(json.loads, lines(text)) if not row.get("final")]


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("run")(run)
    app.command("demo")(demo)
