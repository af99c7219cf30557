"""Shared CLI plumbing: the rich console, `.env` loading, secret masking, exit codes for errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

SECRET_NAMES = ("HF_TOKEN", "WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def load_dotenv(path: str | Path = ".env") -> None:
    """Read `.env` when present; variables already set in the environment win."""
    if Path(path).is_file():
        from dotenv import load_dotenv as _load

        _load(path, override=False)


def mask_secrets(text: str) -> str:
    """Replace the values of known secret variables found in `text` with ***."""
    for name in SECRET_NAMES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return re.sub(r"(hf_[A-Za-z0-9]{8})[A-Za-z0-9]+", r"hf_***", text)


def fail(message: str, code: int = 1) -> None:
    """Print an error and exit with `code` (1: bad input, 2: usage)."""
    import typer

    err_console.print(f"[bold red]error:[/] {mask_secrets(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# ------------------------------------------------------------------------------ exit codes
EXIT_OK, EXIT_BAD_INPUT, EXIT_RETRYABLE = 0, 2, 75  # the trainer's codes, shared by every command
DEFAULT_STORE = "./outputs/store"
_HUB_BAD_INPUT = ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "EntryNotFoundError",
                  "LocalEntryNotFoundError", "RemoteEntryNotFoundError", "HFValidationError", "DisabledRepoError",
                  "LocalTokenNotFoundError")
_NETWORK = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "ConnectError", "TimeoutException",
            "NetworkError", "RemoteProtocolError", "ApiServerConnectionError", "ServerTemporarilyUnavailableError")


def _chain(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while error is not None and error not in out and len(out) < 10:
        out.append(error)
        error = error.__cause__ or error.__context__
    return out


def first_line(error: BaseException, limit: int = 400) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:limit]


def classify(error: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for a user or infrastructure error; None for anything else (a bug,
    which keeps its traceback). 2: bad input that a retry will not fix; 75: retryable."""
    from trainer.store import StoreError, StoreUnavailable

    chain = _chain(error)
    names = [type(e).__name__ for e in chain]
    for e in chain:
        if isinstance(e, StoreUnavailable):
            return EXIT_RETRYABLE, f"store unavailable (retryable): {first_line(e)}"
        if isinstance(e, StoreError):
            return EXIT_BAD_INPUT, f"store error: {first_line(e)}"
    try:
        from jobs.gpu_fit import ModelSizeError
    except ImportError:  # pragma: no cover
        ModelSizeError = ()  # noqa: N806
    for e in chain:
        if isinstance(e, ModelSizeError):
            return EXIT_BAD_INPUT, first_line(e)
    if "OfflineModeIsEnabled" in names or any(type(e).__name__ in _HUB_BAD_INPUT for e in chain) and \
            os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return EXIT_BAD_INPUT, (f"not in the Hugging Face cache and HF_HUB_OFFLINE is set: {first_line(chain[0])} "
                                "— run once online to cache it, or check the name")
    for e, name in zip(chain, names, strict=True):
        if name in _NETWORK or isinstance(e, TimeoutError | ConnectionError):
            return EXIT_RETRYABLE, f"network unavailable (retryable, {name}): {first_line(chain[0])}"
    for e, name in zip(chain, names, strict=True):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if name in ("HfHubHTTPError", "HTTPError", "BadRequestError") and isinstance(status, int) and \
                (status >= 500 or status == 429):
            return EXIT_RETRYABLE, f"Hugging Face Hub unavailable (retryable, HTTP {status}): {first_line(e)}"
        if name in _HUB_BAD_INPUT:
            return EXIT_BAD_INPUT, (f"model or file not available ({name}): {first_line(e)} — check the name, "
                                    "or run once online to cache it")
        if name in ("HfHubHTTPError", "HTTPError", "BadRequestError") and isinstance(status, int):
            return EXIT_BAD_INPUT, f"Hugging Face Hub refused (HTTP {status}): {first_line(e)}"
    if isinstance(error, OSError) and ("huggingface" in str(error).lower() or "hub" in str(error).lower()):
        return EXIT_BAD_INPUT, f"model not available: {first_line(error)}"
    return None


def report_error(error: BaseException) -> int | None:
    """Print a classified error on one line; its exit code, or None when it is not ours to explain."""
    found = classify(error)
    if found is None:
        return None
    code, line = found
    err_console.print(f"[bold red]error:[/] {mask_secrets(line)}", highlight=False, soft_wrap=True)
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
    env = os.environ.get("FT_STORE")
    if env:
        return check_store(env, "FT_STORE")
    return DEFAULT_STORE


def store_option(help_text: str = "store of runs named by bare id (default: $FT_STORE, else ./outputs/store)"):
    """The `--store` option of every command that takes one; resolve with `resolve_store`."""
    import typer

    return typer.Option(None, "--store", help=help_text, show_default=False)
