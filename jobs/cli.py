"""`ft`: the command line. A thin layer: each area registers its own commands from plain functions
(`mac.cli`, `images.cli`, `jobs.cloud_cli`, `jobs.eval_cli`, `jobs.run_cli`)."""

from __future__ import annotations

import typer

from jobs import console
from mac import cli as mac_cli
from mac import mlx_cli


class App(typer.Typer):
    """The `ft` entry point: a user or infrastructure error (store, Hub, network, model size) ends in one
    line and its exit code (2 bad input, 75 retryable) instead of a traceback; bugs keep theirs."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - classified below, re-raised when not ours
            code = console.report_error(e)
            if code is None:
                raise
            raise SystemExit(code) from None


app = App(
    name="ft",
    help="Fine-tune LLMs: validate and prototype here, freeze a bundle, train on the cheapest cloud GPU.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

spec_app = typer.Typer(help="The job spec.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


@app.callback()
def _main() -> None:
    console.load_dotenv()


@spec_app.command("schema")
def spec_schema() -> None:
    """Print the job spec's JSON Schema (point your editor's YAML plugin at it)."""
    from trainer.spec import json_schema

    print(json_schema())


def _catalog_findings(spec, spec_path):
    from jobs import preflight

    return preflight.spec_findings(spec, spec_path)


def _register_all() -> None:
    from images import cli as images_cli
    from jobs import cloud_cli, eval_cli, run_cli
    from mac import validate_job

    for module in (mac_cli, mlx_cli, run_cli, eval_cli, cloud_cli, images_cli):
        module.register(app)
    if _catalog_findings not in validate_job.SPEC_CHECKS:  # `ft validate` checks accelerator names too
        validate_job.SPEC_CHECKS.append(_catalog_findings)


_register_all()

if __name__ == "__main__":
    app()
