"""Workstation commands: `ft init`, `ft data prepare`, `ft validate`, `ft bundle create|verify`.

Errors are raised (trainer.errors: BadInput exits 2, FtError 1) and printed, masked, by `ft`'s one error
boundary (jobs.cli); a finished check that says no prints its findings and exits 1.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from trainer.errors import EXIT_FAILED, BadInput, FtError, Retryable

console = Console()
err = Console(stderr=True)

OVERRIDES_HELP = ("KEY=VALUE overrides of spec fields, e.g. stages.0.max_steps=3 finetune.lora.r=16 "
                  "(dotted paths, list indices as numbers, values read as YAML)")


class Task(str, Enum):
    math = "math"
    translation = "translation"


class DataKind(str, Enum):
    sft = "sft"
    dpo = "dpo"
    grpo = "grpo"
    test = "test"


def overrides_argument():
    """The `[KEY=VALUE]...` after CONFIG of every command that reads a spec."""
    return typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP, show_default=False)


def spec_file(config: Path) -> Path:
    if not config.is_file():
        raise BadInput(f"{config}: file not found")
    return config


def init(
    task: Task = typer.Argument(..., metavar="TASK",
                                help="math (GSM8K: SFT, DPO, GRPO) or translation (Korean to English SFT)"),
    out: Path = typer.Option(None, "--out", help="the spec to write (default: configs/TASK.yaml)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a commented starter job spec for one of the two use cases.

    Its data paths point at what `ft data prepare TASK` writes; edit the model, the store and the stages,
    then `ft validate` it.
    """
    from mac.starter import write_starter

    path = write_starter(task.value, out or Path("configs") / f"{task.value}.yaml", force=force)
    console.print(f"[green]wrote[/] {escape(str(path))}; next: ft data prepare {task.value} · "
                  f"ft validate {escape(str(path))}", highlight=False)


def data_prepare(
    task: Task = typer.Argument(..., help="math (GSM8K → SFT, DPO pairs, GRPO prompts) or translation (ko→en)"),
    source: str = typer.Option("hub", help="`hub` (Hugging Face datasets) or a local folder"),
    full: bool = typer.Option(False, "--full", help="everything, not the prototyping subset"),
    out: Path = typer.Option(None, "--out",
                             help="output folder (default data/processed/math or data/processed/korean_english)"),
    limit: int = typer.Option(None, help="cap the training rows"),
    test_limit: int = typer.Option(None, help="cap the test rows"),
    seed: int = typer.Option(42, help="seed of the deterministic splits"),
) -> None:
    """Prepare training data: ChatML SFT rows, DPO pairs, GRPO prompts and a held-out test set."""
    from mac.data_prep import prepare_math, prepare_translation

    out = out or Path("data/processed") / ("math" if task == Task.math else "korean_english")
    prepare = prepare_math if task == Task.math else prepare_translation
    try:
        with console.status(f"preparing {task.value} data from {source} …"):
            result = prepare(source, out, full=full, limit=limit, test_limit=test_limit, seed=seed)
    except FileNotFoundError as e:
        raise BadInput(str(e)) from None
    except ConnectionError as e:
        raise Retryable(f"cannot reach the Hugging Face Hub ({e}); pass --source FOLDER for local files") from e
    table = Table(title=f"{task.value} data → {out}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, n in result.counts.items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(f"dropped {result.dropped_duplicates} exact duplicates, "
                  f"{result.dropped_test_overlap} train rows that were in the test set")


