"""GPU memory estimates against the guide's table, and fit decisions."""

from __future__ import annotations

import json

import pytest

from jobs import gpu_fit
from trainer.spec import parse_spec

# The guide's "GPU Memory Requirements" table (GB): SFT (QLoRA), DPO, GRPO, full fine-tune.
GUIDE = {7: (16, 24, 32, 80), 13: (24, 40, 48, 160), 70: (80, 160, 200, 640)}

# Llama-2 configs (the canonical 7B/13B/70B), as their config.json files have them.
LLAMA2 = {
    7: {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False},
    13: {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
         "num_key_value_heads": 40, "vocab_size": 32000, "tie_word_embeddings": False},
    70: {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
         "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False},
}
KNOWN_PARAMS_B = {7: 6.74, 13: 13.02, 70: 68.98}


def _spec(base: str, method: str, stage: dict, **extra):
    data = {"name": "fit", "model": {"base": base, "dtype": "bfloat16"},
            "data": {"task": "math", "sft_train": "a.jsonl", "dpo_train": "b.jsonl", "grpo_train": "c.jsonl"},
            "finetune": {"method": method}, "stages": [stage], **extra}
    return parse_spec(data)


@pytest.fixture
def llama_dirs(tmp_path):
    dirs = {}
    for size, cfg in LLAMA2.items():
        d = tmp_path / f"llama-2-{size}b"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "llama", **cfg}))
        dirs[size] = d
    return dirs


def test_parameter_count_from_config(llama_dirs):
    for size, d in llama_dirs.items():
        shape = gpu_fit.model_shape(str(d))
        assert shape.source == str(d)
        assert shape.params / 1e9 == pytest.approx(KNOWN_PARAMS_B[size], rel=0.01)


@pytest.mark.parametrize("size", [7, 13, 70])
def test_estimates_agree_with_guide_table(llama_dirs, size):
    """Columns as the guide's configs run them: SFT with QLoRA (4-bit base); DPO and GRPO with LoRA on a
    bf16 base (the reference model is the base with the adapter off; GRPO generating with
    transformers); full fine-tuning of every weight. Guide defaults: batch 4, length 2048, gradient
    checkpointing, r=64 on all linear layers, 4 generations of 512 tokens after prompts of up to 512."""
    base = str(llama_dirs[size])
    columns = [
        _spec(base, "qlora", {"method": "sft"}),
        _spec(base, "lora", {"method": "dpo"}),
        # the guide's GRPO prompts are at most 512 tokens: the stage's prompt budget (max_length)
        _spec(base, "lora", {"method": "grpo", "use_vllm": "off", "max_length": 512}),
        _spec(base, "full", {"method": "sft"}),
    ]
    for spec, guide_gb in zip(columns, GUIDE[size], strict=True):
        got = gpu_fit.estimate(spec).per_gpu_gib
        assert got == pytest.approx(guide_gb, rel=0.25), (size, spec.stages[0].method, spec.finetune.method, got)


def test_which_gpus_fit(llama_dirs):
    qlora_7b = _spec(str(llama_dirs[7]), "qlora", {"method": "sft"})
    assert gpu_fit.fits(qlora_7b, 24, 1)  # an A10G / RTX4090
    assert not gpu_fit.fits(qlora_7b, 12, 1)
    full_70b = _spec(str(llama_dirs[70]), "full", {"method": "sft"})
    assert not gpu_fit.fits(full_70b, 80, 8)  # one process: the other seven GPUs idle
    ddp = full_70b.model_copy(update={"distributed": full_70b.distributed.model_copy(update={"strategy": "ddp"})})
    assert not gpu_fit.fits(ddp, 80, 8)  # DDP replicates everything
    # The spec refuses ZeRO-3 offload until the image has a C++ compiler (tests/test_gpu_path.py); the
    # estimate for it stays right for when it does.
    zero3 = full_70b.model_copy(update={"distributed": full_70b.distributed.model_copy(
        update={"strategy": "deepspeed_zero3_offload"})})
    assert gpu_fit.fits(zero3, 80, 8)  # parameters sharded, optimizer states on the CPU
    assert not gpu_fit.fits(zero3, 80, 2)


