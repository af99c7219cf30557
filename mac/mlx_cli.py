"""MLX commands: `ft prototype`, `ft model convert`, `ft adapter convert` (registered on `ft` by jobs.cli).

mlx, torch and transformers are imported inside the commands, never at import time. Errors are raised
(BadInput: exit 2) and printed by `ft`'s error boundary.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mac.cli import overrides_argument
from trainer import settings
from trainer.errors import BadInput

console = Console()
err = Console(stderr=True)
OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"


class AdapterFormat(str, Enum):
    mlx = "mlx"
    peft = "peft"


def _blas_hint() -> None:
    if sys.platform == "linux" and Path(OPENBLAS).exists() and "openblas" not in os.environ.get("LD_PRELOAD", ""):
        err.print(f"[dim]hint: MLX on Linux is ~10× faster with LD_PRELOAD={OPENBLAS}[/]", highlight=False)


def prototype(
    config: Path = typer.Argument(..., metavar="CONFIG", help="job spec YAML with a `prototype:` section", exists=True,
                                  dir_okay=False),
    overrides: list[str] | None = overrides_argument(),
    iters: int = typer.Option(None, "--iters", min=1, help="training iterations (default: prototype.iters)"),
    max_samples: int = typer.Option(None, "--max-samples", min=0,
                                    help="test items for the base-vs-adapter evaluation "
                                         "(default: prototype.eval_samples)"),
    out: Path = typer.Option(None, "--out",
                             help="results go to OUT/NAME/ (default: $FT_MLX_OUTPUTS, else outputs/mlx)"),
) -> None:
    """LoRA SFT prototype with mlx-lm, then a quick base-vs-adapter evaluation.

    Results (the MLX adapter, its PEFT form, metrics and the loss plot) go to outputs/mlx/NAME/, where
    `ft bundle create` picks them up.
    """
    from trainer.spec import load_spec

    spec = load_spec(config, overrides or ())
    _blas_hint()
    from mac.prototype import run_prototype

    result = run_prototype(spec, config.resolve().parent, iters=iters, max_samples=max_samples,
                           out_root=out or settings.mlx_outputs(), console=console)
    m = result.metrics
    t = m["train"]
    table = Table(title=f"prototype {spec.name}", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("train loss (last)", f"{t['final_train_loss']:.3f}" if t["final_train_loss"] is not None else "–")
    table.add_row("val loss (first → last)", f"{t['first_val_loss']:.3f} → {t['final_val_loss']:.3f}"
                  if t["final_val_loss"] is not None else "–")
    table.add_row("tokens/s (median)", f"{t['tokens_per_second']:,.0f}" if t["tokens_per_second"] else "–")
    table.add_row("peak memory", f"{t['peak_memory_gb']:.2f} GB")
    ev = m["eval"]
    if ev.get("n"):
        for key in ("accuracy",) if ev["task"] == "gsm8k" else ("bleu", "chrf", "ter"):
            table.add_row(f"{key} base → adapter (n={ev['n']})", f"{ev['base'][key]:.3g} → {ev['adapter'][key]:.3g}")
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"results: {result.out_dir}/ (adapters/, peft_adapter/, metrics.json, loss.png)")


def model_convert(
    model: str = typer.Argument(..., help="Hub id, local transformers folder, or builtin:smollm2-135m"),
    out: Path = typer.Option(..., "--out", help="the MLX folder to write"),
    quantize: int = typer.Option(None, "--quantize", "-q", help="bits: 4 (or 2, 3, 5, 6, 8) for a quantized model"),
    group_size: int = typer.Option(64, help="quantization group size"),
    dtype: str = typer.Option(None, help="float32 / bfloat16 / float16 for unquantized weights "
                                         "(default: the source's)"),
    revision: str = typer.Option(None, help="Hub revision"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Convert a transformers model (or the built-in GGUF) into a folder mlx-lm loads, with MLX config fixes."""
    if dtype not in (None, "float32", "bfloat16", "float16"):
        raise BadInput(f"--dtype {dtype}: choose float32, bfloat16 or float16")
    from mac.mlx_convert import convert_model

    info = convert_model(model, out, quantize=quantize, group_size=group_size, dtype=dtype, revision=revision,
                         force=force)
    for fix in info["config_fixes"]:
        console.print(f"config fix: {fix}")
    q = f", {quantize}-bit" if quantize else ""
    console.print(f"[green]wrote[/] {out} ({info['model_type']}{q}); load it with mlx_lm.load({str(out)!r})")


def adapter_convert(
    src: Path = typer.Argument(..., help="adapter folder to read", exists=True, file_okay=False),
    out: Path = typer.Option(..., "--out", help="adapter folder to write"),
    from_: AdapterFormat = typer.Option(..., "--from", help="format of SRC"),
    to: AdapterFormat = typer.Option(..., "--to", help="format to write"),
    base: str = typer.Option(None, help="the transformers base model (Hub id, folder, builtin:smollm2-135m); "
                                        "needed for mlx → peft, default for peft → mlx: the adapter's own"),
) -> None:
    """Convert a LoRA adapter between mlx-lm and PEFT (names, transposes, scale ↔ alpha, layers)."""
    from mac.adapter_convert import mlx_to_peft, peft_to_mlx

    if from_ == to:
        raise BadInput("--from and --to are the same format")
    if from_ == AdapterFormat.mlx:
        if not base:
            raise BadInput("--base is required for mlx → peft (it becomes base_model_name_or_path)")
        cfg = mlx_to_peft(src, out, base)
        console.print(f"[green]wrote[/] PEFT adapter {out}: r={cfg['r']} lora_alpha={cfg['lora_alpha']:g} "
                      f"target_modules={json.dumps(cfg['target_modules'])} layers={cfg['layers_to_transform']}")
    else:
        cfg = peft_to_mlx(src, out, base)
        lp = cfg["lora_parameters"]
        console.print(f"[green]wrote[/] mlx-lm adapter {out}: rank={lp['rank']} scale={lp['scale']:g} "
                      f"num_layers={cfg['num_layers']} keys={', '.join(lp['keys'])}")


def register(app: typer.Typer) -> None:
    app.command("prototype")(prototype)
    model_app = typer.Typer(help="Base models for the Mac side: transformers or the built-in GGUF to MLX.",
                            no_args_is_help=True)
    model_app.command("convert")(model_convert)
    app.add_typer(model_app, name="model")
    adapter_app = typer.Typer(help="LoRA adapters between mlx-lm and PEFT.", no_args_is_help=True)
    adapter_app.command("convert")(adapter_convert)
    app.add_typer(adapter_app, name="adapter")