def _print_reports(files: list, spec_findings: list, show: int = 20) -> None:
    table = Table(title="validation")
    for col in ("file", "kind", "rows", "errors", "warnings", "dupes", "truncated", "tokens min/mean/max"):
        table.add_column(col, justify="left" if col in ("file", "kind") else "right")
    for r in files:
        d = r.to_dict()["tokens"]
        tokens = "-" if d["min"] is None else f"{d['min']}/{d['mean']:.0f}/{d['max']}"
        table.add_row(Text(r.file), r.kind, str(r.rows), f"[red]{r.errors}[/]" if r.errors else "0",
                      f"[yellow]{r.warnings}[/]" if r.warnings else "0", str(r.duplicates), str(r.truncated), tokens)
    if files:
        console.print(table)
    findings = list(spec_findings) + [f for r in files for f in r.findings]
    for f in findings[:show]:
        color = "red" if f.severity == "error" else "yellow"
        console.print(Text(str(f), style=color), highlight=False, soft_wrap=True)  # data is text, never markup
    if len(findings) > show:
        console.print(f"… and {len(findings) - show} more (use --json for all)")


def _print_prototype_map(spec, verbose: bool = False) -> None:
    """The prototype (MLX) → GPU mapping: the whole table with --verbose; otherwise one line, and the
    settings that differ in a way that matters (the table's warnings), so a clean run stays short."""
    try:
        from mac.prototype_map import prototype_mapping
    except ImportError:
        return
    if spec.prototype is None:
        return
    rows = prototype_mapping(spec)
    if not verbose:
        warned = [(setting, warning) for setting, _, _, warning in rows if warning]
        console.print(f"prototype (MLX) → GPU: {len(rows)} settings mapped, {len(warned)} to note "
                      "(--verbose: the table)", highlight=False)
        for setting, warning in warned:
            console.print(Text(f"  {setting}: {warning}", style="yellow"), highlight=False, soft_wrap=True)
        return
    table = Table(title="prototype (MLX) → GPU run")
    for col in ("setting", "MLX prototype", "GPU run", "note"):
        table.add_column(col)
    for setting, mlx_value, gpu_value, warning in rows:
        table.add_row(setting, str(mlx_value), str(gpu_value), f"[yellow]{warning}[/]" if warning else "")
    console.print(table)


