"""How each prototype (mlx-lm) setting maps onto the GPU run, and where MLX cannot honour one.

A pure function of the spec (no mlx, no torch): `ft validate` prints its rows.
"""

from __future__ import annotations

from trainer.spec import JobSpec, PrototypeSpec, SFTStage

Row = tuple[str, str, str, str | None]  # (setting, MLX value, GPU value, warning or None)

ALL_LINEAR = "every linear layer in each block (q/k/v/o, gate/up/down projections)"


def _g(x: float) -> str:
    return f"{x:g}"


def prototype_mapping(spec: JobSpec) -> list[Row]:
    proto = spec.prototype
    if proto is None:
        return []
    sft = next((s for s in spec.stages if isinstance(s, SFTStage)), None)
    rows = _model_rows(spec, proto) + _lora_rows(spec) + [_layers_row(spec, proto, sft)]
    if sft is None:
        return rows + [("training", f"{proto.iters} iterations of SFT", "no sft stage",
                        "the prototype runs SFT but the job has no sft stage to compare it with")]
    return rows + _training_rows(spec, proto, sft)


def _model_rows(spec: JobSpec, proto: PrototypeSpec) -> list[Row]:
    method = spec.finetune.method
    rows: list[Row] = []
    gpu_method = {"lora": "LoRA", "qlora": f"QLoRA ({spec.finetune.quantization.quant_type} 4-bit base)",
                  "full": "full fine-tuning"}[method]
    quantized = any(s in proto.model.lower() for s in ("4bit", "8bit", "3bit", "-4b", "mxfp4"))
    rows.append(("method", "LoRA" + (" on a quantized MLX model" if quantized else ""), gpu_method,
                 "the prototype trains a LoRA adapter; the GPU run is full fine-tuning, so its adapter "
                 "cannot seed it" if method == "full" else None))
    quant_warn = None
    if quantized:
        gpu_weights = "NF4 4-bit" if method == "qlora" else f"{spec.model.dtype} (unquantized)"
        quant_warn = (f"MLX trains against affine-quantized weights, the GPU base is {gpu_weights}: the adapter "
                      "transfers, but outputs differ slightly")
    rows.append(("model", proto.model, spec.model.base, quant_warn))
    return rows


def _lora_rows(spec: JobSpec) -> list[Row]:
    """The LoRA shape: the same numbers drive both sides."""
    lora = spec.finetune.lora
    rows: list[Row] = []
    rows.append(("rank", str(lora.r), f"r={lora.r}", None))
    rows.append(("alpha", f"scale {_g(lora.alpha / lora.r)} (= alpha / rank)", f"lora_alpha={_g(lora.alpha)}", None))
    rows.append(("dropout", _g(lora.dropout), f"lora_dropout={_g(lora.dropout)}", None))
    if lora.target_modules == "all-linear":
        rows.append(("target modules", f"keys: {ALL_LINEAR}", "target_modules=all-linear", None))
    else:
        names = [lora.target_modules] if isinstance(lora.target_modules, str) else lora.target_modules
        outside = [n for n in names if n in ("lm_head", "embed_tokens", "wte", "wpe")]
        rows.append(("target modules", "keys: the block modules ending in " + ", ".join(names),
                     "target_modules=[" + ", ".join(names) + "]",
                     f"{', '.join(outside)}: outside the blocks; mlx-lm adapts it only as a plain linear layer"
                     if outside else None))
    return rows


def _layers_row(spec: JobSpec, proto: PrototypeSpec, sft: SFTStage | None) -> Row:
    """MLX adapts the last N blocks only."""
    wanted = spec.finetune.lora.layers_to_transform
    n = proto.num_layers
    mlx_layers = "all blocks" if n == -1 else f"the last {n} blocks"
    if wanted:
        gpu_layers = f"layers_to_transform={wanted}"
        suffix = sorted(wanted) == list(range(max(wanted) - len(wanted) + 1, max(wanted) + 1))
        warn = (None if suffix else
                f"MLX adapts a run of last blocks only; {wanted} is not one (the prototype uses {mlx_layers})")
        if suffix:
            mlx_layers = f"the last {len(wanted)} blocks (from layers_to_transform)"
        return ("layers", mlx_layers, gpu_layers, warn)
    warn = None
    if n != -1:
        warn = (f"the prototype adapts {mlx_layers}, the GPU run all blocks"
                + ("; init_adapter: prototype starts those from the prototype and the rest from zero"
                   if sft and sft.init_adapter == "prototype" else ""))
    return ("layers", mlx_layers, "all blocks", warn)


def _training_rows(spec: JobSpec, proto: PrototypeSpec, sft: SFTStage) -> list[Row]:
    rows: list[Row] = []
    steps = f"max_steps={sft.max_steps}" if sft.max_steps > 0 else f"epochs={_g(sft.epochs)}"
    rows.append(("steps", f"iters={proto.iters}", steps, None))
    gpu_batch = sft.per_device_train_batch_size * sft.gradient_accumulation_steps
    rows.append(("batch size", str(proto.batch_size),
                 f"{sft.per_device_train_batch_size} per device × {sft.gradient_accumulation_steps} accumulation "
                 f"= {gpu_batch} per GPU", None))
    lr_ratio = sft.learning_rate / proto.learning_rate
    rows.append(("learning rate", _g(proto.learning_rate), _g(sft.learning_rate),
                 f"the GPU rate is {_g(round(lr_ratio, 2))}× the prototype's" if lr_ratio > 10 or lr_ratio < 0.1
                 else None))
    rows.append(("schedule", "constant (Adam, no warmup, no weight decay)",
                 f"{sft.lr_scheduler_type}, warmup_ratio={_g(sft.warmup_ratio)}, weight_decay={_g(sft.weight_decay)}",
                 None))
    rows.append(("max length", f"max_seq_length={proto.max_seq_length} (longer rows truncated)",
                 f"max_length={sft.max_length}",
                 "the prototype sees longer sequences than the GPU run" if proto.max_seq_length > sft.max_length
                 else None))
    rows.append(("packing", "no (mlx-lm pads each batch)", f"packing={sft.packing}", None))
    rows.append(("gradient checkpointing", str(proto.grad_checkpoint).lower(),
                 f"gradient_checkpointing={str(sft.gradient_checkpointing).lower()}", None))
    mask_warn = None
    if proto.mask_prompt != sft.assistant_only_loss:
        mask_warn = ("the prototype learns the prompt tokens too, the GPU run only the answers"
                     if not proto.mask_prompt else
                     "the prototype learns only the answers, the GPU run the prompt tokens too")
    rows.append(("prompt masking", f"mask_prompt={str(proto.mask_prompt).lower()} (loss on the last turn only)",
                 f"assistant_only_loss={str(sft.assistant_only_loss).lower()}", mask_warn))
    rows.append(("precision", "fp32 on CPU / model dtype on Apple silicon",
                 f"dtype={spec.model.dtype}" + (" (4-bit base)" if spec.finetune.method == "qlora" else ""), None))
    rows.append(("evaluation", f"{proto.eval_samples} test items, base vs adapter (greedy)",
                 f"{spec.evaluation.limit} test items", None))
    rows.append(("start GPU SFT from the prototype", "outputs/mlx/<job>/peft_adapter → bundle prototype/adapter",
                 f"init_adapter={sft.init_adapter or 'none'}", None))
    return rows
