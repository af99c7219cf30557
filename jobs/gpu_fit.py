"""How much GPU memory a job needs, from its spec, and which GPUs that fits.

The estimate adds up the parts that dominate a TRL run on CUDA, per stage, in GiB:

- base weights: bf16/fp16 2 bytes per parameter (fp32 4); QLoRA stores the linear layers in NF4
  (0.5 byte + ~4% for the quantization constants; double quantization shrinks those) while the
  embeddings and the LM head stay in the compute dtype;
- trainable parameters: LoRA adapters (rank × (in + out) per targeted linear) in fp32 with fp32
  grads and two AdamW moments (16 bytes each); full fine-tuning keeps bf16 weights and grads and
  fp32 AdamW moments (12 bytes per parameter in all);
- DPO: chosen and rejected run as one doubled batch. With LoRA/QLoRA the reference model is the
  same base with the adapter switched off (TRL + PEFT), so it costs no weights; full fine-tuning
  keeps a second frozen copy of the weights;
- GRPO: the generation batch (per-device batch × accumulation) is generated at once, its KV cache
  sized to prompt + completion. TRL 1.x has no `max_prompt_length` (it never truncates a prompt); the
  trainer drops prompts longer than the stage's `max_length` (trainer/recipes/grpo.py), so a prompt is
  at most `max_length` tokens and a sequence at most `max_length + max_completion_length`. With vLLM
  (`use_vllm` auto/on: the training image carries vLLM, so on a cloud GPU `auto` is vLLM) TRL colocates
  one engine per process holding its own bf16 copy of the weights and that KV cache (parts named
  "vLLM …"), and TRL's own generation cache is not used; with `use_vllm: off` the cache is TRL's.
  vLLM takes a fixed share of each GPU (TRL's `vllm_gpu_memory_utilization`, kept at its default),
  so `fits` checks that share holds vLLM's parts and the rest holds training's;
- activations: with gradient checkpointing one saved hidden state per layer plus one layer being
  recomputed; without it every layer's intermediate tensors; the logits (see LOGIT_BYTES_*);
- a fixed CUDA context / allocator reserve.

ZeRO/FSDP sharding divides the sharded parts by the number of GPUs; ZeRO-3 offload moves the
optimizer states to the CPU. The numbers agree with the guide's table (tests/test_gpu_fit.py) within
25%; they are for choosing hardware, not a guarantee.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from trainer import settings
from trainer.errors import BadInput
from trainer.generation import decide_vllm
from trainer.spec import BUILTIN_MODEL, DPOStage, GRPOStage, JobSpec, StageBase

GIB = 1024**3
CUDA_RESERVE_GIB = 1.5  # CUDA context, cuBLAS workspace, allocator slack
# Per vocabulary entry per token. SFT's cross-entropy upcasts: bf16 logits + fp32 copy + fp32
# log-softmax + fp32 grad. DPO/GRPO take per-token log-probs with TRL's selective_log_softmax
# (row by row): bf16 logits + their grad + a row's fp32 temporaries.
LOGIT_BYTES_SFT = 14
LOGIT_BYTES_LOGPROB = 6
USABLE_FRACTION = 0.92  # leave headroom: fragmentation, NCCL buffers
# TRL's colocated vLLM reserves this share of each GPU's memory (GRPOConfig.vllm_gpu_memory_utilization's
# default, which trainer/recipes/grpo.py keeps) for its weights, activations and paged KV cache; it refuses
# to start when its parts do not fit in it.
VLLM_GPU_MEMORY_UTILIZATION = 0.3
VLLM_OVERHEAD_GIB = 1.0  # vLLM's profile-run activations, CUDA graphs, sampler buffers


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers the estimate needs (read from a model's config.json)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    head_dim: int | None = None
    source: str = "config.json"
    n_params: int | None = None  # a stated count (`model.params`) wins over the architecture's sum

    @property
    def dh(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def linear_params_per_layer(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.dh
        q_o = 2 * h * self.heads * self.dh
        return q_o + 2 * h * kv + 3 * h * self.intermediate

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        if self.n_params is not None:
            return self.n_params
        return self.layers * self.linear_params_per_layer + self.embedding_params

    def lora_params(self, r: int, target_modules: str | list[str]) -> int:
        h, kv, inter = self.hidden, self.kv_heads * self.dh, self.intermediate
        qd = self.heads * self.dh
        dims = {"q_proj": h + qd, "k_proj": h + kv, "v_proj": h + kv, "o_proj": qd + h,
                "gate_proj": h + inter, "up_proj": h + inter, "down_proj": inter + h}
        names = list(dims) if target_modules == "all-linear" else [str(m) for m in target_modules]
        return self.layers * r * sum(dims.get(n, 2 * h) for n in names)

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.dh * 2  # k and v, bf16

    @classmethod
    def from_config(cls, cfg: dict, source: str = "config.json") -> ModelShape:
        cfg = cfg.get("text_config", cfg)  # multimodal wrappers keep the LM under text_config
        heads = cfg["num_attention_heads"]
        return cls(hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
                   layers=cfg["num_hidden_layers"], heads=heads,
                   kv_heads=cfg.get("num_key_value_heads") or heads, vocab=cfg["vocab_size"],
                   tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   head_dim=cfg.get("head_dim"), source=source)


# When a config.json is out of reach (offline, gated repo), a documented stand-in by size:
# Llama-2 / SmolLM2 / Qwen2.5 shapes. The name's "7B", "13B", "72B"... picks the nearest.
_REFERENCE_SHAPES: dict[float, ModelShape] = {
    0.135: ModelShape(576, 1536, 30, 9, 3, 49152, True, source="SmolLM2-135M shape"),
    0.5: ModelShape(896, 4864, 24, 14, 2, 151936, True, source="Qwen2.5-0.5B shape"),
    1.5: ModelShape(1536, 8960, 28, 12, 2, 151936, True, source="Qwen2.5-1.5B shape"),
    3: ModelShape(2048, 11008, 36, 16, 2, 151936, True, source="Qwen2.5-3B shape"),
    7: ModelShape(4096, 11008, 32, 32, 32, 32000, source="Llama-2-7B shape"),
    8: ModelShape(4096, 14336, 32, 32, 8, 128256, source="Llama-3-8B shape"),
    13: ModelShape(5120, 13824, 40, 40, 40, 32000, source="Llama-2-13B shape"),
    14: ModelShape(5120, 13824, 48, 40, 8, 152064, source="Qwen2.5-14B shape"),
    32: ModelShape(5120, 27648, 64, 40, 8, 152064, source="Qwen2.5-32B shape"),
    70: ModelShape(8192, 28672, 80, 64, 8, 32000, source="Llama-2-70B shape"),
    72: ModelShape(8192, 29568, 80, 64, 8, 152064, source="Qwen2.5-72B shape"),
}
# Same-size shapes of the Qwen family (larger vocabulary, grouped-query attention).
_QWEN_SHAPES: dict[float, ModelShape] = {
    0.5: _REFERENCE_SHAPES[0.5], 1.5: _REFERENCE_SHAPES[1.5], 3: _REFERENCE_SHAPES[3],
    7: ModelShape(3584, 18944, 28, 28, 4, 152064, source="Qwen2.5-7B shape"),
    14: _REFERENCE_SHAPES[14], 32: _REFERENCE_SHAPES[32], 72: _REFERENCE_SHAPES[72],
}


class ModelSizeError(BadInput):
    """The model's size cannot be known here: a user error with its fix, not a traceback."""


