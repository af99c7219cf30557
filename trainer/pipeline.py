"""Run a bundle's stages: pull and verify the bundle, then for each stage resume from the newest
complete checkpoint in the store (or skip the stage when its final output is complete), train with
the stage's recipe, and put the final adapter, metrics and TensorBoard logs in the store.

Exit codes (documented in the README; SkyPilot's `job_recovery.recover_on_exit_codes` names 75):
    0   success
    2   bad input: bundle, spec, data or a setting this machine cannot honour; not worth a retry
    75  retryable infrastructure failure: the store was unreachable, …
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from trainer import settings
from trainer.bundle import Bundle, fetch_bundle
from trainer.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRYABLE, BadInput, Stopped
from trainer.lease import RunLease
from trainer.preemption import PreemptionGuard
from trainer.run import Run, new_run_id
from trainer.spec import StageBase
from trainer.store import open_store
from trainer.textio import read_jsonl

console = Console(stderr=True)


def _state():
    """The process's place in an `accelerate launch` group. On a machine without CUDA it must be asked
    for the CPU backend (gloo): plain PartialState() there reports every rank as the main process."""
    from accelerate import PartialState

    from trainer.models import has_cuda

    return PartialState(cpu=not has_cuda())


def _init_from(run: Run, bundle: Bundle, stage: StageBase, previous: str | None, work: Path) -> Path | None:
    if previous is not None:
        return run.fetch_dir(run.final(previous), work / previous / "final")
    if getattr(stage, "init_adapter", None) == "prototype":
        if bundle.prototype_adapter is None:
            raise BadInput(f"stages: {stage.stage_name} has init_adapter: prototype, but the bundle has no "
                             "prototype adapter (run `ft prototype` before `ft bundle`)")
        return bundle.prototype_adapter
    return None


def _stored_rows(run: Run, stage: str, work: Path, state) -> Callable[[Callable[[], list[dict]]], list[dict]]:
    """Rows a stage makes for itself (on-policy DPO pairs): made once by the main process, stored
    marker last, and read back from the store by every rank and by every later attempt, so a resumed
    or re-run stage trains on exactly the same rows."""

    def get(make: Callable[[], list[dict]]) -> list[dict]:
        key = run.on_policy_pairs(stage)
        local = work / stage / "on_policy_pairs"
        if not run.store.is_complete(key):
            if state.is_main_process:
                rows = make()
                fresh = work / stage / "on_policy_pairs.new"
                shutil.rmtree(fresh, ignore_errors=True)
                fresh.mkdir(parents=True)
                (fresh / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                   encoding="utf-8")
                run.store.upload_dir(fresh, key, progress=False)
                shutil.rmtree(fresh, ignore_errors=True)
            state.wait_for_everyone()
        else:
            console.print(f"[bold]{stage}[/]: using the on-policy pairs sampled before ({run.store.url(key)})")
        with state.local_main_process_first():
            run.fetch_dir(key, local)
        return read_jsonl(local / "pairs.jsonl")

    return get


class BudgetReached(Stopped):
    """The run's spend reached resources.max_cost_usd: checkpoint saved, exit 3, not retried."""


def _where_and_price(spec) -> tuple:
    """The instance this node runs on (SkyPilot's environment; None locally), its catalog price (from
    the launch's FT_PRICES) and the budget."""
    from trainer import cost
    from trainer.models import has_cuda

    device = None
    if has_cuda():
        import torch

        device = torch.cuda.get_device_name(0)
    instance, price = cost.instance_price(cost.instance_from_env(), cost.prices_from_env(), device)
    return instance, price, cost.budget_from_env() or spec.resources.max_cost_usd


def _stage_inputs(run: Run, bundle: Bundle, stage: StageBase, previous: str | None, work: Path, state
                  ) -> tuple[StageBase, Path | None, Path | None]:
    """(stage, the adapter it starts from, the checkpoint it resumes from): fetched once per node."""
    from trainer.resume import checkpoint_step, resume_point

    name = stage.stage_name
    output_dir = work / name
    with state.local_main_process_first():
        init_from = _init_from(run, bundle, stage, previous, work)
        resume = resume_point(run, name, output_dir, output_dir / "metrics.jsonl")
    reward_stage = getattr(stage, "reward_model", None)
    if reward_stage in [s.stage_name for s in bundle.spec.stages]:
        # `reward_model: <stage>` names a reward stage of this run: GRPO loads its merged model by path
        with state.local_main_process_first():
            path = run.fetch_dir(run.final(reward_stage), work / reward_stage / "final")
        stage = stage.model_copy(update={"reward_model": str(path)})
    if resume:
        console.print(f"[bold]{name}[/]: resuming from checkpoint {checkpoint_step(resume)} "
                      f"({run.url(run.checkpoint(name, checkpoint_step(resume)))})")
    return stage, init_from, resume


