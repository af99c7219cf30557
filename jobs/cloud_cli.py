"""The cloud commands: `ft gpus`, `ft preflight`, `ft launch`, `ft status`, `ft runs`, `ft logs`, `ft cancel`,
`ft fetch`.
SkyPilot is imported inside the commands only (`import jobs` must not import it). Errors are raised
(BadInput, LaunchError, store errors) and printed by `ft`'s one error boundary (jobs.cli)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from jobs.console import console, fail, resolve_store, store_option
from mac.cli import overrides_argument, spec_file
from trainer.errors import EXIT_BAD_INPUT, EXIT_FAILED, BadInput


def _parse_gpu(gpu: str | None) -> tuple[str | None, int | None]:
    if not gpu:
        return None, None
    name, _, count = gpu.partition(":")
    if not name or (count and not count.isdigit()):
        raise BadInput(f"--gpu {gpu!r}: expected NAME or NAME:COUNT (e.g. A100-80GB:1)")
    return name, int(count) if count else None


def _spot_choice(spot: bool | None) -> str | None:
    return None if spot is None else ("spot" if spot else "on-demand")


def _age(hours: float | None) -> str:
    if hours is None:
        return "not cached"
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.0f} days"


def _region(o) -> str:
    return o.region + (f" (+{o.other_regions})" if o.other_regions else "")


def _parts_cell(o) -> str:
    """Hours of the offer's parts: training + generation + evaluation + setup (loads, uploads, spot)."""
    p = o.parts or {}
    setup = sum(v for k, v in p.items() if k not in ("training", "generation", "evaluation"))
    return "+".join(f"{v:.1f}" for v in (p.get("training", 0), p.get("generation", 0), p.get("evaluation", 0),
                                          setup))


def _offers_table(offers, with_cost: bool) -> Table:
    table = Table(show_lines=False, header_style="bold")
    for col in ("cloud", "enabled", "instance type", "GPU", "GPU mem", "region (+ others)", "spot", "$/h"):
        table.add_column(col, justify="right" if col in ("GPU mem", "$/h") else "left")
    if with_cost:
        table.add_column("est. hours", justify="right")
        table.add_column("train+gen+eval+setup h", justify="right")
        table.add_column("est. $ job", justify="right")
    for o in offers:
        enabled = "?" if o.enabled is None else ("yes" if o.enabled else "no")
        price = f"{o.price_per_hour:.2f}" if o.price_per_hour is not None else "[yellow]unknown[/]"
        gpus = f"{o.accelerator} × {o.count}" + (f" × {o.nodes} nodes" if o.nodes > 1 else "")
        row = [o.cloud, enabled, o.instance_type, gpus,
               f"{o.gpu_memory_gib:.0f} GiB" if o.gpu_memory_gib else "?", _region(o),
               "spot" if o.spot else "on-demand", price]
        if with_cost:
            row += [f"{o.est_hours:.1f}" if o.est_hours is not None else "", _parts_cell(o),
                    f"{o.est_cost:.2f}" if o.est_cost is not None else "unknown"]
        table.add_row(*row)
    return table


def _print_table(table: Table) -> None:
    # Piped output (CI logs, `| less`) gets full rows instead of 80 columns of ellipses.
    if console.is_terminal:
        console.print(table)
    else:
        from rich.console import Console

        Console(width=200, file=console.file, no_color=console.no_color).print(table)


def _estimate_lines(spec, spec_dir: Path, job) -> list[str]:
    from jobs import gpu_fit

    est = gpu_fit.estimate(spec, spec_dir, shape=job.shape)
    lines = [f"model {spec.model.base}: {est.params_b:.2f}B parameters ({est.shape_source}), "
             f"finetune {spec.finetune.method}, strategy {spec.distributed.strategy}"]
    for s in est.stages:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in s.parts.items())
        lines.append(f"  {s.stage} ({s.method}): ~{s.per_gpu_gib:.1f} GiB on one GPU  [{parts}]")
    lines.append("work (any GPU; FLOPs = 6·N per token full, 4·N LoRA/QLoRA, +2·N recompute, + reference forward):")
    lines += job.flops_summary()
    return lines


