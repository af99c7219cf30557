"""Model loading: a Hub id, a local folder, or the built-in SmolLM2-135M-Instruct (trainer.builtin_model
converts it once). Picks attention and dtype for the machine, and says clearly when a setting needs
what the machine lacks."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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


DtypeName = Literal["bfloat16", "float16", "float32"]


@dataclass(frozen=True)
class Placement:
    """Where a model runs and in which precision: `device` is "cuda" or "cpu", `dtype` a torch name."""

    device: Literal["cuda", "cpu"]
    dtype: DtypeName

    @property
    def mixed_precision(self) -> Literal["bf16", "fp16", "no"]:
        """The matching accelerate/Trainer mixed-precision mode."""
        return {"bfloat16": "bf16", "float16": "fp16"}.get(self.dtype, "no")  # type: ignore[return-value]


def decide_placement(cuda: bool, bf16_supported: bool, dtype: str = "auto") -> Placement:
    """The one device/precision decision, a pure function of the machine and the spec's `model.dtype`:

    - no CUDA: the CPU in fp32, whatever the spec says (bf16/fp16 matmuls on a CPU are slow or missing);
    - CUDA, `auto`: bf16 on Ampere or newer (bf16 supported), fp16 before;
    - CUDA, `bfloat16` without bf16 support: refused (CapabilityError) -- fp16 is the spec's choice to make;
    - CUDA, `float16` / `float32` / supported `bfloat16`: as the spec says.
    Training, evaluation, on-policy sampling and merging all use it, so they agree."""
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise BadInput(f"model.dtype: {dtype!r} is not one of auto, bfloat16, float16, float32")
    if not cuda:
        return Placement("cpu", "float32")
    if dtype == "auto":
        return Placement("cuda", "bfloat16" if bf16_supported else "float16")
    if dtype == "bfloat16" and not bf16_supported:
        raise CapabilityError("model.dtype: bfloat16 needs an Ampere or newer GPU; use float16")
    return Placement("cuda", dtype)  # type: ignore[arg-type]


def placement(dtype: str = "auto") -> Placement:
    """decide_placement for this machine."""
    cuda = has_cuda()
    if not cuda:
        return decide_placement(False, False, dtype)
    import torch

    return decide_placement(True, bool(torch.cuda.is_bf16_supported()), dtype)


def training_device():
    """The torch device this process trains on: its own GPU under accelerate (LOCAL_RANK), else the
    current CUDA device, else the CPU."""
    import torch

    if not has_cuda():
        return torch.device("cpu")
    local_rank = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", int(local_rank) if local_rank else torch.cuda.current_device())


def pick_dtype(model: ModelSpec):
    import torch

    return getattr(torch, placement(model.dtype).dtype)


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


# Strategies that shard parameters across ranks: FSDP flattens every parameter of a wrapped module
# into one buffer, so 4-bit weights must be stored in the same dtype as the rest (PEFT's FSDP + QLoRA
# guide: bnb_4bit_quant_storage = the model's dtype); ZeRO-3 partitions them the same way.
SHARDED_STRATEGIES = ("fsdp", "deepspeed_zero3_offload")


def quantization_config(finetune: FinetuneSpec, strategy: str = "none", storage_dtype=None):
    """bitsandbytes 4-bit NF4 for QLoRA. bitsandbytes ≥ 0.45 ships a CPU backend, so this runs here too.
    Under a parameter-sharding strategy the 4-bit weights are packed into `storage_dtype` (the model's
    load dtype), as FSDP and ZeRO-3 need; otherwise bitsandbytes' uint8 default."""
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
    storage = {}
    if strategy in SHARDED_STRATEGIES:
        storage["bnb_4bit_quant_storage"] = storage_dtype if storage_dtype is not None else compute
    return BitsAndBytesConfig(
        load_in_4bit=q.load_in_4bit,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=q.double_quant,
        **storage,
    )


def model_init_kwargs(model: ModelSpec, finetune: FinetuneSpec, strategy: str = "none") -> dict[str, Any]:
    dtype = pick_dtype(model)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": pick_attention(model),
        "trust_remote_code": model.trust_remote_code,
    }
    if model.revision:
        kwargs["revision"] = model.revision
    quant = quantization_config(finetune, strategy, storage_dtype=dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    return kwargs


def inference_kwargs(base: str, dtype: str = "auto") -> tuple[Placement, dict[str, Any]]:
    """The placement and from_pretrained kwargs for evaluation, sampling and merging: the training
    device (this process's GPU when there is one) in the decided precision, loaded straight onto it."""
    where = placement(dtype)
    kwargs = model_init_kwargs(ModelSpec(base=base, dtype=dtype), FinetuneSpec(method="lora"))
    kwargs["device_map"] = {"": str(training_device())} if where.device == "cuda" else {"": "cpu"}
    return where, kwargs


def load_model_for_inference(base: str, adapter_dir: Path | None = None, dtype: str = "auto"):
    """Base model (plus a PEFT adapter when given), in eval mode, on the training device in the precision
    decide_placement gives (bf16 on Ampere+, fp16 before, fp32 on the CPU)."""
    from transformers import AutoModelForCausalLM

    _, kwargs = inference_kwargs(base, dtype)
    if adapter_dir is not None and (Path(adapter_dir) / "adapter_config.json").exists():
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(base), **kwargs)
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    elif adapter_dir is not None and (Path(adapter_dir) / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(str(adapter_dir), **kwargs)  # full fine-tune weights
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(base), **kwargs)
    model.eval()
    return model


def gather_full_state_dict_for_save(trainer) -> bool:
    """Before a stage's final `trainer.save_model`: under FSDP with SHARDED_STATE_DICT (what the fsdp
    strategy trains with, for fast checkpoints) transformers' save_model writes nothing at all -- it saves
    only when the plugin says FULL_STATE_DICT -- so no loadable PEFT adapter would reach the store. Switch
    the plugin to FULL_STATE_DICT (gathered to rank 0 on the CPU, as TRL and PEFT document for the final
    save); save_model must then run on every rank (the gather is collective). Its sharded configs are
    dropped so set_state_dict_type builds full ones. Returns whether it switched."""
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "fsdp_plugin", None)
    if not getattr(trainer, "is_fsdp_enabled", False) or plugin is None:
        return False
    if "FULL_STATE_DICT" in str(plugin.state_dict_type):
        return False
    plugin.state_dict_config = None
    plugin.optim_state_dict_config = None
    plugin.set_state_dict_type("FULL_STATE_DICT")
    return True
