"""Model loading: a Hub id, a local folder, or the built-in SmolLM2-135M-Instruct (trainer.builtin_model
converts it once). Picks attention and dtype for the machine, and says clearly when a setting needs
what the machine lacks."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from trainer import builtin_model
from trainer.errors import BadInput
from trainer.spec import FinetuneSpec, ModelSpec


class CapabilityError(BadInput):
    """A setting needs hardware or a library this machine lacks: exit 2, not worth a retry."""


def resolve_model_path(base: str) -> str:
    """`builtin:smollm2-135m` → its cached safetensors folder (converted on first use); else unchanged."""
    return str(builtin_model.materialize()) if builtin_model.is_builtin(base) else base


def load_tokenizer(base: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(base), revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_dtype(model: ModelSpec):
    import torch

    if model.dtype != "auto":
        if model.dtype == "bfloat16" and has_cuda() and not torch.cuda.is_bf16_supported():
            raise CapabilityError("model.dtype: bfloat16 needs an Ampere or newer GPU; use float16")
        return getattr(torch, model.dtype) if has_cuda() else torch.float32
    if has_cuda():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def pick_attention(model: ModelSpec) -> str:
    flash = importlib.util.find_spec("flash_attn") is not None
    if model.attn_implementation == "flash_attention_2":
        if not has_cuda():
            raise CapabilityError("model.attn_implementation: flash_attention_2 needs CUDA; use sdpa or auto")
        if not flash:
            raise CapabilityError("model.attn_implementation: flash_attention_2 needs flash-attn (in the GPU image)")
        return "flash_attention_2"
    if model.attn_implementation == "auto":
        return "flash_attention_2" if flash and has_cuda() else "sdpa"
    return model.attn_implementation


def quantization_config(finetune: FinetuneSpec):
    """bitsandbytes 4-bit NF4 for QLoRA. bitsandbytes ≥ 0.45 ships a CPU backend, so this runs here too."""
    if finetune.method != "qlora":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise CapabilityError("finetune.method: qlora needs bitsandbytes (pip install bitsandbytes)")
    import torch
    from transformers import BitsAndBytesConfig

    q = finetune.quantization
    compute = getattr(torch, q.compute_dtype)
    if not has_cuda() and compute == torch.bfloat16:
        compute = torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=q.load_in_4bit,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=q.double_quant,
    )


def model_init_kwargs(model: ModelSpec, finetune: FinetuneSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(model),
        "attn_implementation": pick_attention(model),
        "trust_remote_code": model.trust_remote_code,
    }
    if model.revision:
        kwargs["revision"] = model.revision
    quant = quantization_config(finetune)
    if quant is not None:
        kwargs["quantization_config"] = quant
    return kwargs


def load_model_for_inference(base: str, adapter_dir: Path | None = None, dtype: str = "auto"):
    """Base model (plus a PEFT adapter when given), in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs = model_init_kwargs(ModelSpec(base=base, dtype=dtype), FinetuneSpec(method="lora"))
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(base), **kwargs)
    if adapter_dir is not None and (Path(adapter_dir) / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    elif adapter_dir is not None and (Path(adapter_dir) / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(str(adapter_dir), **kwargs)  # full fine-tune weights
    model.eval()
    return model