def _headline(offers, fastest: bool) -> str | None:
    """The answer first: the cheapest (or quickest) whole job and its parts."""
    priced = [o for o in offers if o.est_cost is not None]
    if not priced:
        return None
    o = priced[0]
    parts = ", ".join(f"{k} {v:.2f} h" for k, v in (o.parts or {}).items() if v >= 0.005)
    what = "quickest" if fastest else "cheapest"
    nodes = f" × {o.nodes} nodes" if o.nodes > 1 else ""
    text = (f"{o.accelerator} × {o.count}{nodes} on {o.cloud} {o.region}{' spot' if o.spot else ''} "
            f"({o.instance_type}), about {o.est_hours:.1f} hours and ${o.est_cost:,.2f} at "
            f"${o.price_per_hour:.2f}/h  [{parts}]")
    return f"[bold]{what} whole job:[/] {escape(text)}"


def _no_offer_message(accel: str | None, cloud_list: list[str]) -> str:
    from jobs import gpu_fit, pricing

    msg = "no offer matches (a bigger GPU, more GPUs with a sharding strategy, or other clouds?)"
    if accel:
        names = pricing.accelerator_names(cloud_list or pricing.CLOUDS)
        if accel.lower() not in {n.lower() for n in names}:
            close = gpu_fit.close_gpu_names(accel, names)
            msg = f"no GPU named {accel!r} in the catalogs" + (f"; did you mean {', '.join(close)}?" if close else "")
    return msg


def gpus_command(
    config: Path | None = typer.Argument(None, metavar="CONFIG",
                                         help="job spec: only the GPUs it fits, with the whole job's cost"),
    overrides: list[str] | None = overrides_argument(),
    gpu: str | None = typer.Option(None, "--gpu", help="NAME[:COUNT], e.g. A100-80GB:1"),
    spot: bool | None = typer.Option(None, "--spot/--on-demand", help="default: both (a spec: its use_spot)"),
    clouds: list[str] | None = typer.Option(None, "--clouds", help="lambda, aws, runpod, vast (repeatable)"),
    max_price: float | None = typer.Option(None, "--max-price", help="$/h ceiling"),
    enabled_only: bool = typer.Option(False, "--enabled-only",
                                      help="only clouds `sky check` enabled (fills the enabled column)"),
    fastest: bool = typer.Option(False, "--fastest", help="with CONFIG: the quickest whole job first"),
    limit: int = typer.Option(25, "--limit", help="rows shown (0: all)"),
    as_json: bool = typer.Option(False, "--json", help="rows as JSON objects"),
) -> None:
    """GPU offers from SkyPilot's cached catalog, filtered by fit and provider limits.

    With CONFIG: the GPUs the job fits, the cheapest whole job first (setup, training, generation and
    evaluation estimated); without: every offer by $/h. One row per (cloud, instance type, spot) with its
    cheapest region and how many other regions offer it.
    """
    from jobs import pricing
    from trainer.spec import load_spec

    if overrides and config is None:
        raise BadInput("KEY=VALUE overrides need a CONFIG")
    accel, count = _parse_gpu(gpu)
    cloud_list = [c.strip().lower() for group in (clouds or []) for c in group.split(",") if c.strip()]
    unknown = sorted(set(cloud_list) - set(pricing.CLOUDS))
    if unknown:
        raise BadInput(f"--clouds: unknown {', '.join(unknown)} (one of {', '.join(pricing.CLOUDS)})")
    notes: list[str] = []
    spec = spec_dir = job = None
    if config:
        spec, spec_dir = load_spec(spec_file(config), overrides or ()), config.resolve().parent
        job = pricing.job_cost(spec, spec_dir)
        offers = pricing.candidates_for_spec(spec, spec_dir, _spot_choice(spot), cloud_list or None, max_price,
                                             accel, count, notes, fastest=fastest, job=job)
    else:
        offers = pricing.list_offers(cloud_list or pricing.CLOUDS, accel, count, _spot_choice(spot) or "both",
                                     notes=notes)
        offers = pricing.filter_offers(offers, max_price)
    if enabled_only:  # SkyPilot's `sky check` cache needs `import sky` (5 s): only when asked
        pricing.mark_enabled(offers, pricing.enabled_clouds())
        offers = pricing.filter_offers(offers, enabled_only=True)
    rows = pricing.group_offers(offers)
    shown = rows[:limit] if limit else rows
    if as_json:
        print(json.dumps([o.json_row() for o in shown], indent=2))
        if not offers:
            fail(_no_offer_message(accel, cloud_list), EXIT_FAILED)
        return
    ages = pricing.catalog_ages(cloud_list or pricing.CLOUDS)
    console.print("catalog age: " + ", ".join(f"{c} {_age(h)}" for c, h in ages.items())
                  + f"  ({pricing.catalog_path('aws').parent.parent})", highlight=False)
    if spec is not None:
        for line in _estimate_lines(spec, spec_dir, job):
            console.print(line, highlight=False, markup=False)
        headline = _headline(rows, fastest)
        if headline:
            console.print(headline, highlight=False)
        problem = pricing.budget_problem(offers, spec.resources.max_cost_usd)
        if problem:
            console.print(f"[yellow]over budget:[/] {problem}", highlight=False)
    _print_table(_offers_table(shown, with_cost=spec is not None))
    if len(shown) < len(rows):
        console.print(f"[dim]{len(rows) - len(shown)} more (--limit 0 shows all)[/]")
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if not offers:
        fail(_no_offer_message(accel, cloud_list), EXIT_FAILED)


