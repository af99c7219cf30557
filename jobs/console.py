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
