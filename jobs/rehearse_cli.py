"""`ft rehearse CONFIG`: the cloud job, tried here before paying for it (jobs/rehearse.py does the work).

The spec with its model swapped for a tiny random model of the same architecture, a few rows of each
data file and a few steps per stage; the job YAML's own run text on N local "nodes"; a preemption
injected with --preempt; a verdict per step."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer
from rich.table import Table

from jobs.console import console, store_option
from mac.cli import overrides_argument
from trainer.errors import FtError

JOBS = ("pipeline", "sft", "dpo", "grpo")


def rehearse(
    config: Path = typer.Argument(..., help="job spec (YAML)"),
    overrides: list[str] | None = overrides_argument(),
    nodes: int = typer.Option(2, "--nodes", min=1, max=4, help="local \"nodes\" (process trees, gloo on 127.0.0.1)"),
    preempt: bool = typer.Option(False, "--preempt", help="kill every node at the first sealed checkpoint, "
                                                          "then start them again as SkyPilot's recovery does"),
    job: str = typer.Option("pipeline", "--job", help=f"the job YAML to rehearse: {', '.join(JOBS)}"),
    rows: int = typer.Option(16, "--rows", min=4, help="rows kept of each data file"),
    store: str | None = store_option("store for the rehearsal's bundle and run (default: a scratch folder; "
                                     "an s3:// store is used under a rehearsal-<time> prefix)"),
    work: Path | None = typer.Option(None, "--work", help="scratch folder (default: a new temporary one)"),
) -> None:
    """Rehearse the cloud job on this machine: entry point, rendezvous, checkpoint upload, resume, eval,
    report and secrets, in a few minutes on a CPU."""
    from jobs.launch import JOBS_DIR
    from jobs.rehearse import PROBE_SECRETS, Rehearsal, shrunk_spec, tiny_model, verdicts
    from trainer.bundle import push_bundle, write_bundle
    from trainer.run import Run
    from trainer.spec import load_spec
    from trainer.store import open_store

    if job not in JOBS:
        raise typer.BadParameter(f"one of {', '.join(JOBS)}", param_hint="--job")
    spec = load_spec(config, overrides or ())
    work = Path(work or tempfile.mkdtemp(prefix="ft-rehearse-")).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    store_uri = f"{store.rstrip('/')}/rehearsal-{stamp}" if store else str(work / "store")
    console.rule(f"[bold]rehearse[/] {config} → jobs/{job}.yaml on {nodes} node(s){', preempted' if preempt else ''}")
    model = tiny_model(spec.model.base, work / "tiny-model")
    console.print(f"model     {spec.model.base} → a random 2-layer copy of its architecture ({model})")
    job_yaml = shrunk_spec(spec, Path(config).resolve().parent, model, work / "job", rows, nodes)
    bundle = write_bundle(load_spec(job_yaml), job_yaml.parent, work / "bundles")
    bundle_uri = push_bundle(bundle, store_uri, progress=False)
    console.print(f"bundle    {bundle_uri}")
    first = bundle.spec.stages[0].stage_name if job == "pipeline" else job
    env = {"BUNDLE": bundle_uri, "FT_STORE": store_uri, "FT_LEASE_TTL_S": "3", "FT_LEASE_WAIT_S": "60"}
    if job != "pipeline":
        env["STAGE"] = job
    rehearsal = Rehearsal(JOBS_DIR / f"{job}.yaml", work / "nodes", nodes=nodes, task_id=f"rehearsal-{stamp}",
                          env=env, secrets=PROBE_SECRETS)
    run = Run.in_store(open_store(store_uri), rehearsal.task_id)
    with console.status(f"{nodes} node(s) running jobs/{job}.yaml …"):
        if preempt:
            rehearsal.start(fault="hold-after-checkpoint=2", until=lambda: 2 in run.complete_checkpoints(first))
        rehearsal.start()
    table = Table(title=f"rehearsal of jobs/{job}.yaml ({run.url()})")
    for col in ("step", "verdict", "detail"):
        table.add_column(col)
    results = verdicts(rehearsal, run, first, preempt)
    for v in results:
        table.add_row(v.step, "[green]ok[/]" if v.ok else "[red]FAILED[/]", v.detail)
    console.print(table)
    console.print(f"node logs under {rehearsal.work}")
    if not all(v.ok for v in results):
        raise FtError("the rehearsal failed: see the steps above and the node logs")


def register(app: typer.Typer) -> None:
    app.command("rehearse")(rehearse)