def _print_checks(report) -> None:
    marks = {"ok": "[green]ok[/]  ", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
    for c in report.checks:
        console.print(f"{marks[c.status]} {c.name}: {escape(c.detail)}", highlight=False, soft_wrap=True)


def _confirm(yes: bool, what: str) -> None:
    """`Proceed? [Y/n]` like `sky launch`; without a terminal only `--yes` proceeds."""
    import sys

    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"not launching {what}: no terminal to confirm on; pass --yes to launch non-interactively",
             EXIT_BAD_INPUT)
    if not typer.confirm(f"Launch {what}? Proceed?", default=True):
        fail("not launched (declined)", EXIT_FAILED)


def preflight_command(
    config: Path = typer.Argument(..., metavar="CONFIG", help="job spec YAML"),
    overrides: list[str] | None = overrides_argument(),
    offline: bool = typer.Option(False, "--offline", help="skip the store probe and the enabled clouds"),
    as_json: bool = typer.Option(False, "--json", help="the checks as JSON"),
) -> None:
    """Everything `ft launch` checks before it spends anything.

    The spec and its data (as `ft validate`), the accelerator names, the store reachable and writable
    (a tiny object written and removed), the enabled clouds (`sky check`'s cached result), and the plan
    (GPU, cloud, spot, estimated hours and $). Exit 0 ready, 2 bad input, 75 retryable (store or network
    unreachable).
    """
    from jobs import preflight

    report = preflight.run_preflight(spec_file(config), cloud=not offline, overrides=overrides or ())
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_checks(report)
        console.print("[green]ready to launch[/]" if not report.failed else
                      f"[red]not ready[/]: {len(report.failed)} check(s) failed", highlight=False)
    if report.failed:
        raise typer.Exit(report.exit_code)


def _launch_target(target: Path, overrides: list[str], dry_run: bool, image: str | None = None):
    """(pre-flight report, spec, spec folder, verified bundle or None) for a spec file or a bundle folder;
    `image` is the job's image, which the pre-flight looks for in its registry."""
    from jobs import preflight
    from trainer.bundle import verify_bundle

    if target.is_dir():
        if overrides:
            raise BadInput(f"{target} is a frozen bundle: KEY=VALUE overrides apply to a spec file")
        bundle = verify_bundle(target)
        report = preflight.run_preflight(None, spec=bundle.spec, spec_dir=bundle.path, cloud=not dry_run,
                                         validate_data=False, image=image)
        return report, bundle.spec, bundle.path, bundle
    if not target.is_file():
        raise BadInput(f"{target}: no such file or bundle folder")
    report = preflight.run_preflight(target, cloud=not dry_run, overrides=overrides, image=image)
    return report, report.spec, target.resolve().parent, None