def _continue_wandb_run(run_name: str) -> None:
    if os.environ.get("WANDB_API_KEY"):
        # The run id comes from SKYPILOT_TASK_ID, so a recovered job continues the same W&B run.
        os.environ["WANDB_RUN_ID"] = run_name
        os.environ["WANDB_RESUME"] = "allow"
        os.environ.setdefault("WANDB_PROJECT", "llm-finetuning")


def _publish_final(run: Run, trainer, recipe, name: str, output_dir: Path, state) -> None:
    """The stage's output into the store, marker last: the final model and tokenizer, metrics, TensorBoard."""
    final = output_dir / "final"
    if hasattr(recipe, "finalize"):  # e.g. the reward model merges its LoRA into a full model
        if state.is_main_process:
            recipe.finalize(trainer, final)
    else:
        from trainer.models import gather_full_state_dict_for_save

        gather_full_state_dict_for_save(trainer)  # FSDP sharded: else save_model writes no adapter
        trainer.save_model(str(final))
    if not state.is_main_process:
        return
    trainer.processing_class.save_pretrained(str(final))
    shutil.rmtree(final / "ref", ignore_errors=True)  # TRL's frozen reference copy is not the stage's output
    run.store.upload_dir(final, run.final(name), progress=False)
    if (output_dir / "metrics.jsonl").exists():
        run.store.upload_file(output_dir / "metrics.jsonl", run.metrics(name))
    if (output_dir / "runs").is_dir():
        run.store.upload_dir(output_dir / "runs", run.tensorboard(name), progress=False, mark_complete=False)


def run_stage(run: Run, bundle: Bundle, stage: StageBase, previous: str | None, record: dict,
              guard: PreemptionGuard) -> int:
    from trainer import cost
    from trainer.callbacks import MetricsCallback, PreemptionCallback, StoreCheckpointCallback
    from trainer.preemption import Preempted
    from trainer.recipes.common import StageContext
    from trainer.resume import finished, load_finished, make_resume_exact

    state = _state()
    name = stage.stage_name
    work = settings.workdir() / run.run_id
    output_dir = work / name
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = output_dir / "metrics.jsonl"
    stage, init_from, resume = _stage_inputs(run, bundle, stage, previous, work, state)
    # The bill: one attempt per process that runs this stage, its clock moved at every checkpoint.
    instance, price, budget = _where_and_price(bundle.spec)
    entry = record["stages"].setdefault(name, {"status": "running", "method": stage.method})
    cost.open_attempt(entry, instance, price)

    def bill() -> None:
        if state.is_main_process:
            cost.touch_attempt(entry)
            run.write_record(record)

    preemption = PreemptionCallback(guard, stage.save_every_minutes)
    callbacks = [MetricsCallback(metrics_file, name), preemption,
                 StoreCheckpointCallback(run, name, output_dir, stage.save_total_limit, metrics_file,
                                         after_upload=bill)]
    budget_cb = None
    if price is not None and budget is not None:
        budget_cb = cost.BudgetCallback(price, budget, nodes=instance.nodes if instance else 1,
                                        spent_before_usd=cost.run_spend(record))
        callbacks.append(budget_cb)
    ctx = StageContext(spec=bundle.spec, stage=stage, bundle=bundle, output_dir=output_dir, init_from=init_from,
                       run_name=f"{run.run_id}-{name}", callbacks=callbacks,
                       stored_rows=_stored_rows(run, name, work, state))
    _continue_wandb_run(ctx.run_name)
    recipe = importlib.import_module(f"trainer.recipes.{stage.method}")
    started = time.time()
    trainer = recipe.build(ctx)
    entry.update(getattr(trainer, "ft_record", {}))  # what the recipe decided, e.g. GRPO's prompts dropped
    bill()  # written once the stage could start: a start that fails (a missing model) leaves no record
    make_resume_exact(trainer)
    if resume and finished(resume):
        # Preempted after the last checkpoint but before the final upload.
        load_finished(trainer, resume)
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if budget_cb is not None and budget_cb.stopped_for_budget:
        entry["status"] = "stopped_budget"
        bill()
        raise BudgetReached(cost.budget_message(budget_cb.spend_usd, budget, name, trainer.state.global_step))
    if guard.requested:
        bill()
        raise Preempted(f"{name}: stopped on SIGTERM at step {preemption.stopped_at}, checkpoint in "
                        f"{run.url(run.checkpoints(name))}")
    _publish_final(run, trainer, recipe, name, output_dir, state)
    steps = trainer.state.global_step
    if state.is_main_process:
        entry.update(status="done", method=stage.method, final=run.final(name), steps=steps,
                     seconds=round(time.time() - started, 1))
        bill()
    state.wait_for_everyone()
    del trainer
    gc.collect()
    return steps


