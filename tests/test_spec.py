"""The job spec: the shipped configs load; errors name the file, the field path and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.spec import JobSpec, SpecError, load_spec

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["demo", "math_gsm8k", "translation_ko_en"])
def test_shipped_configs_load(name):
    spec = load_spec(REPO / "configs" / f"{name}.yaml")
    assert spec.stages[0].method == "sft"
    resolved = spec.resolved()
    assert all(s["name"] for s in resolved["stages"])
    # Round trip: the resolved spec (every default filled in) validates as is.
    assert JobSpec.model_validate(resolved).resolved() == resolved


def test_use_case_configs_carry_the_guides_settings():
    math = load_spec(REPO / "configs/math_gsm8k.yaml")
    lora = math.finetune.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (64, 128, 0.05, "all-linear")
    assert math.finetune.method == "qlora" and math.finetune.quantization.quant_type == "nf4"
    assert math.finetune.quantization.compute_dtype == "bfloat16"
    sft, dpo, grpo = math.stages
    assert (sft.learning_rate, sft.epochs, sft.per_device_train_batch_size, sft.gradient_accumulation_steps,
            sft.max_length, sft.packing) == (2e-5, 3, 4, 4, 2048, True)
    assert (dpo.beta, dpo.loss_type, dpo.learning_rate, dpo.epochs) == (0.1, "sigmoid", 5e-7, 1)
    assert (grpo.num_generations, grpo.max_completion_length, grpo.temperature, grpo.beta, grpo.learning_rate) \
        == (4, 512, 0.7, 0.05, 1e-6)
    assert math.model.base == "Qwen/Qwen2.5-Math-7B-Instruct"
    assert load_spec(REPO / "configs/translation_ko_en.yaml").model.base == "Qwen/Qwen2.5-7B-Instruct"


def test_unknown_key_names_path_and_line(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nmodel:\n  base: m\n  flavour: 3\ndata:\n  task: math\n  sft_train: a.jsonl\n"
                    "stages:\n  - method: sft\n")
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert "model.flavour (line 4): unknown key" in str(e.value)
    assert str(spec) in str(e.value)


def test_stage_field_error_names_index(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nmodel: {base: m}\ndata: {task: math, sft_train: a, dpo_train: b}\nstages:\n"
                    "  - method: sft\n  - method: dpo\n    beta: -1\n")
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert "stages[1].beta (line 7)" in str(e.value)


def test_grpo_batch_must_divide_by_generations(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nmodel: {base: m}\ndata: {task: math, grpo_train: g}\nstages:\n"
                    "  - {method: grpo, num_generations: 3, per_device_train_batch_size: 2, "
                    "gradient_accumulation_steps: 1}\n")
    with pytest.raises(SpecError, match="divisible by num_generations"):
        load_spec(spec)


def test_schema_command_prints_json_schema():
    from jobs.cli import app

    result = CliRunner().invoke(app, ["spec", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False
    assert {"model", "data", "stages"} <= set(schema["required"])