def _refuse_unless_ready(report, dry_run: bool) -> None:
    local_store = not (report.spec and report.spec.store.uri.startswith("s3://"))
    if dry_run and local_store:  # nothing is spent: say it, still print the task
        for c in report.checks:
            if c.name == "store" and c.status == "fail":
                c.status, c.code = "warn", 0
    _print_checks(report)
    if report.failed:
        fail(f"refusing to launch: {report.failed[0].name}: {report.failed[0].detail}", report.exit_code)


def _print_plan(spec, spec_dir: Path, offers) -> None:
    from jobs import launch, pricing

    job = pricing.job_cost(spec, spec_dir)
    for line in _estimate_lines(spec, spec_dir, job):
        console.print(line, highlight=False, markup=False)
    headline = _headline(offers, fastest=False)
    if headline:
        console.print(headline, highlight=False)
    _print_table(_offers_table(pricing.group_offers(offers)[: launch.MAX_CANDIDATES], with_cost=True))
    if not offers:
        console.print("[yellow]note:[/] no priced offer from the catalog: SkyPilot's optimizer chooses among "
                      "the YAML's candidates", highlight=False)


def launch_command(
    target: Path = typer.Argument(..., metavar="CONFIG_OR_BUNDLE", help="job spec YAML, or a bundle folder"),
    overrides: list[str] | None = overrides_argument(),
    stage: str | None = typer.Option(None, "--stage", help="one stage (or `eval`); default: every stage"),
    run_id: str | None = typer.Option(None, "--run-id", help="default: NAME-TIME-RANDOM"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the exact task, launch nothing"),
    detach: bool = typer.Option(False, "--detach", help="return once SkyPilot has accepted the job"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    out: Path = typer.Option(Path("outputs/bundles"), "--out", help="where the bundle is written"),
    registry: str | None = typer.Option(None, "--registry", help="registry of the GPU image, e.g. ghcr.io/me "
                                        "(default: $FT_REGISTRY, else ghcr.io/llm-finetuning)"),
) -> None:
    """Pre-flight, freeze a bundle and launch it as a managed job on the cheapest GPUs that fit.

    The spec and its data are validated before anything else, so bad data never reaches a cloud. Exit 0
    submitted (prints the job id, run id and store), 2 refused (bad input, no cloud access, over budget),
    75 retryable (the store, the network or SkyPilot's API server unreachable).
    """
    import yaml

    from jobs import cost, images_ref, launch, preflight
    from mac.freeze import freeze
    from trainer.bundle import bundle_key, push_bundle
    from trainer.run import new_run_id
    from trainer.spec import check_name

    if run_id:
        try:
            check_name(run_id, "--run-id")
        except ValueError as e:  # check_name's own error: plain ValueError, shared with the trainer
            raise BadInput(str(e)) from None
    image = images_ref.gpu_image(registry)  # a bad --registry / FT_REGISTRY or docker login fails first
    images_ref.docker_login(image)
    report, spec, spec_dir, bundle = _launch_target(target, overrides or [], dry_run, image)
    _refuse_unless_ready(report, dry_run)
    if stage and stage != "eval":
        try:
            spec.stage(stage)
        except KeyError as e:
            raise BadInput(str(e.args[0])) from None
    if bundle is None:  # the one freeze, from the validation the pre-flight already ran
        bundle = freeze(target, overrides or (), out=out, report=report.job).bundle
    store = spec.store.uri
    bundle_uri = (store.rstrip("/") + "/" + bundle_key(bundle) if store.startswith("s3://")
                  else str(Path(store).resolve() / bundle_key(bundle)))
    run_id = run_id or new_run_id(spec.name)
    offers = report.offers
    _print_plan(spec, spec_dir, offers)
    cfg = launch.build_task_config(spec, bundle_uri, run_id, offers, stage, image=image)
    cfg.setdefault("envs", {}).update(cost.trainer_envs(offers[: launch.MAX_CANDIDATES], spec.resources.max_cost_usd))
    secrets = launch.local_secrets(cfg)
    try:
        launch.to_task(cfg, secrets)  # SkyPilot's own validation, also on --dry-run
    except Exception as e:  # noqa: BLE001 - SkyPilot's schema errors: one line, bad input
        raise BadInput(f"SkyPilot refused the task: {launch.sky_reason(e)}") from None
    console.print(f"image:   {escape(image)} (registry: {images_ref.registry_source(registry)})", highlight=False,
                  soft_wrap=True)
    console.print(f"secrets: {', '.join(sorted(secrets)) or 'none set here'} (SkyPilot secrets; values never "
                  "printed)", highlight=False, soft_wrap=True)
    if dry_run:
        print(yaml.safe_dump(cfg, sort_keys=False, width=200))
        return
    plan = preflight.plan_line(offers[0]) if offers else "SkyPilot's choice among the YAML's candidates"
    _confirm(yes, f"managed job {cfg['name']} ({plan})")
    console.print(f"bundle → {push_bundle(bundle, store)}", highlight=False)
    console.print(f"launching managed job {cfg['name']} (run id {run_id})", highlight=False)
    job_id = launch.launch(cfg, detach=detach)
    console.print(f"managed job id: [bold]{job_id}[/]", highlight=False)
    console.print(f"run id:         [bold]{run_id}[/]", highlight=False)
    console.print(f"store:          {escape(store.rstrip('/') + '/runs/' + run_id)}", highlight=False)
    console.print(f"follow:         ft logs {run_id} · ft status · ft fetch {run_id} --store {store} · "
                  f"ft cancel {run_id}", highlight=False, markup=False)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.0f} days"


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.2f}"


