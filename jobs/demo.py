"""`ft demo`: the whole flow of the product in one command, offline on a CPU with the built-in
SmolLM2-135M, for either use case (`--task math`: GSM8K SFT → DPO → GRPO; `--task translation`: ko→en
SFT → chrF-rewarded GRPO):

    data → validate → MLX prototype (mlx-lm) → adapter MLX → PEFT → bundle (with the prototype) →
    train (SFT continuing the prototype's adapter, then the other stages) → evaluate base, prototype
    and every stage → merge → the serving plan (SkyServe task, not launched) → report → summary

Each step is a plain function over one `Demo` state, so a test runs the very step list on a tiny
model. Every step says what it did and where its output is; one progress bar per step (the Hugging
Face / TRL / datasets bars are silenced while it runs, see `quiet_hf`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mac.data_prep import DEMO_DATA, DEMO_SAMPLE, PrepResult, prepare_demo_data, prepare_translation
from trainer import metric_names as m
from trainer.errors import BadInput
from trainer.run import BASE_STAGE, PROTOTYPE_STAGE, Run

OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
MERGED_ROOT = Path("outputs/merged")
SERVE_ROOT = Path("outputs/serve")
KO_EN_SAMPLE = Path("data/samples/ko-en")
KO_EN_DATA = Path("data/processed/demo_translation")


# ------------------------------------------------------------------------------- the two tasks
def prepare_translation_demo_data(root: Path = Path(".")) -> PrepResult:
    """The data `configs/demo_translation.yaml` names: the shipped ko–en sample, prepared as
    `ft data prepare translation --source data/samples/ko-en` does, cut small."""
    return prepare_translation(str(root / KO_EN_SAMPLE), root / KO_EN_DATA, limit=200, test_limit=50)


@dataclass(frozen=True)
class DemoTask:
    name: str
    config: Path
    sample: Path
    prepare: Callable[[], PrepResult]
    data_line: str  # what the data step makes, for its heading


TASKS = {
    "math": DemoTask("math", Path("configs/demo.yaml"), DEMO_SAMPLE, prepare_demo_data,
                     "the bundled GSM8K sample → SFT rows, DPO pairs, GRPO prompts, test set"),
    "translation": DemoTask("translation", Path("configs/demo_translation.yaml"), KO_EN_SAMPLE,
                            prepare_translation_demo_data,
                            "the shipped Korean–English sample → SFT rows, GRPO prompts, test set"),
}


def task_named(name: str) -> DemoTask:
    if name not in TASKS:
        raise BadInput(f"--task {name!r}: choose {' or '.join(TASKS)}")
    task = TASKS[name]
    if not task.config.is_file() or not task.sample.is_dir():
        raise BadInput(f"{task.config} or {task.sample} not found: run `ft demo` (or `make demo`) from the "
                       "repository root")
    return task


# ------------------------------------------------------------------------------------ the state
@dataclass
class Demo:
    """What the steps share: the inputs, and what each step leaves for the next ones."""

    task: DemoTask
    store: str
    overrides: list[str] = field(default_factory=list)
    fresh: bool = False
    console: Console = field(default_factory=Console)
    bundles: Path = Path("outputs/bundles")
    merged_root: Path = MERGED_ROOT
    serve_root: Path = SERVE_ROOT
    # filled in by the steps
    report: Any = None  # mac.validate_job.JobReport
    prototype_dir: Path | None = None
    bundle: Any = None  # trainer.bundle.Bundle
    run: Run | None = None
    comparison: dict[str, Any] = field(default_factory=dict)
    merged: str | None = None
    serve_yaml: Path | None = None
    report_uri: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def spec(self) -> Any:
        return self.report.spec

    def progress(self, *extra: Any) -> Progress:
        """One progress display per step: a line per item (a stage, a model), its stats on the right."""
        return Progress(TextColumn("  [bold blue]{task.description:<10}"), BarColumn(bar_width=30),
                        MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[stats]}"), *extra,
                        console=self.console)


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[Demo], str]  # does the step, returns one line: what it did and where the output is


# ------------------------------------------------------------------------------------ the steps
def step_data(demo: Demo) -> str:
    prep = demo.task.prepare()
    counts = ", ".join(f"{k.removesuffix('.jsonl')} {v}" for k, v in prep.counts.items())
    return f"{counts} → {prep.out_dir}/"


def _convert_builtin_model(demo: Demo) -> None:
    """Once per machine, before validate (which reads the tokenizer the trainer runs): the built-in model
    from GGUF to a safetensors folder, its tqdm bars (the GGUF reader's, the shard writer's) under one
    status line. A spec that does not load is left to validate to report."""
    from trainer import builtin_model
    from trainer.spec import load_spec

    try:
        base = load_spec(demo.task.config, demo.overrides).model.base
    except Exception:  # noqa: BLE001 - validate reports it, with file and field
        return
    if not builtin_model.is_builtin(base) or builtin_model.converted():
        return
    with demo.console.status(f"converting {base} (GGUF → safetensors, once per machine)"), quiet_hf(demo), \
            contextlib.redirect_stderr(io.StringIO()):
        folder = builtin_model.materialize()
    demo.console.print(f"  converted {base} for transformers → {folder}", highlight=False)


def step_validate(demo: Demo) -> str:
    from mac.validate_job import validate_job

    _convert_builtin_model(demo)
    with demo.console.status(f"ft validate {demo.task.config}"), quiet_hf(demo):
        report = validate_job(demo.task.config, overrides=demo.overrides)
    demo.report = report
    if report.errors or report.spec is None:
        from mac.freeze import FreezeRefused

        for f in (report.spec_findings + [f for r in report.files for f in r.findings])[:20]:
            demo.console.print(str(f), style="red", markup=False, highlight=False)
        raise FreezeRefused(demo.task.config, report)
    rows = sum(r.rows for r in report.files)
    return (f"{demo.task.config}: {rows} rows in {len(report.files)} files, {report.errors} errors, "
            f"{report.warnings} warnings (details: ft validate {demo.task.config} --verbose)")


def _mlx_env() -> dict[str, str]:
    """MLX on Linux is ~10× faster with OpenBLAS preloaded; the prototype runs in its own process for
    that (preloading it into this torch process is not ours to decide)."""
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")  # its tokenizer notes are not the demo's business
    if sys.platform == "linux" and Path(OPENBLAS).exists() and OPENBLAS not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (OPENBLAS, env.get("LD_PRELOAD")) if p)
    return env


def _ft(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", *args]


def step_prototype(demo: Demo) -> str:
    """`ft model convert` (once) and `ft prototype`, as a user runs them on a Mac; the prototype's own
    base-vs-adapter check is skipped (`--max-samples 0`): the evaluate step scores its adapter on the
    same test rows and with the same generation as every other stage."""
    from mac.freeze import prototype_dir_for
    from mac.prototype import resolve_model
    from trainer.builtin_model import is_builtin

    spec, spec_dir = demo.spec, demo.task.config.resolve().parent
    model = Path(spec.prototype.model)
    model = model if model.is_absolute() else spec_dir / model
    if not model.exists() and is_builtin(spec.model.base):
        from mac.mlx_convert import convert_model

        with demo.console.status(f"ft model convert {spec.model.base} --out {model}"), quiet_hf(demo), \
                contextlib.redirect_stdout(io.StringIO()):  # mlx-lm's own "[INFO] Loading" lines
            convert_model(spec.model.base, model)
        demo.console.print(f"  converted {spec.model.base} for MLX → {resolve_model(spec, spec_dir)}")
    command = _ft("prototype", str(demo.task.config), *demo.overrides, "--max-samples", "0")
    demo.console.print(f"  [dim]$ ft prototype {demo.task.config} {' '.join(demo.overrides)} --max-samples 0[/]")
    demo.console.file.flush()
    done = subprocess.run(command, env=_mlx_env())  # its own bars and table, on this terminal
    if done.returncode:
        raise BadInput(f"ft prototype {demo.task.config} failed (exit {done.returncode}; its message is above)")
    demo.prototype_dir = prototype_dir_for(spec.name)
    metrics = json.loads((demo.prototype_dir / "metrics.json").read_text())
    t = metrics["train"]
    val = (f", validation loss {t['first_val_loss']:.3f} → {t['final_val_loss']:.3f}"
           if t.get("final_val_loss") is not None else "")
    return (f"mlx-lm LoRA, {metrics['settings']['iters']} iterations on the last {metrics['settings']['num_layers']} "
            f"layers{val} ({t['seconds']:.0f} s) → {demo.prototype_dir}/adapters/")


def step_adapter(demo: Demo) -> str:
    """What `ft prototype` converted (mac/adapter_convert.mlx_to_peft): the form the GPU run loads."""
    assert demo.prototype_dir is not None
    peft_dir = demo.prototype_dir / "peft_adapter"
    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    layers = cfg.get("layers_to_transform") or []
    span = f"layers {layers[0]}–{layers[-1]}" if layers else "all layers"
    return (f"MLX lora_a/lora_b → PEFT lora_A/lora_B (transposed), r={cfg['r']} lora_alpha={cfg['lora_alpha']:g}, "
            f"{span} → {peft_dir}/")


def step_bundle(demo: Demo) -> str:
    from mac.freeze import freeze

    frozen = freeze(demo.task.config, demo.overrides, out=demo.bundles, report=demo.report,
                    prototype_dir=demo.prototype_dir, progress=False)
    demo.bundle = frozen.bundle
    has_proto = frozen.bundle.prototype_adapter is not None
    return (f"bundle {frozen.bundle.bundle_id[:12]} (spec, data, hashes"
            f"{', prototype adapter + metrics' if has_proto else ''}) → {frozen.bundle.path}")


def step_train(demo: Demo) -> str:
    from trainer.pipeline import run_bundle

    run_id = f"{demo.spec.name}-{demo.bundle.bundle_id[:8]}" + (f"-{int(time.time())}" if demo.fresh else "")
    with quiet_hf(demo, run_prefix=f"{run_id}-"):
        demo.run = run_bundle(str(demo.bundle.path), run_id=run_id, store_uri=demo.store)
    _record_cloud_estimate(demo.run, demo.spec, demo.task.config.parent)
    record = demo.run.read_record()
    done = [f"{name} {entry.get('steps', '?')} steps" for name, entry in record.get("stages", {}).items()]
    return f"{', '.join(done)} → {demo.run.url(demo.run.root)}/"


def step_evaluate(demo: Demo) -> str:
    from trainer.evaluate import evaluate_run, task_of

    run = demo.run
    assert run is not None
    stages = [BASE_STAGE] + ([PROTOTYPE_STAGE] if run.bundle.prototype_adapter is not None else [])
    stages += run.done_stages(generating=True)
    task = task_of(run.spec)
    with demo.progress() as progress:
        bar = progress.add_task("evaluate", total=len(stages), stats=f"{stages[0]} …")

        def shown(stage: str, result: dict[str, Any]) -> None:
            progress.advance(bar)
            following = stages.index(stage) + 1 if stage in stages else len(stages)
            progress.update(bar, stats=f"{stages[following]} …" if following < len(stages) else "")
            progress.console.print(f"  {stage:>9}: {_score_line(task, result)}", highlight=False)

        with quiet_hf(demo):
            demo.comparison = evaluate_run(run, stages, lm_eval_tasks=[], on_result=shown)
    n = demo.comparison["rows"][0].get("n") if demo.comparison.get("rows") else "?"
    return f"{len(stages)} models on {n} test rows (greedy) → {run.url(run.eval_dir)}/"


def _score_line(task: str, result: dict[str, Any]) -> str:
    loss = result.get("eval_loss")
    loss_text = f"eval loss {loss:.3f}  " if isinstance(loss, int | float) else ""
    if task == "gsm8k":
        return (f"{loss_text}#### format {result.get('format_rate', 0):.0%}  format reward "
                f"{result.get('format_reward', 0):.2f}  accuracy {result.get('accuracy', 0):.1%} (n={result.get('n')})")
    return (f"{loss_text}BLEU {result.get('bleu', 0):.2f}  chrF {result.get('chrf', 0):.2f}  "
            f"TER {result.get('ter', 0):.2f} (n={result.get('n')})")


def step_merge(demo: Demo) -> str:
    from trainer.merge import merge_run

    run = demo.run
    assert run is not None
    stage = run.last_done_stage()
    out = demo.merged_root / run.run_id
    with demo.console.status(f"ft merge {run.run_id} --stage {stage} --out {out}"), quiet_hf(demo):
        demo.merged = merge_run(run, stage, str(out))
    size = sum(p.stat().st_size for p in Path(demo.merged).rglob("*") if p.is_file())
    return f"{stage}'s LoRA folded into the base: safetensors + tokenizer, {size / 1e6:.0f} MB → {demo.merged}/"


def step_serve(demo: Demo) -> str:
    """`ft serve up RUN --dry-run`: the SkyServe task that would run, parsed by SkyPilot itself and
    written out; nothing is launched (a replica is a cloud VM, which this offline demo has none of)."""
    import yaml

    from jobs import serve
    from jobs.launch import sky_reason

    run = demo.run
    assert run is not None
    stage = run.last_done_stage()
    envs = serve.service_envs(run, stage)
    problems = serve.check_envs(envs, serve.lora_rank_of(run, stage), run.spec.model.trust_remote_code)
    image = serve.default_image(None)
    config = serve.service_config(envs, image, run.spec.resources.accelerators, run.spec.resources.use_spot)
    try:
        serve.to_task(config)  # SkyPilot's own schema validation, as `ft serve up --dry-run` does
    except Exception as e:  # noqa: BLE001 - SkyPilot's schema errors: one line, bad input
        raise BadInput(f"SkyPilot refused the service: {sky_reason(e)}") from None
    demo.serve_root.mkdir(parents=True, exist_ok=True)
    demo.serve_yaml = demo.serve_root / f"{run.run_id}.yaml"
    demo.serve_yaml.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    accelerators = config["resources"].get("accelerators")
    gpus = ", ".join(accelerators) if isinstance(accelerators, dict) else str(accelerators)
    policy = config["service"]["replica_policy"]
    say = demo.console.print
    say(f"  [dim]$ ft serve up {run.url(run.root)} --dry-run[/]", highlight=False)
    say(f"  vLLM: {' '.join(serve.vllm_command(envs))}", highlight=False, markup=False)
    say(f"  replicas {policy.get('min_replicas')}–{policy.get('max_replicas')} on the cheapest of {gpus}"
        f"{' (spot, on-demand fallback)' if config['resources'].get('use_spot') else ''}; image {image}",
        highlight=False, markup=False)
    for p in problems:  # a local store: replicas cannot reach it, which is what the note says
        say(f"  [yellow]note:[/] {escape(p)}", highlight=False)
    return f"SkyServe task checked by SkyPilot, not launched → {demo.serve_yaml}"


def step_report(demo: Demo) -> str:
    from trainer.report import write_report

    run = demo.run
    assert run is not None
    with demo.console.status("rendering report.html"), quiet_hf(demo):
        demo.report_uri = write_report(run)
    return f"report.html (self-contained) → {demo.report_uri}"


STEPS: list[Step] = [
    Step("data", "", step_data),
    Step("validate", "spec + every data file (the model the trainer runs)", step_validate),
    Step("prototype", "LoRA SFT with mlx-lm (`ft prototype`; Metal on a Mac, the CPU here)", step_prototype),
    Step("adapter", "the MLX adapter → PEFT, for the GPU run", step_adapter),
    Step("bundle", "freeze: content-addressed, immutable, with the prototype", step_bundle),
    Step("train", "", step_train),
    Step("evaluate", "base, prototype and every stage on the same test rows", step_evaluate),
    Step("merge", "`ft merge`: one model transformers and vLLM load without PEFT", step_merge),
    Step("serve", "`ft serve up --dry-run`: the SkyServe task that would run", step_serve),
    Step("report", "`ft report`", step_report),
]


def _title(step: Step, demo: Demo) -> str:
    if step.name == "data":
        return demo.task.data_line
    if step.name == "train" and demo.spec is not None:
        stages = demo.spec.stages
        first = stages[0]
        start = " (continuing the prototype's adapter)" if getattr(first, "init_adapter", None) == "prototype" else ""
        return " → ".join(s.stage_name.upper() for s in stages) + f", LoRA on the CPU{start}"
    return step.title


def run_demo(demo: Demo, steps: list[Step] | None = None) -> Demo:
    """Every step in order, each headed and timed; then the summary."""
    steps = STEPS if steps is None else steps
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the built-in model and the samples are all on this disk
    started = time.perf_counter()
    for i, step in enumerate(steps, 1):
        demo.console.rule(f"[bold]{i}/{len(steps)} {step.name}[/]: {escape(_title(step, demo))}", align="left")
        t0 = time.perf_counter()
        line = step.run(demo)
        demo.seconds[step.name] = time.perf_counter() - t0
        demo.console.print(f"  [green]✓[/] {escape(line)}  [dim]({demo.seconds[step.name]:.0f} s)[/]",
                           highlight=False)
    demo.seconds["total"] = time.perf_counter() - started
    if demo.run is not None:
        print_summary(demo)
    return demo


# --------------------------------------------------------------------------- taming the bars
def stage_progress(progress: Progress, run_prefix: str) -> Any:
    """A TrainerCallback that draws one line per stage in the train step's progress display instead of
    tqdm's bars: steps done, and the last loss / reward / eval loss / DPO margin the trainer logged."""
    from transformers import TrainerCallback

    class StageProgress(TrainerCallback):
        task: Any = None
        stats: dict[str, str] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.stats = {}
            name = str(args.run_name or "train").removeprefix(run_prefix)
            self.task = progress.add_task(name, total=state.max_steps or None, completed=state.global_step,
                                          stats="")

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.task is not None:
                progress.update(self.task, completed=state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **_: Any) -> None:
            logs = logs or {}
            for key, label in ((m.LOSS, "loss"), ("reward", "reward"), (m.REWARD_MEAN, "reward"),
                               (m.EVAL_LOSS, "eval loss"), (m.DPO_MARGINS, "margin")):
                if isinstance(logs.get(key), int | float):
                    self.stats[label] = f"{label} {logs[key]:.3f}"
            if self.task is not None:
                progress.update(self.task, stats="  ".join(self.stats.values()))

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.task is not None:
                progress.update(self.task, completed=state.global_step, total=state.global_step or None)
            self.task = None

    return StageProgress()


