"""`prototype_mapping`: how each prototype setting maps onto the GPU run (pure, no mlx)."""

from __future__ import annotations

from pathlib import Path

from mac.prototype import memory_advice
from mac.prototype_map import prototype_mapping
from trainer.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]


def _rows(spec) -> dict[str, tuple[str, str, str | None]]:
    return {setting: (mlx, gpu, warn) for setting, mlx, gpu, warn in prototype_mapping(spec)}


def _demo(**changes) -> dict:
    data = load_spec(REPO / "configs" / "demo.yaml").model_dump(mode="json")
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
    return data


def test_demo_mapping_scale_keys_layers():
    rows = _rows(parse_spec(_demo()))
    assert rows["alpha"][0].startswith("scale 2 ") and rows["alpha"][1] == "lora_alpha=16"
    assert rows["rank"] == ("8", "r=8", None)
    assert "every linear layer" in rows["target modules"][0] and rows["target modules"][1].endswith("all-linear")
    assert rows["layers"][0] == "the last 8 blocks" and "all blocks" in rows["layers"][2]
    assert rows["prompt masking"][2] is None and rows["method"][2] is None
    assert all(len(r) == 4 for r in prototype_mapping(parse_spec(_demo())))


def test_warnings_where_mlx_cannot_honour_a_setting():
    spec = parse_spec(_demo(finetune__method="full", finetune__lora__layers_to_transform=[0, 2],
                            prototype__mask_prompt=False, prototype__learning_rate=1e-6,
                            prototype__model="mlx-community/SmolLM2-135M-Instruct-4bit",
                            stages__0__learning_rate=2e-4))
    rows = _rows(spec)
    assert "full fine-tuning" in rows["method"][2]
    assert "not one" in rows["layers"][2]
    assert "prompt tokens too" in rows["prompt masking"][2]
    assert "200×" in rows["learning rate"][2]
    assert "affine-quantized" in rows["model"][2]
    suffix = _rows(parse_spec(_demo(finetune__lora__layers_to_transform=[28, 29])))
    assert suffix["layers"][0].startswith("the last 2 blocks") and suffix["layers"][2] is None


def test_listed_targets_and_init_adapter():
    spec = parse_spec(_demo(finetune__lora__target_modules=["q_proj", "v_proj", "lm_head"],
                            stages__0__init_adapter="prototype"))
    rows = _rows(spec)
    assert rows["target modules"][1] == "target_modules=[q_proj, v_proj, lm_head]"
    assert "lm_head" in rows["target modules"][2]
    assert "init_adapter: prototype" in rows["layers"][2]
    assert rows["start GPU SFT from the prototype"][1] == "init_adapter=prototype"


def test_no_prototype_section_no_rows():
    data = _demo()
    data.pop("prototype")
    assert prototype_mapping(parse_spec(data)) == []


def test_memory_advice_follows_the_guide():
    proto = parse_spec(_demo(prototype__batch_size=4, prototype__max_seq_length=2048)).prototype
    tips = "\n".join(memory_advice(proto, "mlx-community/Qwen2.5-7B-Instruct"))
    for expected in ("batch_size: 4 → 2", "grad_checkpoint: true", "num_layers: 8 → 4", "max_seq_length: 2048 → 1024",
                     "--quantize 4"):
        assert expected in tips
    lean = parse_spec(_demo(prototype__batch_size=1, prototype__grad_checkpoint=True,
                            prototype__num_layers=2)).prototype
    assert memory_advice(lean, "x-4bit") == []


def test_ft_validate_keeps_the_mapping_table_behind_verbose():
    from typer.testing import CliRunner

    from jobs.cli import app

    short = CliRunner().invoke(app, ["validate", str(REPO / "configs" / "demo.yaml")])
    assert short.exit_code == 0, short.output
    noted = [(s, w) for s, _, _, w in prototype_mapping(load_spec(REPO / "configs" / "demo.yaml")) if w]
    assert f"settings mapped, {len(noted)} to note (--verbose: the table)" in short.output
    assert all(f"{setting}: " in short.output for setting, _ in noted)  # what matters still shows
    assert "MLX prototype" not in short.output  # the table's header
    verbose = CliRunner().invoke(app, ["validate", str(REPO / "configs" / "demo.yaml"), "--verbose"])
    assert verbose.exit_code == 0, verbose.output
    assert "prototype (MLX) → GPU run" in verbose.output and "MLX prototype" in verbose.output