def _step_cell(step: int | None, max_steps: int | None) -> str:
    if step is None:
        return ""
    return f"{step}/{max_steps}" if max_steps else str(step)


def _state_cell(state: str) -> str:
    color = {"done": "green", "running": "cyan", "interrupted": "yellow", "stopped_budget": "yellow"}.get(state)
    return f"[{color}]{escape(state)}[/]" if color else escape(state)


def _print_run_status(view) -> None:
    console.print(f"run [bold]{escape(view.run_id)}[/]: {_state_cell(view.state)} · started {view.started or '?'} · "
                  f"{_money(view.cost_usd)} so far · {escape(view.url)}", highlight=False, soft_wrap=True)
    if view.trainer is not None:
        t = view.trainer
        when = "" if t.expires_in_s is None else (f", lease expires in {_ago(t.expires_in_s)}" if t.alive else
                                                  f", lease expired {_ago(-t.expires_in_s)} ago")
        console.print(f"trainer: {escape(str(t.holder))} ({'alive' if t.alive else 'not renewing'}{when})",
                      highlight=False, soft_wrap=True)
    if view.job is not None:
        console.print(f"managed job: {escape(view.job)}", highlight=False, soft_wrap=True)
    table = Table(header_style="bold")
    for col in ("stage", "method", "state", "step", "loss", "reward", "steps/s", "ETA", "checkpoint", "age", "$"):
        table.add_column(col, justify="right" if col in ("step", "loss", "reward", "steps/s", "ETA", "age", "$")
                         else "left")
    bases: set[str] = set()
    for s in view.stages:
        if s.checkpoint_age_basis:
            bases.add(s.checkpoint_age_basis)
        table.add_row(s.name, s.method or "", _state_cell(s.state), _step_cell(s.step, s.max_steps),
                      f"{s.loss:.4f}" if s.loss is not None else "", f"{s.reward:.3f}" if s.reward is not None else "",
                      f"{s.steps_per_s:.3g}" if s.steps_per_s else "", _ago(s.eta_s),
                      str(s.last_checkpoint) if s.last_checkpoint is not None else "", _ago(s.checkpoint_age_s),
                      "" if s.state == "not started" else _money(s.cost_usd))
    _print_table(table)
    rates = sorted({s.rate_basis for s in view.stages if s.rate_basis})
    notes = ([f"steps/s: {'; '.join(rates)}"] if rates else []) + (
        [f"checkpoint age: {'; '.join(sorted(bases))}"] if bases else [])
    for note in notes:
        console.print(f"[dim]{escape(note)}[/]", highlight=False, soft_wrap=True)


