"""`KEY=VALUE` overrides of spec fields: dotted paths, list indices, values read as the spec's YAML,
every step checked against the spec's models, and type errors from the model naming the override."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.errors import BadInput
from trainer.overrides import apply_overrides, parse_override
from trainer.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
MATH = REPO / "configs" / "math_gsm8k.yaml"


def _problem(overrides: list[str], config: Path = DEMO) -> tuple[str, str]:
    with pytest.raises(SpecError) as e:
        load_spec(config, overrides)
    assert isinstance(e.value, BadInput) and e.value.exit_code == 2
    assert len(e.value.problems) == 1, e.value.problems
    return e.value.problems[0]


def test_dotted_paths_and_list_indices_set_the_fields():
    base = load_spec(DEMO)
    spec = load_spec(DEMO, ["stages.0.max_steps=3", "finetune.lora.r=16", "stages.2.temperature=0.9",
                            "name=demo-two"])
    assert (spec.stages[0].max_steps, spec.finetune.lora.r, spec.stages[2].temperature, spec.name) == \
        (3, 16, 0.9, "demo-two")
    assert base.stages[0].max_steps != 3 and base.finetune.lora.r != 16 and base.stages[2].temperature != 0.9
    # everything not overridden is the file's
    assert spec.stages[1] == base.stages[1] and spec.model == base.model and spec.data == base.data


def test_later_overrides_win_and_the_input_mapping_is_not_touched():
    raw = {"name": "x", "stages": [{"method": "sft", "max_steps": 1}]}
    out, origins = apply_overrides(raw, ["stages.0.max_steps=2", "stages.0.max_steps=5"], "s.yaml")
    assert out["stages"][0]["max_steps"] == 5 and raw["stages"][0]["max_steps"] == 1
    assert origins == {("stages", 0, "max_steps"): "override stages.0.max_steps=5"}


@pytest.mark.parametrize(("text", "expected"), [
    ("stages.0.learning_rate=2e-5", 2e-5),        # YAML 1.2 float, as in the spec file (1.1 would say str)
    ("stages.0.max_steps=3", 3),
    ("resources.use_spot=false", False),
    ("resources.accelerators=A100-80GB:1", "A100-80GB:1"),
    ("evaluation.lm_eval_tasks=[gsm8k, minerva_math]", ["gsm8k", "minerva_math"]),
    ("finetune.lora={r: 4, alpha: 8}", {"r": 4, "alpha": 8}),
    ("resources.accelerators=", None),               # empty: null, i.e. the default
    ("data.system_prompt=a=b", "a=b"),               # only the first `=` splits
])
def test_values_are_read_as_the_specs_yaml(text, expected):
    assert parse_override(text)[1] == expected


def test_a_section_left_to_its_defaults_can_be_set_field_by_field():
    assert "distributed" not in DEMO.read_text()  # the demo leaves it to the defaults
    spec = load_spec(DEMO, ["distributed.num_nodes=2", "resources.clouds=[aws]"])
    assert spec.distributed.num_nodes == 2 and spec.resources.clouds == ["aws"]


def test_whole_values_and_sections_replace():
    spec = load_spec(DEMO, ["finetune.lora={r: 4, alpha: 8}"])
    assert (spec.finetune.lora.r, spec.finetune.lora.alpha) == (4, 8)
    assert spec.finetune.lora.dropout == 0.05  # the model's default, not the file's other keys


@pytest.mark.parametrize(("override", "words"), [
    ("stages.9.learning_rate=1", ["stages.9", "no such item", "0-2"]),
    ("finetune.lora.rr=3", ["finetune.lora", "'rr'", "did you mean r"]),
    ("modle.base=x", ["the spec has no field 'modle'", "did you mean model"]),
    ("stages.sft.max_steps=1", ["stages is a list", "index"]),
    ("model.base.name=x", ["model.base is a value"]),
    ("finetune.0=x", ["finetune is a section"]),
    ("stages.0.beta=0.2", ["stages.0 has no field 'beta'"]),   # beta is a DPO/GRPO field; stage 0 is SFT
    ("stages.0.max_steps.x=1", ["stages.0.max_steps is a value"]),
])
def test_an_unknown_path_is_refused_naming_it(override, words):
    where, message = _problem([override])
    assert where == f"override {override}"
    for w in words:
        assert w in message, message


def test_the_stage_kind_decides_its_fields():
    spec = load_spec(DEMO, ["stages.1.beta=0.2", "stages.2.num_generations=4"])
    assert spec.stages[1].beta == 0.2 and spec.stages[2].num_generations == 4  # the file: 0.1 and 2


@pytest.mark.parametrize(("override", "where", "message"), [
    ("stages.0.max_steps=abc", "stages[0].max_steps (override stages.0.max_steps=abc)", "valid integer"),
    ("stages.1.beta=-1", "stages[1].beta (override stages.1.beta=-1)", "greater than 0"),
    ("resources.use_spot=on", "resources.use_spot (override resources.use_spot=on)", "valid boolean"),
    ("finetune.lora.r=true", "finetune.lora.r (override finetune.lora.r=true)", "valid integer"),
    ("store.uri=s3:/bucket", "store.uri (override store.uri=s3:/bucket)", "two slashes"),
    ("finetune.lora={r: 4, rr: 8}", "finetune.lora.rr (override finetune.lora={r: 4, rr: 8})", "unknown key"),
])
def test_type_errors_come_from_the_spec_model_naming_the_field_and_the_override(override, where, message):
    got_where, got_message = _problem([override])
    assert got_where == where and message in got_message, (got_where, got_message)


def test_errors_outside_the_overrides_keep_their_line():
    with pytest.raises(SpecError) as e:
        load_spec(DEMO, ["stages.1.beta=-1", "stages.0.max_steps=-5"])
    wheres = [w for w, _ in e.value.problems]
    assert wheres == ["stages[0].max_steps (override stages.0.max_steps=-5)",
                      "stages[1].beta (override stages.1.beta=-1)"]


@pytest.mark.parametrize("text", ["x", "=3", "a..b=1", "stages.-1.x=1", "a b=1", "stages.0.max_steps=[1"])
def test_malformed_overrides_are_bad_input(text):
    with pytest.raises(SpecError) as e:
        parse_override(text, "s.yaml")
    assert e.value.problems[0][0] == f"override {text!r}"


def test_override_values_refuse_what_the_spec_file_refuses():
    with pytest.raises(SpecError, match="aliases"):
        parse_override("name=*a")
    assert isinstance(parse_override("data.system_prompt=on")[1], str)  # YAML 1.2: `on` is a string


def test_the_written_spec_validates_like_the_file():
    """The model that checks the file checks the overridden spec: whole-spec rules apply too."""
    where, message = _problem(["stages.2.num_generations=3"])  # batch 4 × 1 not divisible by 3
    assert "divisible by num_generations" in message and "stages[2]" in where
    assert load_spec(MATH, ["stages.0.epochs=1"]).stages[0].epochs == 1