def test_sharding_and_quantization_lower_the_need(llama_dirs):
    base = str(llama_dirs[13])
    lora = gpu_fit.estimate(_spec(base, "lora", {"method": "sft"})).per_gpu_gib
    qlora = gpu_fit.estimate(_spec(base, "qlora", {"method": "sft"})).per_gpu_gib
    assert qlora < lora
    full = _spec(base, "full", {"method": "sft"}, distributed={"strategy": "deepspeed_zero2"})
    assert gpu_fit.estimate(full, num_gpus=4).per_gpu_gib < gpu_fit.estimate(full, num_gpus=1).per_gpu_gib
    no_ckpt = gpu_fit.estimate(_spec(base, "qlora", {"method": "sft", "gradient_checkpointing": False}))
    assert no_ckpt.per_gpu_gib > qlora


def test_model_without_reachable_config_uses_reference_shape(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shape = gpu_fit.model_shape("someone/Some-Model-13B-Instruct-not-cached")
    assert shape.params / 1e9 == pytest.approx(13, rel=0.05)
    assert gpu_fit.model_shape("Qwen/Qwen2.5-7B-Instruct-not-cached").vocab == 152064
    with pytest.raises(ValueError, match="cannot size"):
        gpu_fit.model_shape("someone/mystery-model")


def test_grpo_sequence_is_the_prompt_budget_plus_the_completion(llama_dirs):
    """TRL 1.x never truncates a GRPO prompt (no max_prompt_length); the trainer drops prompts over the
    stage's max_length, so the KV cache and activations are sized for max_length + max_completion_length."""
    base = str(llama_dirs[7])
    shape = gpu_fit.model_shape(base)
    parts = {}
    for max_length in (256, 2048):
        spec = _spec(base, "lora", {"method": "grpo", "use_vllm": "off", "max_length": max_length,
                                    "max_completion_length": 512})
        parts[max_length] = gpu_fit.estimate(spec).stages[0].parts
        stage = spec.stages[0]
        gen_batch = stage.per_device_train_batch_size * stage.gradient_accumulation_steps
        assert parts[max_length]["generation kv-cache"] == pytest.approx(
            gen_batch * (max_length + 512) * shape.kv_bytes_per_token() / gpu_fit.GIB)
    assert parts[2048]["activations"] > parts[256]["activations"]


def test_vllm_memory_counts_only_when_vllm_generates(llama_dirs):
    """GRPO with `use_vllm` auto/on generates with vLLM on a cloud GPU (the training image carries it): its
    own bf16 weights, the KV cache and its overhead are counted, TRL's generation cache is not; with `off`
    the cache is TRL's and no vLLM part appears. SFT and DPO never count vLLM."""
    base = str(llama_dirs[7])
    shape = gpu_fit.model_shape(base)
    off, auto, on = (gpu_fit.estimate(_spec(base, "lora", {"method": "grpo", "use_vllm": v, "max_length": 512}))
                     .stages[0] for v in ("off", "auto", "on"))
    assert off.vllm_gib == 0 and "generation kv-cache" in off.parts
    assert auto.parts == on.parts and "generation kv-cache" not in auto.parts
    assert auto.parts["vLLM weights"] == pytest.approx(shape.params * 2 / gpu_fit.GIB)
    assert auto.parts["vLLM kv-cache"] == pytest.approx(off.parts["generation kv-cache"])
    assert auto.per_gpu_gib == pytest.approx(off.per_gpu_gib + auto.parts["vLLM weights"]
                                             + gpu_fit.VLLM_OVERHEAD_GIB)
    for method in ("sft", "dpo"):
        assert gpu_fit.estimate(_spec(base, "lora", {"method": method})).stages[0].vllm_gib == 0


def test_vllm_needs_its_share_of_the_gpu(llama_dirs):
    """TRL's colocated vLLM takes VLLM_GPU_MEMORY_UTILIZATION of each GPU: a 7B LoRA GRPO that fits a 40 GB
    GPU generating with transformers needs an 80 GB one with vLLM (its ~22 GiB are more than 30% of 40 or 48
    GB, and the training side gets the rest)."""
    base = str(llama_dirs[7])
    off = _spec(base, "lora", {"method": "grpo", "use_vllm": "off", "max_length": 512})
    auto = _spec(base, "lora", {"method": "grpo", "use_vllm": "auto", "max_length": 512})
    assert [g for g in (24, 40, 48, 80) if gpu_fit.fits(off, g, 1)] == [40, 48, 80]
    assert [g for g in (24, 40, 48, 80) if gpu_fit.fits(auto, g, 1)] == [80]
    vllm = gpu_fit.estimate(auto).stages[0].vllm_gib
    assert vllm <= gpu_fit.VLLM_GPU_MEMORY_UTILIZATION * 80 and vllm > gpu_fit.VLLM_GPU_MEMORY_UTILIZATION * 48