def _size_from_name(name: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])", name.split("/")[-1])
    if not m:
        return None
    value = float(m.group(1))
    return value / 1000 if m.group(2) in "mM" else value


def _nearest_reference(size_b: float, qwen: bool) -> ModelShape:
    table = _QWEN_SHAPES if qwen else _REFERENCE_SHAPES
    return table[min(table, key=lambda s: abs(math.log(s / size_b)))]


def model_shape(base: str, spec_dir: Path | None = None, params: int | None = None) -> ModelShape:
    """Shape from the model's config.json: a local folder, the Hugging Face cache, or the Hub (once
    per process, and only when the Hub answers); failing those, a reference architecture of the size
    in the model's name. `params` (the spec's `model.params`) overrides the count: the layers and
    widths then come from the nearest reference shape (for the memory estimate only)."""
    shape = _config_shape(base, spec_dir)
    if params is not None:
        if shape is None or shape.source.endswith(" shape"):
            shape = _nearest_reference(params / 1e9, "qwen" in base.lower())
        return replace(shape, n_params=int(params), source=f"model.params {params / 1e9:.2f}B, {shape.source}")
    if shape is not None:
        return shape
    size = _size_from_name(base)
    if size is None:
        raise ModelSizeError(f"cannot size model {base!r}: no config.json here or in the Hugging Face cache "
                             "and no size (e.g. 7B) in its name; set model.params in the spec "
                             "(e.g. params: 7.6B), or download it once (`hf download REPO config.json`)")
    return _nearest_reference(size, "qwen" in base.lower())