def run_bundle(bundle_uri: str, stage: str | None = None, run_id: str | None = None,
               store_uri: str | None = None, guard: PreemptionGuard | None = None) -> Run:
    state = _state()
    guard = guard or PreemptionGuard()
    with state.local_main_process_first():
        bundle = fetch_bundle(bundle_uri, progress=state.is_main_process)
    spec = bundle.spec
    store = open_store(store_uri or settings.store() or spec.store.uri)
    run = Run.in_store(store, run_id or new_run_id(spec.name))
    names = [s.stage_name for s in spec.stages]
    if stage is not None and stage not in names:
        raise BadInput(f"--stage {stage}: no such stage (stages: {', '.join(names)})")
    lease = RunLease(store, run.lease, on_lost=_lease_lost) if state.is_main_process else None
    if lease:
        lease.acquire()  # one writer per run: a second trainer on this run id waits or exits 75
    try:
        _run_stages(run, bundle, bundle_uri, stage, state, guard)
    finally:
        if lease:
            lease.release()
    return run


def _absolute(uri: str) -> str:
    """A local bundle path as an absolute one, so the run can be found again from any directory."""
    return uri if "://" in uri else str(Path(uri).resolve())


def _lease_lost(holder: str) -> None:
    console.print(f"[red]the run's lease was taken over by {holder} (this trainer stalled past its expiry); "
                  f"stopping without writing more (exit {EXIT_RETRYABLE})[/]")
    _write_exit_code(EXIT_RETRYABLE)
    os._exit(EXIT_RETRYABLE)


def _tool_versions() -> dict[str, str]:
    """Python and the training libraries' versions, for run.json (the report shows them)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _run_stages(run: Run, bundle: Bundle, bundle_uri: str, stage: str | None, state,
                guard: PreemptionGuard) -> None:
    spec, store = bundle.spec, run.store
    record = run.read_record()
    if record and record.get("bundle_id") != bundle.bundle_id:
        raise BadInput(f"run {run.run_id} was started from bundle {record.get('bundle_id', '?')[:12]}, "
                         f"not {bundle.bundle_id[:12]}; use another --run-id")
    record = record or {"run_id": run.run_id, "bundle_id": bundle.bundle_id, "bundle_uri": _absolute(bundle_uri),
                        "spec": spec.resolved(), "stages": {}, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    record.setdefault("versions", _tool_versions())  # the first attempt's: a resumed run keeps what it started on
    instance, price, budget = _where_and_price(spec)
    from trainer import cost

    estimate = cost.launch_estimate(instance, price, cost.prices_from_env()) or record.get("cost", {}).get("estimate")
    record["cost"] = {**record.get("cost", {}), **cost.cost_record(instance, price, budget, estimate)}
    record["price_per_hour"] = price
    if state.is_main_process and record["stages"]:  # a new run's record is written when its first stage starts
        run.write_record(record)
    previous: str | None = None
    for s in spec.stages:
        name = s.stage_name
        selected = stage is None or stage == name
        if selected and not store.is_complete(run.final(name)):
            if previous is not None and not store.is_complete(run.final(previous)):
                raise BadInput(f"stage {name} needs {previous}'s output; run that stage first")
            console.print(f"[bold cyan]▶ {name}[/] ({s.method}) → {store.url(run.stage(name))}")
            steps = run_stage(run, bundle, s, previous, record, guard)
            console.print(f"[green]✓ {name}[/]: {steps} steps")
        elif selected:
            console.print(f"[dim]✓ {name}: already complete in {store.url(run.final(name))}; skipped[/]")
        if s.method != "reward":  # a reward model is a side branch; the policy adapter continues past it
            previous = name


def summary(run: Run) -> dict:
    record = run.read_record()
    return {"run_id": run.run_id, "store": run.store.uri,
            "stages": {k: {"steps": v.get("steps"), "final": run.store.url(v["final"]),
                           "cost_usd": v.get("cost_usd")}
                       for k, v in record.get("stages", {}).items() if v.get("status") == "done"}}


def evaluate_bundle_run(bundle_uri: str, run_id: str | None = None, store_uri: str | None = None,
                        stage: str | None = None, limit: int | None = None) -> Run:
    """`python -m trainer eval`: the pipeline's evaluation tail (base and every finished stage, the
    spec's lm-eval tasks), then the report, both stored with the run."""
    from trainer.evaluate import evaluate_run
    from trainer.report import write_report

    bundle = fetch_bundle(bundle_uri, progress=False)
    store = open_store(store_uri or settings.store() or bundle.spec.store.uri)
    run = Run.in_store(store, run_id or new_run_id(bundle.spec.name))
    evaluate_run(run, stages=[stage] if stage else None, limit=limit)
    write_report(run)
    return run


