"""The errors we explain. Each carries the exit code that tells a person, a script and SkyPilot's
recovery what to do next; anything else that escapes is a bug and keeps its traceback.

    0   success
    1   failed: the work ran and its result says no (e.g. `ft validate` found errors)
    2   bad input: spec, bundle, data, a name or a setting; a retry will not fix it
    3   stopped on purpose: the run's budget (resources.max_cost_usd) was reached
    75  retryable: store, network, Hub or SkyPilot unreachable, or the node was preempted
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BUDGET = 3
EXIT_RETRYABLE = 75


class FtError(Exception):
    """Base of every error the product raises on purpose: `exit_code` and a one-line `label`."""

    exit_code: int = EXIT_FAILED
    label: str = "error"


class BadInput(FtError, ValueError):
    """Something the user gave us is wrong; the message names the file, line or spec field."""

    exit_code = EXIT_BAD_INPUT


class Retryable(FtError, RuntimeError):
    """Infrastructure that may come back (store, network, Hub, SkyPilot, a preempted node)."""

    exit_code = EXIT_RETRYABLE
    label = "retryable"


class Stopped(FtError):
    """Stopped on purpose with its work saved (the budget); not retried."""

    exit_code = EXIT_BUDGET
    label = "stopped"


def exit_code_of(error: BaseException) -> int | None:
    """The exit code of an error we raised on purpose, anywhere in its cause chain; None for a bug."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 10:
        if isinstance(current, FtError):
            return current.exit_code
        seen.append(current)
        current = current.__cause__ or current.__context__
    return None