def _config_shape(base: str, spec_dir: Path | None) -> ModelShape | None:
    if base == BUILTIN_MODEL:
        return _REFERENCE_SHAPES[0.135]
    local = Path(base) if Path(base).is_absolute() or spec_dir is None else spec_dir / base
    for candidate in (local, Path(base)):
        if (candidate / "config.json").is_file():
            return ModelShape.from_config(json.loads((candidate / "config.json").read_text()), str(candidate))
    if "/" in base and not base.startswith((".", "/")):
        path = _hub_config(base)
        if path:
            return ModelShape.from_config(json.loads(Path(path).read_text()), f"{base} config.json")
    return None


def _hub_config(repo: str) -> str | None:
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo, "config.json")
    if isinstance(cached, str):
        return cached
    if settings.offline() or not _hub_reachable():
        return None
    try:  # a few KB; gated repos need HF_TOKEN and fall back to the name otherwise
        return hf_hub_download(repo, "config.json", etag_timeout=5)
    except Exception:  # noqa: BLE001 - any failure means "use the reference shape"
        return None


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """A 2-second check, once per process: offline, huggingface_hub would retry for half a minute,
    and a DNS look-up per call cost `ft gpus` 31 s."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------ estimate
@dataclass
class StageEstimate:
    stage: str
    method: str
    parts: dict[str, float] = field(default_factory=dict)  # GiB per GPU, by component
    num_gpus: int = 1

    @property
    def per_gpu_gib(self) -> float:
        return sum(self.parts.values())

    @property
    def vllm_gib(self) -> float:
        """vLLM's parts (0 when the stage does not generate with vLLM)."""
        return sum(v for k, v in self.parts.items() if k.startswith("vLLM"))

    def fits(self, gpu_mem_gib: float) -> bool:
        usable = gpu_mem_gib * USABLE_FRACTION
        if not self.vllm_gib:
            return self.per_gpu_gib <= usable
        reserved = VLLM_GPU_MEMORY_UTILIZATION * gpu_mem_gib
        return self.vllm_gib <= reserved and self.per_gpu_gib - self.vllm_gib + reserved <= usable


def uses_vllm(stage: StageBase) -> bool:
    """A stage generates with vLLM on a cloud GPU: GRPO with `use_vllm` auto or on. The same decision the
    trainer makes on the node (trainer.generation.decide_vllm), there with vLLM installed (the training
    image carries it) and CUDA present."""
    return isinstance(stage, GRPOStage) and decide_vllm(stage.use_vllm, installed=True, cuda=True)


