"""Fault injection for rehearsing preemption (`FT_FAULT`, comma-separated), used by the tests and by
anyone who wants to see a recovery happen on purpose. Each fault fires once per process:

    kill-after-checkpoint      kill -9 this process right after a checkpoint is complete in the store
    kill-mid-upload            kill -9 it half-way through a checkpoint's upload (no marker yet)
    sigterm-at-step=N          send this process SIGTERM as its N-th training step (counted here) begins
    sigterm-twice-at-step=N    the same, twice in a row (the second must not wait for the checkpoint)
"""

from __future__ import annotations

import os
import signal


def _faults() -> dict[str, str]:
    out = {}
    for item in filter(None, (os.environ.get("FT_FAULT") or "").split(",")):
        name, _, value = item.strip().partition("=")
        out[name] = value
    return out


def active(name: str) -> str | None:
    """The fault's value ('' when it takes none), or None when it is not set."""
    return _faults().get(name)


def kill9() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sigterm(times: int = 1) -> None:
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGTERM)
