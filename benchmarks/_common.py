"""Shared by the benchmark scripts: where the full data lives, and running a measurement in a fresh
process so its peak memory (max RSS) is its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
SAMPLES = REPO / "data" / "samples"


def gsm8k_source() -> Path:
    """The full GSM8K in ../shared/data when present, else the sample shipped in the repo."""
    return SHARED / "gsm8k" if (SHARED / "gsm8k" / "train.jsonl").exists() else SAMPLES / "gsm8k"


def measure(code: str, *args: str) -> dict:
    """Run `code` (which prints one JSON object last) in a new interpreter; add its peak RSS in MB."""
    wrapper = (
        "import json, resource, sys\n"
        f"{code}\n"
        "out = main(*sys.argv[1:])\n"
        "out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])