@dataclass
class JobEstimate:
    model: str
    params_b: float
    shape_source: str
    stages: list[StageEstimate]

    @property
    def per_gpu_gib(self) -> float:
        """The stage with the biggest need decides: one job runs all its stages on one machine."""
        return max(s.per_gpu_gib for s in self.stages)


def weight_bytes(spec: JobSpec, shape: ModelShape) -> float:
    """Bytes of the base weights on the GPU (NF4 linears for QLoRA)."""
    half = 4 if spec.model.dtype == "float32" else 2
    if spec.finetune.method == "qlora" and spec.finetune.quantization.load_in_4bit:
        overhead = 1.02 if spec.finetune.quantization.double_quant else 1.06
        return shape.layers * shape.linear_params_per_layer * 0.5 * overhead + shape.embedding_params * half
    return shape.params * half


def estimate_stage(spec: JobSpec, stage: StageBase, shape: ModelShape, num_gpus: int = 1) -> StageEstimate:
    strategy = spec.distributed.strategy
    n = max(1, num_gpus)
    # What each strategy shards across the GPUs (DDP and "none" replicate everything).
    shard_params = strategy in ("fsdp", "deepspeed_zero3_offload")
    shard_grads_opt = strategy in ("fsdp", "deepspeed_zero2", "deepspeed_zero3_offload")
    offload_opt = strategy == "deepspeed_zero3_offload"
    lora = spec.finetune.method in ("lora", "qlora")

    est = StageEstimate(stage.stage_name, stage.method, num_gpus=n)
    weights = weight_bytes(spec, shape)
    est.parts["weights"] = weights / (n if shard_params else 1) / GIB

    if lora:
        trainable = shape.lora_params(spec.finetune.lora.r, spec.finetune.lora.target_modules)
        weights_t, grads_opt = trainable * 4, trainable * 12  # fp32 adapter, fp32 grad + 2 moments
    else:
        trainable = shape.params
        weights_t, grads_opt = 0, trainable * 2 + (0 if offload_opt else trainable * 8)
    est.parts["trainable+optimizer"] = (weights_t + grads_opt / (n if shard_grads_opt else 1)) / GIB

    bs, seq = stage.per_device_train_batch_size, stage.max_length
    if isinstance(stage, DPOStage):
        bs *= 2  # chosen + rejected in one forward
        if not lora:
            est.parts["reference model"] = shape.params * 2 / (n if shard_params else 1) / GIB
    if isinstance(stage, GRPOStage):
        seq = stage.max_length + stage.max_completion_length  # the prompt budget + the completion
        gen_batch = stage.per_device_train_batch_size * stage.gradient_accumulation_steps
        kv_cache = gen_batch * seq * shape.kv_bytes_per_token() / GIB
        if uses_vllm(stage):  # one engine per process, unsharded (tensor parallel 1), bf16 weights
            est.parts["vLLM weights"] = shape.params * 2 / GIB
            est.parts["vLLM kv-cache"] = kv_cache
            est.parts["vLLM overhead"] = VLLM_OVERHEAD_GIB
        else:
            est.parts["generation kv-cache"] = kv_cache
        if stage.beta > 0 and not lora:
            est.parts["reference model"] = shape.params * 2 / (n if shard_params else 1) / GIB

    tokens = bs * seq
    layer_bytes_per_token = (10 * shape.hidden + 4 * shape.intermediate) * 2  # one layer's intermediates
    if stage.gradient_checkpointing:
        act = tokens * (shape.layers * shape.hidden * 2 + layer_bytes_per_token)
    else:
        act = tokens * shape.layers * layer_bytes_per_token
    est.parts["activations"] = act / GIB
    per_logit = LOGIT_BYTES_LOGPROB if isinstance(stage, (DPOStage, GRPOStage)) else LOGIT_BYTES_SFT
    est.parts["logits"] = tokens * shape.vocab * per_logit / GIB
    est.parts["cuda reserve"] = CUDA_RESERVE_GIB
    return est


