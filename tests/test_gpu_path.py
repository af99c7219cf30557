"""The GPU path's decisions, proven on the CPU with real components: where and in which precision a
model runs (one pure function, checked exhaustively), evaluation/sampling models landing where it says,
batched on-policy DPO sampling, the GRPO prompt-length filter (transformers 5's BatchEncoding), 4-bit
storage for sharded QLoRA, and the spec's refusals. What needs a GPU is in benchmarks/gpu.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from eval_fixtures import gsm8k_test_rows, make_adapter, make_tiny_model

from trainer.errors import EXIT_BAD_INPUT, BadInput
from trainer.models import CapabilityError, Placement, decide_placement


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gpu-path")
    base = make_tiny_model(root / "base")
    return base, make_adapter(base, root / "adapter")


# ------------------------------------------------------------------------ device and precision
def _expected(cuda: bool, bf16: bool, dtype: str) -> Placement | type[Exception]:
    if not cuda:
        return Placement("cpu", "float32")
    if dtype == "auto":
        return Placement("cuda", "bfloat16" if bf16 else "float16")
    if dtype == "bfloat16" and not bf16:
        return CapabilityError
    return Placement("cuda", dtype)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cuda", "bf16", "dtype"),
                         list(itertools.product([True, False], [True, False],
                                                ["auto", "bfloat16", "float16", "float32"])))
def test_placement_decision_exhaustive(cuda: bool, bf16: bool, dtype: str) -> None:
    expected = _expected(cuda, bf16, dtype)
    if isinstance(expected, type):
        with pytest.raises(expected, match="model.dtype: bfloat16 needs an Ampere"):
            decide_placement(cuda, bf16, dtype)
        return
    got = decide_placement(cuda, bf16, dtype)
    assert got == expected
    assert got.mixed_precision == {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}[got.dtype]


def test_placement_refuses_unknown_dtype() -> None:
    with pytest.raises(BadInput, match="model.dtype"):
        decide_placement(True, True, "int8")


def test_mixed_precision_env_agrees_with_the_trainer() -> None:
    """What `ft launch` passes to accelerate for an explicit dtype is what the trainer decides on a GPU
    that supports it."""
    from jobs.accelerate_config import MIXED_PRECISION

    for dtype in ("bfloat16", "float16", "float32"):
        assert MIXED_PRECISION[dtype] == decide_placement(True, True, dtype).mixed_precision
    assert MIXED_PRECISION["auto"] == "auto"  # decided on the node, by the GPU


@pytest.mark.parametrize("dtype", ["auto", "bfloat16", "float16", "float32"])
def test_inference_model_lands_where_the_decision_says(tiny, dtype: str, monkeypatch) -> None:
    """No CUDA here: the decision is (cpu, fp32) for every spec dtype, and the loaded base, adapter model
    and the kwargs they were loaded with say the same."""
    from peft import PeftModel

    from trainer import models

    assert not torch.cuda.is_available()
    where, kwargs = models.inference_kwargs(str(tiny[0]), dtype)
    assert where == decide_placement(False, False, dtype) == Placement("cpu", "float32")
    assert kwargs["device_map"] == {"": "cpu"} and kwargs["dtype"] == torch.float32
    for adapter in (None, tiny[1]):
        model = models.load_model_for_inference(str(tiny[0]), adapter, dtype=dtype)
        assert isinstance(model, PeftModel) == (adapter is not None)
        assert not model.training
        assert {p.device.type for p in model.parameters()} == {where.device}
        assert {p.dtype for p in model.parameters()} == {getattr(torch, where.dtype)}


def test_inference_kwargs_on_a_gpu_load_onto_this_rank(tiny, monkeypatch) -> None:
    """Simulated CUDA (the test says so: has_cuda and bf16 support patched, no model is loaded): the
    model is loaded straight onto this process's GPU (LOCAL_RANK under accelerate) in bf16."""
    from trainer import models

    monkeypatch.setattr(models, "has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(models, "pick_attention", lambda model: "sdpa")
    monkeypatch.setenv("LOCAL_RANK", "3")
    where, kwargs = models.inference_kwargs(str(tiny[0]), "auto")
    assert where == Placement("cuda", "bfloat16")
    assert kwargs["device_map"] == {"": "cuda:3"} and kwargs["dtype"] == torch.bfloat16
    assert str(models.training_device()) == "cuda:3"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert models.inference_kwargs(str(tiny[0]), "auto")[1]["dtype"] == torch.float16  # pre-Ampere


# ------------------------------------------------------------------------ on-policy DPO sampling
def test_on_policy_sampling_is_batched_on_the_training_device(tiny) -> None:
    from transformers import AutoModelForCausalLM

    from trainer.models import load_tokenizer
    from trainer.recipes.dpo import on_policy_pairs, sample_on_training_device

    model = AutoModelForCausalLM.from_pretrained(tiny[0], dtype=torch.float32)
    model.train()
    tok = load_tokenizer(str(tiny[0]))
    tok.padding_side = "right"
    rows = gsm8k_test_rows(5)
    calls: list[tuple[int, ...]] = []
    generate = model.generate

    def counting_generate(**kw):  # the real generate; only its batch shapes are recorded
        calls.append(tuple(kw["input_ids"].shape))
        return generate(**kw)

    model.generate = counting_generate
    pairs = sample_on_training_device(model, "none", lambda: on_policy_pairs(
        model, tok, rows, samples=2, max_new_tokens=4, temperature=1.0, seed=0, batch_size=3))
    assert [c[0] for c in calls] == [3, 2]  # 5 prompts in batches of 3, not one at a time
    assert 0 < len(pairs) <= 5  # a random model's answers are wrong
    for p in pairs:
        assert p["prompt"] in [r["prompt"] for r in rows]
        assert p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
    assert tok.padding_side == "right" and model.training  # restored for the trainer
    assert next(model.parameters()).device.type == "cpu"  # the training device here


# ------------------------------------------------------------------------ GRPO prompt filter
def test_chat_template_len_is_not_a_token_count_in_transformers_5(tiny) -> None:
    """The defect: len() of apply_chat_template(tokenize=True) is its number of keys."""
    from trainer.models import load_tokenizer
    from trainer.recipes.grpo import prompt_lengths

    tok = load_tokenizer(str(tiny[0]))
    prompt = gsm8k_test_rows(1)[0]["prompt"]
    enc = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
    assert len(enc) == 2  # input_ids, attention_mask
    ids = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert prompt_lengths(tok, [prompt, "a plain string prompt"]) == [
        len(ids), len(tok("a plain string prompt", add_special_tokens=False)["input_ids"])]
    assert len(ids) > 20


def test_grpo_filter_drops_long_prompts_counts_and_logs(tiny) -> None:
    from datasets import Dataset

    from trainer.models import load_tokenizer
    from trainer.recipes.grpo import PromptFilterLog, filter_prompts, prompt_lengths

    tok = load_tokenizer(str(tiny[0]))
    rows = gsm8k_test_rows(6)
    lengths = prompt_lengths(tok, [r["prompt"] for r in rows])
    budget = sorted(lengths)[2]  # three fit (ties aside)
    train, dropped = filter_prompts(Dataset.from_list(rows), tok, budget)
    assert dropped == sum(n > budget for n in lengths) > 0
    assert len(train) == 6 - dropped
    assert all(n <= budget for n in prompt_lengths(tok, list(train["prompt"])))
    logs = {"loss": 1.0}
    PromptFilterLog(dropped, len(train)).on_log(None, None, None, logs=logs)
    assert logs == {"loss": 1.0, "prompts_dropped": dropped, "prompts_kept": 6 - dropped}

    train, dropped = filter_prompts(Dataset.from_list(rows), tok, max(lengths))
    assert dropped == 0 and len(train) == 6

    with pytest.raises(BadInput, match="max_length 5 tokens") as err:
        filter_prompts(Dataset.from_list(rows), tok, 5, "grpo")
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_validate_flags_grpo_prompts_over_the_budget(tiny, tmp_path) -> None:
    from eval_fixtures import write_jsonl

    from mac.validate import validate_file
    from trainer.models import load_tokenizer
    from trainer.recipes.grpo import prompt_lengths

    tok = load_tokenizer(str(tiny[0]))
    rows = gsm8k_test_rows(6)
    lengths = prompt_lengths(tok, [r["prompt"] for r in rows])
    path = write_jsonl(tmp_path / "grpo.jsonl", rows)
    budget = sorted(lengths)[2]
    report = validate_file(path, "grpo", tokenizer=tok, max_length=budget)
    warnings = [f.message for f in report.findings if f.severity == "warning"]
    assert report.errors == 0
    assert any(f"{sum(n > budget for n in lengths)} GRPO prompts" in w and "dropped" in w for w in warnings)
    assert report.token_max == max(lengths)  # counted as the trainer counts them (generation prompt)

    report = validate_file(path, "grpo", tokenizer=tok, max_length=min(lengths) - 1)
    assert report.errors == 1
    assert "max_length" in [f.message for f in report.findings if f.severity == "error"][0]


# ------------------------------------------------------------------------ QLoRA storage, refusals
@pytest.mark.parametrize(("strategy", "stored"), [("none", None), ("ddp", None), ("deepspeed_zero2", None),
                                                  ("fsdp", torch.float32)])
def test_sharded_qlora_stores_4bit_weights_in_the_model_dtype(strategy, stored, tiny) -> None:
    """FSDP flattens a module's parameters into one buffer: the 4-bit weights are stored in the model's
    dtype (PEFT's FSDP + QLoRA recipe), here fp32 on the CPU. Loaded for real with bitsandbytes."""
    from transformers import AutoModelForCausalLM

    from trainer.models import model_init_kwargs
    from trainer.spec import FinetuneSpec, ModelSpec

    kwargs = model_init_kwargs(ModelSpec(base=str(tiny[0])), FinetuneSpec(method="qlora"), strategy)
    quant = kwargs["quantization_config"]
    assert quant.bnb_4bit_quant_storage == (stored or torch.uint8)
    model = AutoModelForCausalLM.from_pretrained(tiny[0], **kwargs)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    assert type(q_proj).__name__ == "Params4bit"
    assert q_proj.dtype == (stored or torch.uint8)


def test_spec_refuses_zero3_offload() -> None:
    from trainer.spec import SpecError, parse_spec

    with pytest.raises(SpecError, match=r"distributed.strategy: deepspeed_zero3_offload .*C\+\+ compiler") as err:
        parse_spec({"name": "x", "model": {"base": "m-7B"}, "data": {"task": "math", "sft_train": "a"},
                    "stages": [{"method": "sft"}], "distributed": {"strategy": "deepspeed_zero3_offload"}})
    assert err.value.exit_code == EXIT_BAD_INPUT