@contextmanager
def quiet_hf(demo: Demo, run_prefix: str | None = None) -> Iterator[None]:
    """Silence the libraries' own bars and chatter for one step: datasets' map bars, transformers' weight
    loading bars and info logs, the hub's download bars. With `run_prefix` (the train step) the Trainer's
    tqdm bar is replaced by one line per stage in the step's progress display. All restored afterwards."""
    bnb = logging.getLogger("bitsandbytes")
    bnb_level = bnb.level
    # before transformers.trainer imports it: "Failed to load CPU gemm_4bit_forward…", an optional kernel
    bnb.setLevel(logging.ERROR)
    import datasets
    import transformers
    import transformers.trainer as hf_trainer
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    datasets_bars = datasets.utils.logging.is_progress_bar_enabled()
    verbosity = transformers.logging.get_verbosity()
    saved = hf_trainer.DEFAULT_PROGRESS_CALLBACK, hf_trainer.PrinterCallback
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    disable_progress_bars()
    ds_accelerator = os.environ.get("DS_ACCELERATOR")
    if ds_accelerator is None and not _has_accelerator():
        os.environ["DS_ACCELERATOR"] = "cpu"  # what DeepSpeed falls back to anyway, with a warning
    try:
        with warnings.catch_warnings():
            # PEFT looks for the base's config.json under the spec's name (builtin:…) when saving an adapter
            warnings.filterwarnings("ignore", message="Could not find a config file in", category=UserWarning)
            if run_prefix is None:
                yield
                return
            with demo.progress() as progress:
                line = stage_progress(progress, run_prefix)
                # The Trainer adds DEFAULT_PROGRESS_CALLBACK (tqdm), or PrinterCallback (a dict printed per
                # log) when tqdm is disabled; it looks both names up in its module when it is constructed.
                hf_trainer.DEFAULT_PROGRESS_CALLBACK = hf_trainer.PrinterCallback = line
                yield
    finally:
        hf_trainer.DEFAULT_PROGRESS_CALLBACK, hf_trainer.PrinterCallback = saved
        if datasets_bars:
            datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
        transformers.logging.set_verbosity(verbosity)
        enable_progress_bars()
        bnb.setLevel(bnb_level)
        if ds_accelerator is None:
            os.environ.pop("DS_ACCELERATOR", None)


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


