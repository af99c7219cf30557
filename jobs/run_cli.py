"""Running bundles here: `ft run BUNDLE` (in this process, exactly what the CUDA image runs as
`python -m trainer run`), `ft run BUNDLE --docker` (in the GPU image on this machine), and `ft demo`,
the whole flow offline on a CPU with the built-in model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from jobs.console import check_store, console, err_console, resolve_store, store_option
from mac.cli import overrides_argument
from mac.data_prep import DEMO_SAMPLE, prepare_demo_data
from trainer.errors import BadInput

DEMO_CONFIG = Path("configs/demo.yaml")


def run(
    bundle: str = typer.Argument(..., help="bundle folder or store URI"),
    docker: bool = typer.Option(False, "--docker", help="run the GPU image on this machine instead"),
    devices: str = typer.Option(None, "--devices", help="with --docker: the GPUs, `all`, ids (`0,1`) or `none` "
                                "(default: all when the host has GPUs)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the command instead of running it"),
    stage: str = typer.Option(None, "--stage", help="run only this stage"),
    run_id: str = typer.Option(None, "--run-id", help="default: $SKYPILOT_TASK_ID, else a new id"),
    store: str = typer.Option(None, "--store", help="artifact store (default: $FT_STORE, else the spec's store.uri)"),
) -> None:
    """Run a bundle's stages on this machine, in this process or (--docker) in the GPU image.

    In this process it is exactly what the CUDA image runs (`python -m trainer run`): the bundle verified
    first, each stage resumed from its newest checkpoint, finished stages skipped. The trainer's exit code
    is passed through (0 ok, 2 bad input, 3 stopped at the budget, 75 retryable).
    """
    if devices and not docker:
        raise BadInput("--devices selects the GPUs of --docker; without --docker the trainer uses what it sees")
    if store:
        check_store(store)
    if docker:
        from images.docker_run import default_devices, format_docker_command, run_in_docker, run_request

        if devices is None:  # every GPU the host has (nvidia-smi -L, docker's info), and say which
            devices, note = default_devices()
            err_console.print(escape(note) if devices else f"[yellow]note:[/] {escape(note)}", highlight=False)
        request = run_request(bundle, devices, stage=stage, run_id=run_id, store=store)
        if dry_run:
            print(format_docker_command(request))
            return
        raise typer.Exit(run_in_docker(request))
    argv = ["run", bundle] + (["--stage", stage] if stage else []) + (["--run-id", run_id] if run_id else []) \
        + (["--store", store] if store else [])
    if dry_run:
        print(" ".join(["python", "-m", "trainer", *argv]))
        return
    from trainer.pipeline import main

    raise typer.Exit(main(argv))


def demo(
    overrides: list[str] | None = overrides_argument(),
    store: str | None = store_option("artifact store (default: $FT_STORE, else ./outputs/store)"),
    fresh: bool = typer.Option(False, "--fresh", help="a new run id instead of continuing the last demo run"),
) -> None:
    """The main job on the built-in model, offline on a CPU, from data to report.

    Prepares the bundled GSM8K sample, validates and freezes configs/demo.yaml (with any KEY=VALUE
    overrides), trains SFT → DPO → GRPO on SmolLM2-135M, evaluates the base model and every stage, and
    writes the report. Run it again and the finished stages are skipped.
    """
    from mac.freeze import FreezeRefused, freeze
    from trainer.pipeline import run_bundle

    if not DEMO_CONFIG.is_file() or not DEMO_SAMPLE.is_dir():
        raise BadInput(f"{DEMO_CONFIG} or {DEMO_SAMPLE} not found: run `ft demo` (or `make demo`) from the "
                       "repository root")
    store = resolve_store(store)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()
    console.rule("[bold]1/6 data[/]: the bundled GSM8K sample → SFT rows, DPO pairs, GRPO prompts")
    prep = prepare_demo_data()
    console.print(", ".join(f"{k}: {v}" for k, v in prep.counts.items()))

    console.rule(f"[bold]2/6 validate and 3/6 bundle[/] {DEMO_CONFIG}")
    try:
        frozen = freeze(DEMO_CONFIG, overrides or ())
    except FreezeRefused as e:
        for f in (e.report.spec_findings + [f for r in e.report.files for f in r.findings])[:20]:
            console.print(str(f), style="red", markup=False, highlight=False)
        raise
    report, bundle = frozen.report, frozen.bundle
    console.print(f"{sum(r.rows for r in report.files)} rows in {len(report.files)} files: "
                  f"{report.errors} errors, {report.warnings} warnings")
    console.print(f"bundle {bundle.bundle_id[:12]} → {bundle.path}")

    console.rule("[bold]4/6 train[/]: SFT → DPO → GRPO (LoRA, CPU)")
    run_id = f"demo-{bundle.bundle_id[:8]}" + (f"-{int(time.time())}" if fresh else "")
    layout = run_bundle(str(bundle.path), run_id=run_id, store_uri=store)
    _record_cloud_estimate(layout, report.spec)

    console.rule("[bold]5/6 evaluate[/]: GSM8K accuracy, base model vs each stage")
    from trainer.evaluate import evaluate_run

    comparison = evaluate_run(layout, on_result=lambda stage, result: console.print(
        f"{stage:>6}: GSM8K accuracy {result['accuracy']:.1%} (n={result['n']})"))

    console.rule("[bold]6/6 report[/]")
    from trainer.report import write_report

    report_uri = write_report(layout)

    table = Table(title=f"demo run {layout.run_id}")
    for col in ("stage", "steps", "loss (first 3 → last 3 steps)", "reward mean", "GSM8K accuracy"):
        table.add_column(col)
    record = layout.read_record()
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
        f"Next: ft eval run {layout.store.url(layout.root)} · ft merge … · ft launch configs/math_gsm8k.yaml",
        title="done"))


def _record_cloud_estimate(run, spec) -> None:
    """A local run costs nothing; the report shows beside it what the same job would cost in the cloud."""
    from jobs.pricing import cheapest_job_estimate

    estimate = cheapest_job_estimate(spec, DEMO_CONFIG.parent)
    record = run.read_record()
    if record:
        record.setdefault("cost", {})["estimate"] = estimate
        run.write_record(record)


def _first_last(values: list[float], fmt: str) -> str:
    """Mean of the first and of the last three values: single steps are too noisy to compare."""
    if not values:
        return "-"
    k = min(3, len(values))
    return f"{fmt.format(sum(values[:k]) / k)} → {fmt.format(sum(values[-k:]) / k)}"


def _train_logs(run, stage: str) -> list[dict]:
    return [row for row in run.read_jsonl(run.metrics(stage)) if not row.get("final")]


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
