"""`ft prototype`: LoRA SFT with mlx-lm's Python API from the spec, a quick base-vs-adapter evaluation
with MLX generation and the trainer's metrics, and the results the bundle carries.

outputs/mlx/<job>/
  adapters/        mlx-lm's adapter (adapters.safetensors + adapter_config.json; `mlx_lm.generate --adapter-path`)
  peft_adapter/    the same adapter in PEFT form, for `spec.model.base` (what `ft bundle` freezes)
  metrics.json     losses, speed, memory, base vs adapter scores, the settings used
  loss.png         the loss curve
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from mac.adapter_convert import mlx_to_peft
from trainer import builtin_model, textio
from trainer.errors import BadInput
from trainer.spec import JobSpec, PrototypeSpec, SFTStage
from trainer.textio import RowError, read_jsonl

OUTPUT_ROOT = Path("outputs/mlx")


class PrototypeError(BadInput):
    """The spec, its data or this machine's memory cannot run the prototype; the message says what to change."""


@dataclass
class PrototypeResult:
    out_dir: Path
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ spec -> mlx-lm
def resolve_model(spec: JobSpec, spec_dir: Path) -> str:
    """The MLX model to load: a folder (relative to the spec's folder) or a Hub id."""
    assert spec.prototype is not None
    name = spec.prototype.model
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = spec_dir / path
    if path.exists():
        path = path.resolve()
        return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    if name.startswith((".", "/", "~")) or Path(name).expanduser().exists():
        hint = f"ft model convert {spec.model.base} --out {path}"
        raise PrototypeError(f"prototype.model: {path} does not exist; make it with:  {hint}")
    return name


def linear_keys(model: Any) -> list[str]:
    """Module paths (relative to a block) of every linear layer in the model's blocks."""
    import mlx.nn as nn

    keys: set[str] = set()
    for layer in model.layers:
        for name, module in layer.named_modules():
            if isinstance(module, (nn.Linear, nn.QuantizedLinear)):
                keys.add(name)
    return sorted(keys)


def mlx_keys(model: Any, target_modules: str | list[str]) -> list[str]:
    """The spec's target modules as mlx-lm LoRA keys (PEFT semantics: a name matches a module path
    equal to it or ending in `.name`; `all-linear` is every linear layer of the blocks)."""
    available = linear_keys(model)
    if target_modules == "all-linear":
        return available
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    top = {name for name, _ in model.named_modules()}
    keys, missing = set(), []
    for t in names:
        hits = [k for k in available if k == t or k.endswith("." + t)]
        if not hits and t in top:  # a module outside the blocks, e.g. lm_head
            hits = [t]
        if not hits:
            missing.append(t)
        keys.update(hits)
    if missing:
        raise PrototypeError(f"finetune.lora.target_modules: {', '.join(missing)} not in this model; "
                             f"its block linear layers: {', '.join(available)}")
    return sorted(keys)


def lora_layer_count(spec: JobSpec, n_layers: int, notes: list[str]) -> int:
    """LoRA on the last N blocks: the spec's explicit layers when they are a suffix, else prototype.num_layers."""
    assert spec.prototype is not None
    wanted = spec.finetune.lora.layers_to_transform
    if wanted:
        if sorted(wanted) == list(range(n_layers - len(wanted), n_layers)):
            return len(wanted)
        notes.append(f"layers_to_transform {wanted} is not a run of last layers; MLX uses the last "
                     f"{spec.prototype.num_layers} (prototype.num_layers)")
    n = spec.prototype.num_layers
    if n == -1:
        return n_layers
    if n > n_layers:
        notes.append(f"prototype.num_layers {n} > the model's {n_layers} layers; using all {n_layers}")
        return n_layers
    return n


def sft_stage(spec: JobSpec) -> SFTStage | None:
    return next((s for s in spec.stages if isinstance(s, SFTStage)), None)


