"""`ft init math|translation`: a commented starter spec, the two use cases' settings (configs/init/), with
its data paths pointing from wherever it is written at the folder `ft data prepare TASK` fills."""

from __future__ import annotations

import os
import re
from pathlib import Path

from trainer.errors import BadInput
from trainer.spec import load_yaml, parse_spec

TEMPLATES = Path(__file__).resolve().parent.parent / "configs" / "init"
# where `ft data prepare TASK` writes by default, relative to the directory it runs in
PREPARED = {"math": Path("data/processed/math"), "translation": Path("data/processed/korean_english")}
PLACEHOLDER = "__DATA__"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def job_name_from(out: Path) -> str | None:
    """`configs/my_math_job.yaml` → `my-math-job`, when that is a valid job name."""
    name = out.stem.lower().replace("_", "-").replace(".", "-")
    return name if _NAME.fullmatch(name) else None


def render(task: str, out: Path, cwd: Path | None = None) -> str:
    """The template's text for a spec written at `out`; checked against the spec model before it is returned."""
    template = TEMPLATES / f"{task}.yaml"
    if task not in PREPARED or not template.is_file():
        raise BadInput(f"no starter spec for {task!r}; choose {' or '.join(PREPARED)}")
    data_dir = (cwd or Path.cwd()) / PREPARED[task]
    rel = Path(os.path.relpath(data_dir, Path(out).resolve().parent)).as_posix()
    text = template.read_text(encoding="utf-8").replace(PLACEHOLDER, rel).replace("THIS_FILE", str(out))
    name = job_name_from(Path(out))
    if name:
        text = re.sub(r"(?m)^name: \S+", f"name: {name}", text, count=1)
    parse_spec(load_yaml(text, str(out)), str(out), text)  # a template that drifted from the spec fails here
    return text


def write_starter(task: str, out: Path, force: bool = False) -> Path:
    """Write the starter spec; BadInput when `out` exists (unless `force`) or is a folder."""
    out = Path(out)
    if out.is_dir():
        raise BadInput(f"{out} is a folder; give the spec's file name, e.g. {out / (task + '.yaml')}")
    if out.exists() and not force:
        raise BadInput(f"{out} exists; pass --force to overwrite it")
    text = render(task, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
