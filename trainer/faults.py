"""Fault injection for rehearsing preemption (`FT_FAULT`, comma-separated), used by the tests and by
anyone who wants to see a recovery happen on purpose. Each fault fires once per process:

    kill-after-checkpoint      kill -9 this process right after a checkpoint is complete in the store
    kill-mid-upload            kill -9 it half-way through a checkpoint's upload (no marker yet)
    hold-after-checkpoint=N    the head node stops (sleeps) once checkpoint N is sealed, so a rehearsal can
                               kill every node at that exact point (`ft rehearse --preempt`)
    sigterm-at-step=N          send this process SIGTERM as its N-th training step begins (counted over
                               all the stages this process trains)
    sigterm-twice-at-step=N    the same, twice in a row (the second must not wait for the checkpoint)
"""

from __future__ import annotations

import os
import signal

from trainer import settings


def _faults() -> dict[str, str]:
    out = {}
    for item in filter(None, settings.faults().split(",")):
        name, _, value = item.strip().partition("=")
        out[name] = value
    return out


def active(name: str) -> str | None:
    """The fault's value ('' when it takes none), or None when it is not set."""
    return _faults().get(name)


_steps_begun = 0


def step_begins() -> None:
    """Called as each training step begins: fires the SIGTERM faults."""
    global _steps_begun
    _steps_begun += 1
    for name, times in (("sigterm-at-step", 1), ("sigterm-twice-at-step", 2)):
        at = active(name)
        if at and int(at) == _steps_begun:
            sigterm(times)


def hold() -> None:
    import time

    while True:
        time.sleep(60)


def kill9() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sigterm(times: int = 1) -> None:
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGTERM)
