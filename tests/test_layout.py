"""The house rules that keep a Mac, a CUDA container and a CI box importing the same packages:
no heavy dependency at import time, and imports pointing the way ARCHITECTURE.md says."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "mlx", "sky", "transformers", "trl", "datasets", "docker", "peft", "vllm", "deepspeed")

# folder -> the project packages it may import (trainer: none of mac, jobs, images)
ALLOWED = {"trainer": {"trainer"}, "mac": {"mac", "trainer"}, "images": {"images", "trainer"},
           "jobs": {"jobs", "trainer", "mac", "images"}}


def test_importing_every_package_and_the_cli_pulls_in_no_heavy_dependency():
    code = ("import sys, trainer, trainer.spec, trainer.bundle, trainer.store, trainer.run, trainer.rewards, mac, "
            "mac.cli, mac.mlx_cli, jobs, jobs.cli, images, images.cli\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_imports_point_the_way_the_architecture_says():
    wrong = []
    for folder, allowed in ALLOWED.items():
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                for name in names:
                    top = name.split(".")[0]
                    if top in ALLOWED and top not in allowed:
                        wrong.append(f"{path.relative_to(REPO)} imports {name}")
    # mac may use trainer's spec, bundle and store, plus the pure metric/answer functions it shares
    mac_allowed = {"trainer.spec", "trainer.bundle", "trainer.store", "trainer.answers", "trainer.metrics",
                   "trainer.textio"}
    for path in (REPO / "mac").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trainer":
                modules = [f"trainer.{a.name}" for a in node.names] if node.module == "trainer" else [node.module]
                wrong += [f"{path.relative_to(REPO)} imports {m}" for m in modules if m not in mac_allowed]
    assert wrong == []
