"""Running bundles here: `ft run BUNDLE` (in this process, exactly what the CUDA image runs as
`python -m trainer run`), `ft run BUNDLE --docker` (in the GPU image on this machine), and `ft demo`,
the whole flow offline on a CPU with the built-in model (its steps: jobs/demo.py)."""

from __future__ import annotations

import typer
from rich.markup import escape

from jobs.console import check_store, console, err_console, resolve_store, store_option
from mac.cli import overrides_argument
from trainer.errors import BadInput


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
    task: str = typer.Option("math", "--task", help="math (GSM8K SFT → DPO → GRPO) or translation (ko→en SFT → "
                             "GRPO with a chrF reward)"),
    store: str | None = store_option("artifact store (default: $FT_STORE, else ./outputs/store)"),
    fresh: bool = typer.Option(False, "--fresh", help="a new run id instead of continuing the last demo run"),
) -> None:
    """The whole flow on the built-in model, offline on a CPU, from data to the serving plan.

    Prepares the shipped sample, validates configs/demo.yaml (configs/demo_translation.yaml with --task
    translation; KEY=VALUE overrides apply), prototypes with mlx-lm, converts its adapter to PEFT, freezes
    the bundle with it, trains every stage on SmolLM2-135M starting from the prototype's adapter, evaluates
    the base model, the prototype and every stage, merges the last stage, prints the SkyServe task that
    would serve it, and writes the report. Run it again and the finished stages are skipped.
    """
    from jobs.demo import Demo, run_demo, task_named

    chosen = task_named(task)
    run_demo(Demo(chosen, resolve_store(store), list(overrides or ()), fresh, console))


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