def validate(
    config: Path = typer.Argument(None, metavar="CONFIG",
                                  help="job spec YAML; checks the spec and every data file it names"),
    overrides: list[str] | None = overrides_argument(),
    data: Path = typer.Option(None, "--data", help="check one data file alone"),
    kind: DataKind = typer.Option(None, "--kind", help="kind of --data file"),
    task: Task = typer.Option(Task.math, "--task", help="task of --data (math answers must be parseable)"),
    tokenizer: str = typer.Option(None, "--tokenizer", help="tokenizer (Hub id, folder, builtin:smollm2-135m)"),
    max_length: int = typer.Option(None, "--max-length", help="count rows longer than this many tokens"),
    test_file: Path = typer.Option(None, "--test-file", help="test set to check --data for overlap against"),
    strict: bool = typer.Option(False, "--strict", help="warnings fail too"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable report on stdout"),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="the details too: the prototype (MLX) → GPU mapping table"),
) -> None:
    """Check a job spec and every data file it names, or one data file.

    The spec's schema, then each file: UTF-8 and JSON on every line, the rows' schema, token lengths with the
    job's tokenizer, exact duplicates and train/test overlap. Exit 0 clean, 1 on errors (warnings too with
    --strict), 2 on usage errors.
    """
    from mac.validate_job import JobReport, validate_data, validate_job

    if (config is None) == (data is None):
        raise BadInput("give either CONFIG or --data FILE --kind KIND")
    if data is not None and kind is None:
        raise BadInput("--data needs --kind sft|dpo|grpo|test")
    progress = Progress(TextColumn("validating"), BarColumn(), TextColumn("{task.completed} rows"),
                        TimeElapsedColumn(), console=err, transient=True, disable=as_json)
    with progress:
        task_id = progress.add_task("rows", total=None)

        def advance(n: int) -> None:
            progress.advance(task_id, n)

        if config is not None:
            report = validate_job(spec_file(config), on_progress=advance, overrides=overrides or ())
        else:
            file_report = validate_data(data, kind.value, task.value, tokenizer, max_length, test_file, advance)
            report = JobReport(spec_file="", files=[file_report])
    failed = report.errors > 0 or (strict and report.warnings > 0)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_reports(report.files, report.spec_findings)
        if report.spec is not None:
            _print_prototype_map(report.spec, verbose)
        verdict = "[red]FAILED[/]" if failed else "[green]OK[/]"
        console.print(f"{verdict}: {report.errors} errors, {report.warnings} warnings")
    if failed:
        raise typer.Exit(EXIT_FAILED)


def bundle_create(
    config: Path = typer.Argument(..., metavar="CONFIG", help="job spec YAML"),
    overrides: list[str] | None = overrides_argument(),
    out: Path = typer.Option(Path("outputs/bundles"), "--out", help="where bundles are written"),
    push: str = typer.Option(None, "--push", help="also upload to this store (s3://bucket/prefix or a folder)"),
    prototype_dir: Path = typer.Option(None, "--prototype-dir",
                                       help="prototype results (default: $FT_MLX_OUTPUTS/NAME, else outputs/mlx/NAME)"),
    as_json: bool = typer.Option(False, "--json", help='print {"bundle_id": ..., "path": ...}'),
) -> None:
    """Freeze a job bundle: validate, include the prototype's adapter when present, write, optionally push.

    The bundle holds the spec with every default and override filled in, the data files, the prototype's
    PEFT adapter and metrics, and a manifest of every file's sha256; its id hashes the contents, so the same
    inputs give the same id anywhere. Exit 0 written, 1 validation errors (nothing written), 2 bad input.
    """
    from mac.freeze import FreezeRefused, freeze

    spec_file(config)
    try:
        with nullcontext() if as_json else console.status("validating …"):
            frozen = freeze(config, overrides or (), out=out, push=push, prototype_dir=prototype_dir,
                            progress=not as_json)
    except FreezeRefused as e:
        if not as_json:
            _print_reports(e.report.files, e.report.spec_findings)
        raise
    b = frozen.bundle
    if as_json:
        print(json.dumps({"bundle_id": b.bundle_id, "path": str(b.path),
                          **({"uri": frozen.uri} if frozen.uri else {})}))
        return
    console.print(f"[green]bundle[/] {b.bundle_id[:12]} → {escape(str(b.path))}")
    if b.prototype_adapter:
        console.print(f"  includes the prototype adapter (PEFT) from {escape(str(frozen.prototype_dir))}")
    if frozen.uri:
        console.print(f"  pushed → {escape(frozen.uri)}")


def bundle_verify(
    target: str = typer.Argument(..., metavar="PATH_OR_URI", help="a bundle folder or its store URI"),
    as_json: bool = typer.Option(False, "--json", help='print {"bundle_id": ..., "verified": true}'),
) -> None:
    """Recompute every hash of a bundle (a remote one from the store's objects, not a cached copy).

    Names each changed, missing or extra file. Exit 0 verified, 1 it does not verify.
    """
    from trainer.bundle import BundleError, fetch_bundle

    try:
        b = fetch_bundle(target, progress=not as_json, use_cache=False)
    except (BundleError, FileNotFoundError) as e:  # the check ran and says no: exit 1, as `ft validate`
        raise FtError(str(e)) from None
    if as_json:
        print(json.dumps({"bundle_id": b.bundle_id, "path": str(b.path), "verified": True}))
    else:
        console.print(Text.assemble(("verified", "green"), f" {len(b.manifest['files'])} files, bundle "
                                    f"{b.bundle_id[:12]} at {b.path}"))


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    data_app = typer.Typer(help="Data preparation.", no_args_is_help=True)
    data_app.command("prepare")(data_prepare)
    app.add_typer(data_app, name="data")
    app.command("validate")(validate)
    bundle_app = typer.Typer(help="Job bundles: freeze one, verify one.", no_args_is_help=True)
    bundle_app.command("create")(bundle_create)
    bundle_app.command("verify")(bundle_verify)
    app.add_typer(bundle_app, name="bundle")