def _write_exit_code(code: int) -> int:
    """Under `accelerate launch` every failure becomes exit 1; the job YAMLs read the real code here."""
    path = settings.exit_code_file()
    if path and _state().is_main_process:
        Path(path).write_text(str(code))
    return code


def _failure_line(error: BaseException) -> tuple[int, str] | None:
    """Exit code and the masked line to print for an error we explain (ours, or the Hub's and the
    network's); None for a bug, which keeps its traceback."""
    from trainer.errors import describe, mask_secrets

    found = describe(error)
    if found is None:
        return None
    code, message = found
    return code, mask_secrets(f"[exit {code}] {message}")


def _launch(args) -> int:
    from trainer.launch import launch

    try:
        return launch(args.what, args.bundle, args.stage, args.run_id, args.store)
    except Exception as e:  # noqa: BLE001 -- same boundary as the trainer's own commands
        found = _failure_line(e)
        if found is None:
            raise
        console.print(found[1], style="red", markup=False, highlight=False)
        return found[0]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:  # its own parser and error boundary: trainer/merge.py (jobs/merge.yaml)
        from trainer.merge import main as merge_main

        return merge_main(argv[1:])

    from rich.markup import escape

    parser = argparse.ArgumentParser(prog="python -m trainer", description="Run a job bundle's training stages.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="pull, verify and run a bundle")
    evaluate = sub.add_parser("eval", help="evaluate a run's stages on the bundle's test set, then write the report")
    for p in (run, evaluate):
        p.add_argument("bundle", help="bundle folder or store URI (s3://…/bundles/<name>-<id>)")
        p.add_argument("--stage", help="only this stage (run: earlier stages must be complete)")
        p.add_argument("--run-id", help="default: $SKYPILOT_TASK_ID, else a new id")
        p.add_argument("--store", help="artifact store URI (default: $FT_STORE, else the spec's store.uri)")
    evaluate.add_argument("--limit", type=int, help="test items (default: the spec's evaluation.limit)")
    launcher = sub.add_parser("launch", help="a SkyPilot job's entry point on each node: run, eval or both, "
                                             "one process or accelerate across every node's GPUs")
    launcher.add_argument("what", choices=("run", "eval", "pipeline"))
    launcher.add_argument("bundle")
    for name in ("--stage", "--run-id", "--store"):  # "" (a YAML env left empty) means not given
        launcher.add_argument(name, default="")
    args = parser.parse_args(argv)
    if args.command == "launch":
        return _launch(args)
    guard = PreemptionGuard(on_exit=_write_exit_code).install()
    try:
        if args.command == "run":
            run = run_bundle(args.bundle, args.stage, args.run_id, args.store, guard)
        else:
            run = evaluate_bundle_run(args.bundle, args.run_id, args.store, args.stage, args.limit)
    except Exception as e:  # noqa: BLE001 -- classified deliberately; a bug is re-raised with its traceback
        found = _failure_line(e)
        if found is None:
            raise
        code, line = found
        color = "red" if code == EXIT_BAD_INPUT else "yellow"
        console.print(f"[{color}]{escape(line)}[/]", highlight=False)
        return _write_exit_code(code)
    if _state().is_main_process:
        print(json.dumps(summary(run)))
    return _write_exit_code(EXIT_OK)
