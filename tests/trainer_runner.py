"""Run the trainer's entry point (`trainer.pipeline.main`, what `python -m trainer` calls) in a process of
its own, forked from a server that imported torch, transformers, TRL and the trainer once.

The kill tests start ~30 trainer processes; a fresh interpreter spends ~15 s of each importing
torch/transformers/TRL on these 2 cores. A forked child is still a separate process with its own
memory, signals and exit status, so kill -9, SIGTERM and exit codes behave as they do for
`python -m trainer` (a few tests still start that for real, to cover the entry point itself).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from pathlib import Path

PRELOAD = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "trainer.pipeline", "trainer.callbacks",
           "trainer.resume", "trainer.recipes.sft", "trainer.recipes.dpo", "trainer.recipes.grpo"]
_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(argv: list[str], environ: dict[str, str], log: str) -> None:
    import sys

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.clear()
    os.environ.update(environ)
    from trainer.pipeline import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_main(argv: list[str], environ: dict[str, str], log: Path, timeout: float = 900
             ) -> subprocess.CompletedProcess:
    """`trainer.pipeline.main(argv)` in a forked process; returncode is its exit status (-N for signal N),
    stderr what it printed (stdout and stderr together)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    process = _forkserver().Process(target=_child, args=(argv, environ, str(log)))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"trainer {argv} ran past {timeout} s: {log.read_text()[-2000:]}")
    return subprocess.CompletedProcess(argv, process.exitcode, "", log.read_text(errors="replace"))