def memory_advice(proto: PrototypeSpec, model: str) -> list[str]:
    """The guide's MLX out-of-memory remedies, with this spec's numbers."""
    tips = []
    if proto.batch_size > 1:
        tips.append(f"prototype.batch_size: {proto.batch_size} → {max(1, proto.batch_size // 2)}")
    if not proto.grad_checkpoint:
        tips.append("prototype.grad_checkpoint: true (recomputes activations instead of storing them)")
    if proto.num_layers == -1 or proto.num_layers > 4:
        fewer = 8 if proto.num_layers == -1 else max(1, proto.num_layers // 2)
        tips.append(f"prototype.num_layers: {proto.num_layers} → {fewer} (LoRA on fewer blocks)")
    if proto.max_seq_length > 512:
        tips.append(f"prototype.max_seq_length: {proto.max_seq_length} → {proto.max_seq_length // 2} "
                    "(longer examples get truncated)")
    if "4bit" not in model.lower() and "-4b" not in model.lower():
        tips.append("a 4-bit model: `ft model convert MODEL --out OUT --quantize 4`, or an mlx-community …-4bit id")
    return tips


def _looks_like_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or any(s in text for s in ("alloc", "out of memory", "memory limit"))


# ------------------------------------------------------------------------------------- data
def _rows(path: Path) -> list[dict]:
    try:
        return read_jsonl(path)
    except RowError as e:
        raise PrototypeError(str(e)) from None


def _data_file(spec_dir: Path, rel: str | None, role: str) -> Path | None:
    if not rel:
        return None
    path = (spec_dir / rel).resolve()
    if not path.exists():
        raise PrototypeError(f"data.{role}: {path} does not exist (run `ft data prepare` first)")
    return path


def load_sft_data(spec: JobSpec, spec_dir: Path, batch_size: int, notes: list[str]) -> tuple[list, list]:
    train_path = _data_file(spec_dir, spec.data.sft_train, "sft_train")
    if train_path is None:
        raise PrototypeError("the prototype trains on data.sft_train; the spec names none")
    train = _rows(train_path)
    valid_path = _data_file(spec_dir, spec.data.sft_valid, "sft_valid")
    valid = _rows(valid_path) if valid_path else []
    if not valid:
        hold = max(batch_size, len(train) // 10)
        if len(train) - hold < batch_size:
            raise PrototypeError(f"{len(train)} training rows: too few for batch_size {batch_size} plus validation")
        train, valid = train[:-hold], train[-hold:]
        notes.append(f"no data.sft_valid: validating on the last {hold} training rows")
    for name, rows in (("sft_train", train), ("sft_valid", valid)):
        if len(rows) < batch_size:
            raise PrototypeError(f"data.{name}: {len(rows)} rows, fewer than prototype.batch_size {batch_size}")
        if "messages" not in rows[0]:
            raise PrototypeError(f"data.{name}: rows need a `messages` list (chat format)")
    return train, valid


def load_test_rows(path: Path, limit: int) -> list[dict]:
    try:
        return textio.load_test_rows(path)[:limit]
    except RowError as e:
        raise PrototypeError(str(e)) from None


# --------------------------------------------------------------------------------- progress
class ProgressCallback:
    """mlx-lm TrainingCallback feeding a rich progress bar and keeping the loss history."""

    def __init__(self, progress: Any, task: Any):
        self.progress, self.task = progress, task
        self.train: list[dict] = []
        self.val: list[dict] = []

    def _stats(self) -> str:
        t = self.train[-1] if self.train else None
        v = self.val[-1] if self.val else None
        parts = [f"loss [bold]{t['train_loss']:.3f}[/]" if t else "loss –",
                 f"val [bold]{v['val_loss']:.3f}[/]" if v else "val –"]
        if t:
            parts += [f"{t['tokens_per_second']:,.0f} tok/s", f"peak {t['peak_memory']:.2f} GB"]
        return "  ".join(parts)

    def on_train_loss_report(self, info: dict) -> None:
        self.train.append(info)
        self.progress.update(self.task, completed=info["iteration"], stats=self._stats())

    def on_val_loss_report(self, info: dict) -> None:
        self.val.append(info)
        self.progress.update(self.task, stats=self._stats())


def _make_progress(console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
        console=console, transient=False,
    )


@contextmanager
def _quiet_mlx_ui():
    """mlx-lm's trainer draws its own progress bar and warns about truncation on every batch; our bar
    is fed by the callback instead and truncation is reported once, before training."""
    from mlx_lm.tuner import trainer as mlx_trainer

    ui, rprint = mlx_trainer.TrainUI, mlx_trainer.rprint
    mlx_trainer.TrainUI = lambda total_iters, rank=0: ui(total_iters, rank=1)  # rank ≠ 0 draws nothing

    def filtered(*args: Any, **kwargs: Any) -> None:
        if not (args and "will be truncated" in str(args[0])):
            rprint(*args, **kwargs)

    mlx_trainer.rprint = filtered
    try:
        yield
    finally:
        mlx_trainer.TrainUI, mlx_trainer.rprint = ui, rprint


def count_truncated(dataset: Any, max_len: int) -> int:
    """Rows longer than max_seq_length (tokenizes every row once; mlx-lm's cache keeps the result)."""
    return sum(len(dataset[i][0]) > max_len for i in range(len(dataset)))


# ------------------------------------------------------------------------------- evaluation
def _lora_layers(model: Any) -> list[Any]:
    return [m for _, m in model.named_modules() if hasattr(m, "lora_a") and hasattr(m, "scale")]


def generate_all(model: Any, tokenizer: Any, rows: list[dict], max_tokens: int, progress: Any, label: str) -> list[str]:
    from trainer.generation import generate_mlx  # the one place a model writes text

    task = progress.add_task(label, total=len(rows), stats="")
    return generate_mlx(model, tokenizer, [r["messages"] for r in rows], max_tokens,
                        on_each=lambda: progress.advance(task))


def score(task: str, preds: list[str], rows: list[dict]) -> dict[str, Any]:
    from trainer import scores  # the trainer's own scoring, so Mac and GPU numbers are comparable

    refs = [r["answer"] for r in rows]
    if task == "gsm8k":
        return scores.gsm8k_scores(preds, refs)
    return scores.translation_scores(preds, refs, comet=False)


def headline(scores: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy",) if scores.get("task") == "gsm8k" else ("bleu", "chrf", "ter")
    return {k: scores.get(k) for k in keys} | {"n": scores.get("n")}


# --------------------------------------------------------------------------------- plotting
def plot_losses(train: list[dict], val: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot([t["iteration"] for t in train], [t["train_loss"] for t in train], label="train", lw=1.2)
    if val:
        ax.plot([v["iteration"] for v in val], [v["val_loss"] for v in val], "o-", label="validation", lw=1.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -------------------------------------------------------------------------------------- run
@dataclass
class _Lora:
    """The LoRA the prototype trains, as mlx-lm takes it."""

    num_layers: int
    parameters: dict[str, Any]  # rank, scale, dropout, keys


def run_prototype(spec: JobSpec, spec_dir: Path, iters: int | None = None, max_samples: int | None = None,
                  out_root: Path = OUTPUT_ROOT, console: Console | None = None) -> PrototypeResult:
    """Train, evaluate and write `out_root/<job>/`. Raises PrototypeError with guidance on bad input or OOM."""
    if spec.prototype is None:
        raise PrototypeError("the spec has no `prototype:` section")
    from mlx_lm import load

    console = console or Console()
    proto, spec_dir, notes = spec.prototype, Path(spec_dir), []
    iters = iters or proto.iters
    samples = proto.eval_samples if max_samples is None else max_samples
    stage = sft_stage(spec)
    seed = stage.seed if stage else 42
    model_name = resolve_model(spec, spec_dir)
    out_dir = Path(out_root) / spec.name
    adapters_dir = out_dir / "adapters"
    started = time.perf_counter()

    train_rows, valid_rows = load_sft_data(spec, spec_dir, proto.batch_size, notes)
    console.print(f"[bold]prototype[/] {spec.name}: {model_name}  ({len(train_rows)} train / {len(valid_rows)} "
                  f"valid rows)")
    model, tokenizer = load(model_name)
    lora = _add_lora(spec, model, seed, notes)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    _write_adapter_config(out_dir, {
        "model": model_name, "fine_tune_type": "lora", "num_layers": lora.num_layers,
        "lora_parameters": lora.parameters, "iters": iters, "batch_size": proto.batch_size,
        "learning_rate": proto.learning_rate, "max_seq_length": proto.max_seq_length,
        "grad_checkpoint": proto.grad_checkpoint, "mask_prompt": proto.mask_prompt, "seed": seed})
    progress = _make_progress(console)
    with progress:
        callback = _train(model, tokenizer, proto, iters, (train_rows, valid_rows), adapters_dir, model_name,
                          progress, notes, console)
        train_seconds = time.perf_counter() - started
        task = spec.evaluation.task or ("gsm8k" if spec.data.task == "math" else "translation")
        eval_block = _evaluate(spec, spec_dir, task, samples, model, tokenizer, progress, notes)

    metrics = _metrics(spec, model_name, task, iters, seed, lora, callback, train_seconds, eval_block, notes)
    check_base = builtin_model.is_builtin(spec.model.base) or Path(spec.model.base).expanduser().exists()
    metrics["peft"] = mlx_to_peft(adapters_dir, out_dir / "peft_adapter", spec.model.base, check_base=check_base)
    plot_losses(callback.train, callback.val, out_dir / "loss.png",
                f"{spec.name}: mlx-lm LoRA on {Path(model_name).name}")
    if not all(math.isfinite(t["train_loss"]) for t in callback.train):
        notes.append("the training loss is not finite: lower prototype.learning_rate")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return PrototypeResult(out_dir, metrics, notes)


def _add_lora(spec: JobSpec, model: Any, seed: int, notes: list[str]) -> _Lora:
    """Freeze the model and put the spec's LoRA on its last blocks (seeded, so a rerun starts the same)."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.tuner.utils import linear_to_lora_layers

    lora = spec.finetune.lora
    num_layers = lora_layer_count(spec, len(model.layers), notes)
    parameters = {"rank": lora.r, "scale": lora.alpha / lora.r, "dropout": lora.dropout,
                  "keys": mlx_keys(model, lora.target_modules)}
    mx.random.seed(seed)
    np.random.seed(seed)
    model.freeze()
    linear_to_lora_layers(model, num_layers, parameters)
    return _Lora(num_layers, parameters)


def _write_adapter_config(out_dir: Path, config: dict[str, Any]) -> None:
    """A fresh `adapters/` with mlx-lm's adapter_config.json (what `mlx_lm.generate --adapter-path` reads);
    the previous run's adapters, MLX and PEFT, are removed first."""
    for path in (out_dir / "adapters", out_dir / "peft_adapter"):
        if path.exists():
            shutil.rmtree(path)
    (out_dir / "adapters").mkdir(parents=True)
    (out_dir / "adapters" / "adapter_config.json").write_text(json.dumps(config, indent=4) + "\n")


def _train(model: Any, tokenizer: Any, proto: PrototypeSpec, iters: int, rows: tuple[list, list],
           adapters_dir: Path, model_name: str, progress: Any, notes: list[str], console: Console) -> ProgressCallback:
    """mlx-lm's LoRA training with our progress bar; an out-of-memory error becomes the spec changes to try."""
    import mlx.optimizers as optim
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, train

    train_set, valid_set = (CacheDataset(ChatDataset(r, tokenizer, mask_prompt=proto.mask_prompt)) for r in rows)
    args = TrainingArgs(batch_size=proto.batch_size, iters=iters, val_batches=proto.val_batches,
                        steps_per_report=1, steps_per_eval=min(proto.steps_per_eval, iters),
                        steps_per_save=max(100, iters + 1), adapter_file=str(adapters_dir / "adapters.safetensors"),
                        max_seq_length=proto.max_seq_length, grad_checkpoint=proto.grad_checkpoint)
    long_rows = count_truncated(train_set, proto.max_seq_length)
    if long_rows:
        note = (f"{long_rows} of {len(train_set)} training rows are longer than prototype.max_seq_length "
                f"({proto.max_seq_length}) and get truncated")
        notes.append(note)
        console.print(f"[yellow]note:[/] {note}")
    callback = ProgressCallback(progress, progress.add_task("train", total=iters, stats="loss –  val –"))
    try:
        with _quiet_mlx_ui():
            train(model=model, optimizer=optim.Adam(learning_rate=proto.learning_rate), train_dataset=train_set,
                  val_dataset=valid_set, args=args, training_callback=callback)
    except (RuntimeError, MemoryError, ValueError) as e:
        if _looks_like_oom(e):
            tips = "\n  ".join(memory_advice(proto, model_name))
            raise PrototypeError(f"MLX ran out of memory ({e}). Try, in the spec:\n  {tips}") from e
        raise
    return callback


def _evaluate(spec: JobSpec, spec_dir: Path, task: str, samples: int, model: Any, tokenizer: Any, progress: Any,
              notes: list[str]) -> dict[str, Any]:
    """Base vs adapter on the first `samples` test rows, greedy; `{"n": 0}` when there is nothing to score."""
    test_path = _data_file(spec_dir, spec.data.test, "test")
    if samples <= 0:
        return {"n": 0}
    if test_path is None:
        notes.append("no data.test: skipped the base-vs-adapter evaluation")
        return {"n": 0}
    rows = load_test_rows(test_path, samples)
    max_tokens = spec.evaluation.max_new_tokens
    model.eval()
    adapter_preds = generate_all(model, tokenizer, rows, max_tokens, progress, "eval adapter")
    lora_layers = _lora_layers(model)
    saved = [m.scale for m in lora_layers]
    for m in lora_layers:
        m.scale = 0.0  # the very same weights without the adapter: the base model
    try:
        base_preds = generate_all(model, tokenizer, rows, max_tokens, progress, "eval base")
    finally:
        for m, s in zip(lora_layers, saved, strict=True):
            m.scale = s
    return {
        "task": task, "n": len(rows), "max_new_tokens": max_tokens, "decoding": "greedy",
        "base": score(task, base_preds, rows), "adapter": score(task, adapter_preds, rows),
        "samples": [{"prompt": r["messages"][-1]["content"], "answer": r["answer"], "base": b, "adapter": a}
                    for r, b, a in zip(rows[:3], base_preds, adapter_preds, strict=False)],
    }


def _metrics(spec: JobSpec, model_name: str, task: str, iters: int, seed: int, lora: _Lora,
             callback: ProgressCallback, train_seconds: float, eval_block: dict[str, Any],
             notes: list[str]) -> dict[str, Any]:
    """metrics.json: what was trained, how it went, and base vs adapter (the bundle carries it)."""
    import mlx.core as mx
    import numpy as np

    assert spec.prototype is not None
    proto, spec_lora = spec.prototype, spec.finetune.lora
    last_train = callback.train[-1] if callback.train else {}
    last_val = callback.val[-1] if callback.val else {}
    tps = [t["tokens_per_second"] for t in callback.train]
    return {
        "job": spec.name,
        "source": "mlx-lm prototype (ft prototype)",
        "mlx_model": model_name,
        "base_model": spec.model.base,
        "task": task,
        "settings": {"iters": iters, "batch_size": proto.batch_size, "learning_rate": proto.learning_rate,
                     "num_layers": lora.num_layers, "rank": spec_lora.r, "alpha": spec_lora.alpha,
                     "scale": spec_lora.alpha / spec_lora.r, "dropout": spec_lora.dropout,
                     "keys": lora.parameters["keys"], "max_seq_length": proto.max_seq_length,
                     "grad_checkpoint": proto.grad_checkpoint, "mask_prompt": proto.mask_prompt, "seed": seed},
        "train": {"final_train_loss": last_train.get("train_loss"), "final_val_loss": last_val.get("val_loss"),
                  "first_val_loss": callback.val[0]["val_loss"] if callback.val else None,
                  "trained_tokens": last_train.get("trained_tokens"),
                  "tokens_per_second": round(float(np.median(tps)), 1) if tps else None,
                  "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 3), "seconds": round(train_seconds, 1),
                  "history": {"train": [{"iteration": t["iteration"], "loss": t["train_loss"]} for t in callback.train],
                              "val": [{"iteration": v["iteration"], "loss": v["val_loss"]} for v in callback.val]}},
        "scores": headline(eval_block["adapter"]) if "adapter" in eval_block else {},
        "eval": eval_block,
        "notes": notes,
    }
