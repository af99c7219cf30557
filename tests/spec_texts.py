"""Job spec texts the tests build on, written once. They are `str.format` templates: `{model}` is the
base model's folder, and literal YAML braces are doubled."""

# The math job's data files, as the bundled GSM8K sample lays them out (tests/conftest.py `math_data`).
MATH_DATA = """data:
  task: math
  sft_train: data/sft_train.jsonl
  sft_valid: data/sft_val.jsonl
  dpo_train: data/preference_pairs.jsonl
  grpo_train: data/grpo_prompts.jsonl
  test: data/gsm8k_test.jsonl
"""

# SFT → DPO → GRPO with the schema's defaults otherwise.
THREE_STAGES = """stages:
  - {{method: sft, max_length: 512}}
  - {{method: dpo, max_length: 512}}
  - {{method: grpo, max_length: 512, num_generations: 2}}
"""


def math_spec(name: str, rest: str = THREE_STAGES) -> str:
    """A math job named `name` on `{model}`: its data, then `rest` (stages and anything else)."""
    return f"name: {name}\nmodel: {{{{base: {{model}}}}}}\n" + MATH_DATA + rest