# --------------------------------------------------------------------------------- the summary
def _first_last(values: list[float], fmt: str = "{:.3f}") -> str:
    ends = m.first_last(values)
    if ends is None:
        return "–"
    return fmt.format(ends[0]) if len(values) == 1 else f"{fmt.format(ends[0])}→{fmt.format(ends[1])}"


def _fmt(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, int | float) and not isinstance(value, bool) else "–"


def summary_rows(run: Run, comparison: dict[str, Any], prototype: dict[str, Any] | None) -> list[dict[str, str]]:
    """One row per model, in pipeline order: steps, the training curve (loss, or GRPO's reward), the
    eval loss on the validation split and the task's scores; strings, ready to print."""
    record = run.read_record()
    task = comparison.get("task", "gsm8k")
    rows = []
    for row in comparison.get("rows", []):
        stage = row["stage"]
        entry = record.get("stages", {}).get(stage, {})
        logs = run.read_jsonl(run.metrics(stage)) if entry else []
        train = m.training_rows(logs)
        losses = [v for _, v in m.series(train, m.LOSS)]
        rewards = [v for _, v in m.series(train, m.REWARD_MEAN)]
        steps = str(entry.get("steps", "–"))
        if stage == PROTOTYPE_STAGE and prototype:
            history = prototype.get("train", {}).get("history", {}).get("train", [])
            losses = [h["loss"] for h in history]
            steps = str(prototype.get("settings", {}).get("iters", "–"))
        out = {"stage": stage, "steps": steps if stage != BASE_STAGE else "–",
               "train loss": _first_last(losses) if entry.get("method") != "grpo" else "–",
               "train reward": _first_last(rewards) if rewards else "–",
               "eval loss": _fmt(row.get("eval_loss"), "{:.3f}")}
        if task == "gsm8k":
            out |= {"#### format": _fmt(row.get("format_rate"), "{:.0%}"),
                    "format reward": _fmt(row.get("format_reward"), "{:.2f}"),
                    "accuracy": _fmt(row.get("accuracy"), "{:.1%}")}
        else:
            out |= {"BLEU": _fmt(row.get("bleu"), "{:.2f}"), "chrF": _fmt(row.get("chrf"), "{:.2f}"),
                    "TER": _fmt(row.get("ter"), "{:.2f}")}
        rows.append(out | {"n": str(row.get("n") or "–")})
    return rows