def _managed_jobs(all_users: bool, as_json: bool) -> None:
    from jobs import launch

    rows = launch.status(all_users)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        console.print("no managed jobs (`ft launch CONFIG` starts one; `ft runs` lists the runs in the store)")
        return
    table = Table(header_style="bold")
    for col in ("id", "name", "status", "resources", "recoveries", "submitted"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r.get("job_id", "")), str(r.get("job_name", "")), str(r.get("status", "")),
                      str(r.get("resources", "")), str(r.get("recovery_count", "")), str(r.get("submitted_at", "")))
    _print_table(table)


def status_command(
    run: str | None = typer.Argument(None, metavar="RUN",
                                     help="run id, STORE/runs/ID or s3://…/runs/ID: its stages from the store"),
    store: str | None = store_option(),
    watch: bool = typer.Option(False, "--watch", help="refresh until the run is done (Ctrl-C stops, exit 0)"),
    interval: float = typer.Option(10.0, "--interval", min=0.0, help="seconds between refreshes with --watch"),
    job: bool = typer.Option(True, "--job/--no-job", help="ask SkyPilot for the managed job's state"),
    all_users: bool = typer.Option(False, "--all-users", help="without RUN: every user's managed jobs"),
    as_json: bool = typer.Option(False, "--json", help="as JSON (with --watch: one object a line)"),
) -> None:
    """A run's progress from the store, or (without RUN) the managed jobs SkyPilot knows.

    With RUN, per stage: state, step/max_steps, latest loss or reward, steps/s, ETA, the last checkpoint
    and its age, $ so far; and the managed job's state when SkyPilot can be asked (otherwise "job state
    unknown: …"). Reads only the store, so it works for a run on any cloud or a local one. Exit 0 shown
    (also with no managed jobs), 2 no such run or SkyPilot refused (without RUN), 75 the store or
    SkyPilot's API server unreachable.
    """
    from jobs import run_view

    if run is None:
        if watch:
            raise BadInput("--watch needs a RUN (`ft runs` lists them)")
        _managed_jobs(all_users, as_json)
        return
    target = run_view.open_run(run, resolve_store(store))
    job_state = run_view.managed_job_state if job else None

    def show() -> bool:
        view = run_view.run_status(target, job_state=job_state)
        if as_json:
            print(json.dumps(view.as_dict(), indent=None if watch else 2), flush=True)
        else:
            if watch and console.is_terminal:
                console.clear()
            _print_run_status(view)
        return view.finished

    if not watch:
        show()
        return
    try:
        run_view.watch(show, interval, sleep=run_view.SLEEP)
    except KeyboardInterrupt:
        console.print("[dim]stopped watching[/]")


