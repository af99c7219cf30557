"""The CLI's printing layer: the rich consoles, `.env` loading, the one `fail()`, the one way an error
is reported (masked, one message, its exit code), and the store option every command shares.

What an error means (its exit code and words) is decided in trainer.errors, so the trainer's node
entry and `ft` agree; this module only prints it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.text import Text

from trainer import settings
from trainer.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_RETRYABLE, describe, mask_secrets

console = Console()
err_console = Console(stderr=True)
DEFAULT_STORE = settings.DEFAULT_STORE

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "EXIT_RETRYABLE", "DEFAULT_STORE", "console",
           "err_console", "fail", "report_error", "resolve_store", "store_option", "check_store", "load_dotenv"]


def load_dotenv(path: str | Path = ".env") -> None:
    """Read `.env` when present; variables already set in the environment win."""
    if Path(path).is_file():
        from dotenv import load_dotenv as _load

        _load(path, override=False)


def print_error(message: str) -> None:
    """`error: MESSAGE` on stderr, secrets masked; the message is plain text, never rich markup."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", mask_secrets(message)), highlight=False,
                      soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print an error and end the command with `code` (1 failed, 2 bad input, 75 retryable)."""
    import typer

    print_error(message)
    raise typer.Exit(code)


def report_error(error: BaseException) -> int | None:
    """Print an error a person can act on (trainer.errors.describe) and return its exit code; None, and
    nothing printed, for a bug, which keeps its traceback."""
    found = describe(error)
    if found is None:
        return None
    code, message = found
    print_error(message)
    return code


# ------------------------------------------------------------------------------ the store
def check_store(uri: str, what: str = "--store") -> str:
    """A store URI as every command takes it: `s3://bucket/prefix` or a local path (exit 2 otherwise)."""
    from trainer.spec import store_uri_problem

    problem = store_uri_problem(uri)
    if problem:
        fail(f"{what} {uri!r}: {problem}", EXIT_BAD_INPUT)
    return uri


def resolve_store(option: str | None) -> str:
    """The one store rule: --store, else $FT_STORE, else ./outputs/store; checked."""
    if option:
        return check_store(option, "--store")
    env = settings.store()
    if env:
        return check_store(env, "FT_STORE")
    return DEFAULT_STORE


def store_option(help_text: str = "store of runs named by bare id (default: $FT_STORE, else ./outputs/store)"):
    """The `--store` option of every command that takes one; resolve with `resolve_store`."""
    import typer

    return typer.Option(None, "--store", help=help_text, show_default=False)