def diagnostics_lines(run: Run) -> list[str]:
    """The findings of trainer.diagnostics (the report shows the same at its top), one line each."""
    from trainer.diagnostics import diagnose

    return [str(f) for f in diagnose(run)]


def print_summary(demo: Demo) -> None:
    run = demo.run
    assert run is not None
    prototype = run.bundle.prototype_metrics if run.bundle.prototype_adapter is not None else None
    rows = summary_rows(run, demo.comparison, prototype)
    # no column rules: the table fits an 80-column terminal without wrapping a row
    table = Table(title=f"demo ({demo.task.name}) run {run.run_id}", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 0, 0, 1))
    for i, col in enumerate(rows[0] if rows else ["stage"]):
        # one word a line in the header, so a value never wraps or gets cut
        table.add_column(col.replace(" ", "\n"), justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row.values())
    demo.console.print(table)
    findings = diagnostics_lines(run)
    if findings:
        demo.console.print("[bold]diagnostics[/] (also at the top of the report):")
        for line in findings:
            style = "red" if line.startswith("error") else "yellow" if line.startswith("warning") else "dim"
            demo.console.print(f"  {escape(line)}", style=style, highlight=False)
    timing = " · ".join(f"{k} {v:.0f}s" for k, v in demo.seconds.items() if k != "total")
    where = {"store": run.store.uri, "run": run.url(run.root), "bundle": demo.bundle.path if demo.bundle else None,
             "prototype": demo.prototype_dir, "merged": demo.merged, "serve": demo.serve_yaml,
             "report": demo.report_uri}
    demo.console.print(Panel.fit(
        "".join(f"{k:<10}{v or '–'}\n" for k, v in where.items())
        + f"took      {demo.seconds.get('total', 0):.0f} s ({timing})\n\n"
        + _what_it_shows(demo.task.name) +
        f"\nNext: ft eval run {run.url(run.root)} · ft chat {run.url(run.root)} · "
        f"ft launch {_cloud_config(demo.task.name)}",
        title="done"), highlight=False)


def _what_it_shows(task: str) -> str:
    if task == "math":
        return ("A 135M model after minutes on a CPU does not solve GSM8K: watch the eval loss and the #### format "
                "share move, not the accuracy.")
    return ("A 135M English model after minutes on a CPU does not translate Korean: watch the eval loss and "
            "chrF move, not BLEU.")


def _cloud_config(task: str) -> str:
    return "configs/math_gsm8k.yaml" if task == "math" else "configs/translation_ko_en.yaml"


def _record_cloud_estimate(run: Run, spec: Any, spec_dir: Path) -> None:
    """A local run costs nothing; the report shows beside it what the same job would cost in the cloud."""
    from jobs.pricing import cheapest_job_estimate

    estimate = cheapest_job_estimate(spec, spec_dir)
    record = run.read_record()
    if record:
        record.setdefault("cost", {})["estimate"] = estimate
        run.write_record(record)


__all__ = ["DEMO_DATA", "STEPS", "TASKS", "Demo", "Step", "run_demo", "summary_rows", "task_named"]