def estimate(spec: JobSpec, spec_dir: Path | None = None, num_gpus: int = 1,
             shape: ModelShape | None = None) -> JobEstimate:
    shape = shape or model_shape(spec.model.base, spec_dir, spec.model.params)
    stages = [estimate_stage(spec, s, shape, num_gpus) for s in spec.stages]
    return JobEstimate(spec.model.base, shape.params / 1e9, shape.source, stages)


def fits(spec: JobSpec, gpu_mem_gib: float, count: int, spec_dir: Path | None = None,
         shape: ModelShape | None = None) -> bool:
    """Does the job fit `count` GPUs of `gpu_mem_gib` each, under its distributed strategy?

    Without a multi-GPU strategy only one GPU is used, so the extra GPUs buy nothing. Every stage must
    fit (StageEstimate.fits: a stage with vLLM also within vLLM's share of the GPU).
    """
    if count > 1 and spec.distributed.strategy == "none":
        count = 1
    return all(s.fits(gpu_mem_gib) for s in estimate(spec, spec_dir, num_gpus=count, shape=shape).stages)


# GPU memory per device (GiB) for when a catalog row lacks it. Names are SkyPilot's canonical ones.
GPU_MEMORY_GIB: dict[str, float] = {
    "H200": 141, "H100": 80, "H100-MEGA": 80, "GH200": 96, "B200": 180, "A100-80GB": 80, "A100": 40,
    "A100-80GB-SXM": 80, "L40S": 48, "L40": 48, "A6000": 48, "RTXA6000": 48, "A40": 48, "L4": 24,
    "A10G": 24, "A10": 24, "RTX4090": 24, "RTX3090": 24, "RTX5090": 32, "V100": 16, "V100-32GB": 32,
    "T4": 16, "A5000": 24, "RTXA5000": 24, "A4000": 16, "RTXA4000": 16,
}


def known_memory_gib(accelerator: str) -> float | None:
    return GPU_MEMORY_GIB.get(accelerator) or GPU_MEMORY_GIB.get(accelerator.upper())


def sane_memory_gib(accelerator: str, catalog_gib: float | None, count: int = 1) -> tuple[float | None, str | None]:
    """Per-GPU memory from a catalog row, checked against the accelerator's known memory.

    The providers' catalogs disagree on the field SkyPilot reads as per-GPU MiB: RunPod writes GiB
    there (80 for an A100-80GB, read as 0.08 GiB); Vast writes the machine's total (287542 for
    2 × H200). A value that is the known memory once multiplied by 1024, or divided by the GPU count,
    is taken so; any other value far from the known memory is replaced by it, with a note.
    Returns (GiB, a note when the catalog was overruled)."""
    known = known_memory_gib(accelerator)
    value = catalog_gib if catalog_gib is not None and math.isfinite(catalog_gib) and catalog_gib > 0 else None

    def near(x: float) -> bool:
        return known is not None and 0.8 * known <= x <= 1.2 * known

    if value is None:
        return known, None
    if known is None:  # unknown GPU: only the GiB-for-MiB quirk is unambiguous
        return (value * 1024 if value < 1 else value), None
    for candidate in (value, value * 1024, value / max(count, 1)):
        if near(candidate):
            return candidate, None
    return known, f"{accelerator}: catalog says {value:g} GiB per GPU, using the known {known:g} GiB"


def close_gpu_names(name: str, known: set[str] | list[str], n: int = 3) -> list[str]:
    """Known accelerator names closest to a mistyped one (case-insensitive)."""
    names = {k.lower(): k for k in set(known) | set(GPU_MEMORY_GIB)}
    return [names[m] for m in difflib.get_close_matches(name.lower(), list(names), n=n, cutoff=0.5)]