def runs_command(
    store: str | None = store_option("the store to list (default: $FT_STORE, else ./outputs/store)"),
    as_json: bool = typer.Option(False, "--json", help="the rows as JSON"),
    limit: int = typer.Option(50, "--limit", help="rows shown, newest first (0: all)"),
) -> None:
    """The runs in the store, newest first: stages done, the current stage and step, state, started, $ so far.

    Exit 0 (also with no runs), 2 a bad store (missing bucket, no credentials), 75 the store unreachable.
    """
    from jobs import run_view
    from trainer.store import open_store

    uri = resolve_store(store)
    rows = run_view.list_runs(open_store(uri))
    shown = rows[:limit] if limit else rows
    if as_json:
        print(json.dumps([r.as_dict() for r in shown], indent=2))
        return
    if not rows:
        console.print(f"no runs in {escape(uri)} (`ft launch CONFIG` or `ft run BUNDLE` starts one)", highlight=False)
        return
    table = Table(header_style="bold")
    for col in ("run", "stages done", "current stage", "step", "state", "started", "$ so far"):
        table.add_column(col, justify="right" if col in ("stages done", "step", "$ so far") else "left")
    for r in shown:
        table.add_row(r.run_id, f"{r.stages_done}/{r.stages_total}", r.current_stage or "",
                      _step_cell(r.step, r.max_steps), _state_cell(r.state), r.started or "", _money(r.cost_usd))
    _print_table(table)
    if len(shown) < len(rows):
        console.print(f"[dim]{len(rows) - len(shown)} more (--limit 0 shows all)[/]")


def logs_command(run: str = typer.Argument(..., help="run id (or STORE/runs/ID, s3://…/runs/ID)"),
                 follow: bool = typer.Option(True, "--follow/--no-follow"),
                 store: str | None = store_option()) -> None:
    """Follow a run's managed-job log.

    Exit 0 streamed (or Ctrl-C), 1 the job failed, 2 no managed job `ft-RUN` (a local run has none: its
    output went to its terminal; `ft status RUN` shows its progress from the store), 75 SkyPilot's API
    server unreachable.
    """
    from jobs import launch
    from jobs.run_view import open_run
    from trainer.run import Run

    try:
        run_id = Run.from_ref(run).run_id
    except ValueError as e:
        raise BadInput(str(e)) from None
    try:
        code = launch.logs(run_id, follow)
    except KeyboardInterrupt:
        return
    except ImportError as e:
        raise BadInput(f"cannot read the job log of {run_id}: SkyPilot is not installed ({e.name}); "
                       f"`ft status {run_id}` shows its progress from the store") from None
    except launch.LaunchError as e:
        if not e.retryable and e.reason.startswith("no managed job"):
            try:
                where = f"the store has run {run_id} at {open_run(run, resolve_store(store)).url()}"
            except Exception:  # noqa: BLE001 - a hint only: the store may be out of reach too
                where = "nor does the store show it"
            raise launch.LaunchError(f"{e.reason}; {where}: `ft status {run_id}` shows its progress") from None
        raise
    if code:
        fail(f"managed job {launch.job_name(run_id)} ended with SkyPilot exit code {code}", EXIT_FAILED)


def cancel_command(run: str = typer.Argument(..., help="run id")) -> None:
    """Cancel a run's managed job (checkpoints already in the store stay)."""
    from jobs import launch

    launch.cancel(run)
    console.print(f"cancelled {launch.job_name(run)}")


def fetch_command(
    run: str = typer.Argument(..., help="run id, s3://…/runs/ID or STORE/runs/ID"),
    out: Path = typer.Option(Path("outputs/runs"), "--out", help="download into OUT/RUN_ID"),
    store: str | None = store_option(),
    checkpoints: bool = typer.Option(False, "--checkpoints", help="also the intermediate checkpoints"),
) -> None:
    """Pull a run's artifacts (final adapters or weights, metrics, eval, report) back from the store."""
    from jobs import launch

    try:
        dest = launch.fetch(run, resolve_store(store), out, checkpoints)
    except FileNotFoundError as e:  # nothing under that run: the look-up ran and found nothing
        fail(str(e), EXIT_FAILED)
    except ValueError as e:  # a run id or a listed key that would leave OUT
        raise BadInput(str(e)) from None
    console.print(f"fetched → {dest}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("gpus")(gpus_command)
    app.command("preflight")(preflight_command)
    app.command("launch")(launch_command)
    app.command("status")(status_command)
    app.command("runs")(runs_command)
    app.command("logs")(logs_command)
    app.command("cancel")(cancel_command)
    app.command("fetch")(fetch_command)
