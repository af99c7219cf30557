"""A preemption notice becomes a checkpoint.

SIGTERM (a spot reclaim, `docker stop`, a Kubernetes eviction) sets a flag; at the end of the
current optimizer step every rank agrees to save a checkpoint, the store callback uploads it marker
last, and the trainer exits 75 (retryable). A deadline (`FT_SIGTERM_GRACE_S`, 45 s by default:
`docker stop` here waits 60 s) or a second SIGTERM exits 75 at once: the checkpoint being uploaded
then has no marker and is never taken for complete. SIGTERM outside the training loop (loading,
sampling, the final upload) exits 75 at once: nothing would be saved by waiting.

`save_every_minutes` on a stage adds time-based checkpoints, bounding what a kill -9 (no notice at
all) can lose to that many minutes, whatever `save_steps` says.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from trainer import settings
from trainer.errors import EXIT_RETRYABLE, Retryable


class Preempted(Retryable):
    """Training stopped on SIGTERM after its checkpoint reached the store."""

    label = "preempted"


class PreemptionGuard:
    """Process-wide: one SIGTERM handler, whatever stage is running."""

    def __init__(self, on_exit: Callable[[int], None] | None = None):
        self.requested = False
        self.in_training = False
        self.grace = settings.sigterm_grace_s()
        self.on_exit = on_exit  # e.g. write FT_EXIT_CODE_FILE before the hard exit

    def install(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _exit_now(self, why: str) -> None:
        print(f"preempted: {why}; exit {EXIT_RETRYABLE}", file=sys.stderr, flush=True)
        if self.on_exit:
            self.on_exit(EXIT_RETRYABLE)
        os._exit(EXIT_RETRYABLE)

    def _on_signal(self, signum, frame) -> None:
        if self.requested:
            self._exit_now("second SIGTERM, not waiting for the checkpoint")
        self.requested = True
        if not self.in_training:
            self._exit_now("SIGTERM outside the training loop")
        print(f"SIGTERM: saving a checkpoint at the end of this step (deadline {self.grace:.0f} s)",
              file=sys.stderr, flush=True)
        timer = threading.Timer(self.grace, self._exit_now, [f"no checkpoint within {self.grace:.0f} s"])
        timer.daemon = True
        timer.start()
