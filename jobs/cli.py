"""`ft`: the command line. A thin layer: each area registers its commands from plain functions with one
`register(app)` (`mac.cli`, `mac.mlx_cli`, `jobs.run_cli`, `jobs.eval_cli`, `jobs.cloud_cli`, `jobs.rehearse_cli`,
`images.cli`), and the one error boundary below turns every error a person can act on into one
masked message and its exit code."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from jobs import console


class ErrorBoundary(TyperGroup):
    """The root command group of `ft`: a user or infrastructure error raised anywhere below (a spec, a
    bundle, the store, the Hub, the network, SkyPilot) ends in one line and its exit code (2 bad input,
    75 retryable, 3 stopped) instead of a traceback; a bug keeps its traceback. Living on the click
    group, it covers `ft …` and tests that invoke the app alike."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # typer's own control flow and usage errors
            raise
        except Exception as e:  # noqa: BLE001 - described below, re-raised when not ours
            code = console.report_error(e)
            if code is None:
                raise
            raise typer.Exit(code) from None


# Help is written as paragraphs; markdown mode joins a paragraph's lines so rich wraps it to the terminal.
app = typer.Typer(
    cls=ErrorBoundary,
    name="ft",
    help="Fine-tune LLMs: validate and prototype here, freeze a bundle, train on the cheapest cloud GPU.\n\n"
         "Exit codes: 0 ok, 1 failed (a check said no), 2 bad input, 3 stopped at the budget, 75 retryable.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


@app.callback()
def _main() -> None:
    console.load_dotenv()


def spec_schema() -> None:
    """Print the job spec's JSON Schema (point your editor's YAML plugin at it)."""
    from trainer.spec import json_schema

    print(json_schema())


def _catalog_findings(spec, spec_path):
    from jobs import preflight

    return preflight.spec_findings(spec, spec_path)


def _register_all() -> None:
    from images import cli as images_cli
    from jobs import cloud_cli, eval_cli, rehearse_cli, run_cli
    from mac import cli as mac_cli
    from mac import mlx_cli, validate_job

    spec_app = typer.Typer(help="The job spec.", no_args_is_help=True)
    spec_app.command("schema")(spec_schema)
    app.add_typer(spec_app, name="spec")
    for module in (mac_cli, mlx_cli, run_cli, eval_cli, cloud_cli, rehearse_cli, images_cli):
        module.register(app)
    if _catalog_findings not in validate_job.SPEC_CHECKS:  # `ft validate` checks accelerator names too
        validate_job.SPEC_CHECKS.append(_catalog_findings)


_register_all()

if __name__ == "__main__":
    app()
