"""Workstation commands: `ft data prepare`, `ft validate`, `ft bundle` (and `ft bundle verify`)."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

console = Console()
err = Console(stderr=True)

EXIT_INVALID = 1  # the data or spec has errors
EXIT_USAGE = 2


class Task(str, Enum):
    math = "math"
    translation = "translation"


class DataKind(str, Enum):
    sft = "sft"
    dpo = "dpo"
    grpo = "grpo"
    test = "test"


def _die(message: str, code: int = EXIT_INVALID) -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def data_prepare(
    task: Task = typer.Argument(..., help="math (GSM8K → SFT, DPO pairs, GRPO prompts) or translation (ko→en)"),
    source: str = typer.Option("hub", help="`hub` (Hugging Face datasets) or a local folder"),
    full: bool = typer.Option(False, "--full", help="everything, not the prototyping subset"),
    out: Path = typer.Option(None, help="output folder (default data/processed/math or data/processed/korean_english)"),
    limit: int = typer.Option(None, help="cap the training rows"),
    test_limit: int = typer.Option(None, help="cap the test rows"),
    seed: int = typer.Option(42, help="seed of the deterministic splits"),
) -> None:
    """Prepare training data: ChatML SFT rows, DPO pairs, GRPO prompts and a held-out test set."""
    from mac.data_prep import DataSourceError, prepare_math, prepare_translation

    out = out or Path("data/processed") / ("math" if task == Task.math else "korean_english")
    prepare = prepare_math if task == Task.math else prepare_translation
    try:
        with console.status(f"preparing {task.value} data from {source} …"):
            result = prepare(source, out, full=full, limit=limit, test_limit=test_limit, seed=seed)
    except (DataSourceError, FileNotFoundError) as e:
        _die(str(e))
    except ConnectionError as e:
        _die(f"cannot reach the Hugging Face Hub ({e}); pass --source FOLDER for local files")
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


def _print_prototype_map(spec) -> None:
    try:
        from mac.prototype_map import prototype_mapping
    except ImportError:
        return
    if spec.prototype is None:
        return
    table = Table(title="prototype (MLX) → GPU run")
    for col in ("setting", "MLX prototype", "GPU run", "note"):
        table.add_column(col)
    for setting, mlx_value, gpu_value, warning in prototype_mapping(spec):
        table.add_row(setting, str(mlx_value), str(gpu_value), f"[yellow]{warning}[/]" if warning else "")
    console.print(table)


def validate(
    config: Path = typer.Argument(None, help="job spec YAML; checks the spec and every data file it names"),
    data: Path = typer.Option(None, "--data", help="check one data file alone"),
    kind: DataKind = typer.Option(None, "--kind", help="kind of --data file"),
    task: Task = typer.Option(Task.math, "--task", help="task of --data (math answers must be parseable)"),
    tokenizer: str = typer.Option(None, "--tokenizer", help="tokenizer (Hub id, folder, builtin:smollm2-135m)"),
    max_length: int = typer.Option(None, "--max-length", help="count rows longer than this many tokens"),
    test_file: Path = typer.Option(None, "--test-file", help="test set to check --data for overlap against"),
    strict: bool = typer.Option(False, "--strict", help="warnings fail too"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable report on stdout"),
) -> None:
    """Check a job spec and its data, or one data file. Exit 0 clean, 1 on errors, 2 on usage errors."""
    from mac.validate_job import JobReport, validate_data, validate_job

    if (config is None) == (data is None):
        _die("give either CONFIG or --data FILE --kind KIND", EXIT_USAGE)
    if data is not None and kind is None:
        _die("--data needs --kind sft|dpo|grpo|test", EXIT_USAGE)
    if config is not None and not config.is_file():
        _die(f"{config}: file not found", EXIT_USAGE)
    progress = Progress(TextColumn("validating"), BarColumn(), TextColumn("{task.completed} rows"),
                        TimeElapsedColumn(), console=err, transient=True, disable=as_json)
    with progress:
        task_id = progress.add_task("rows", total=None)

        def advance(n: int) -> None:
            progress.advance(task_id, n)

        if config is not None:
            report = validate_job(config, on_progress=advance)
        else:
            file_report = validate_data(data, kind.value, task.value, tokenizer, max_length, test_file, advance)
            report = JobReport(spec_file="", files=[file_report])
    failed = report.errors > 0 or (strict and report.warnings > 0)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_reports(report.files, report.spec_findings)
        if report.spec is not None:
            _print_prototype_map(report.spec)
        verdict = "[red]FAILED[/]" if failed else "[green]OK[/]"
        console.print(f"{verdict}: {report.errors} errors, {report.warnings} warnings")
    if failed:
        raise typer.Exit(EXIT_INVALID)


def bundle(
    target: str = typer.Argument(..., help="job spec YAML, or the word `verify`"),
    path: str = typer.Argument(None, help="with `verify`: a bundle folder or store URI"),
    out: Path = typer.Option(Path("outputs/bundles"), help="where bundles are written"),
    push: str = typer.Option(None, help="also upload to this store (s3://bucket/prefix or a folder)"),
    prototype_dir: Path = typer.Option(None, help="prototype results (default outputs/mlx/<name>)"),
    as_json: bool = typer.Option(False, "--json", help='print {"bundle_id": ..., "path": ...}'),
) -> None:
    """Freeze a job bundle (validates first), or `ft bundle verify PATH_OR_URI`."""
    from trainer.bundle import BundleError, fetch_bundle, push_bundle, write_bundle

    if target == "verify":
        if not path:
            _die("usage: ft bundle verify PATH_OR_URI", EXIT_USAGE)
        try:
            b = fetch_bundle(path, progress=not as_json, use_cache=False)  # the remote objects, not a warm copy
        except (BundleError, FileNotFoundError) as e:
            _die(str(e))
        if as_json:
            print(json.dumps({"bundle_id": b.bundle_id, "path": str(b.path), "verified": True}))
        else:
            console.print(Text.assemble(("verified", "green"), f" {len(b.manifest['files'])} files, bundle "
                                        f"{b.bundle_id[:12]} at {b.path}"))
        return
    from mac.validate_job import validate_job

    config = Path(target)
    if not config.is_file():
        _die(f"{config}: file not found", EXIT_USAGE)
    with console.status("validating …") if not as_json else _null():
        report = validate_job(config)
    if report.errors:
        if not as_json:
            _print_reports(report.files, report.spec_findings)
        _die(f"{config}: {report.errors} validation errors; no bundle written")
    spec = report.spec
    proto = prototype_dir or Path(os.environ.get("FT_MLX_OUTPUTS", "outputs/mlx")) / spec.name
    b = write_bundle(spec, config.parent, out, prototype_dir=proto)
    uri = push_bundle(b, push, progress=not as_json) if push else None
    if as_json:
        print(json.dumps({"bundle_id": b.bundle_id, "path": str(b.path), **({"uri": uri} if uri else {})}))
    else:
        console.print(f"[green]bundle[/] {b.bundle_id[:12]} → {escape(str(b.path))}")
        if b.prototype_adapter:
            console.print(f"  includes the prototype adapter (PEFT) from {escape(str(proto))}")
        if uri:
            console.print(f"  pushed → {escape(uri)}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Data preparation.", no_args_is_help=True)
    data_app.command("prepare")(data_prepare)
    app.add_typer(data_app, name="data")
    app.command("validate")(validate)
    app.command("bundle")(bundle)
