"""Model → MLX conversion and LoRA adapters MLX ↔ PEFT, checked numerically on a tiny random Llama
(2 layers, hidden 64, SmolLM2 tokenizer): the same base gives the same logits with either adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mac_fixtures import (
    make_tiny_llama,
    mlx_logits,
    peft_logits,
    write_random_mlx_adapter,
)

from mac.adapter_convert import AdapterConvertError, mlx_to_peft, peft_to_mlx
from mac.mlx_convert import ConvertError, convert_model, fix_config

TOKENS = list(range(200, 248))  # 48 positions: rope_theta matters far from position 0
TOL = 1e-3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    hf = make_tiny_llama(root / "hf")
    mlx = root / "mlx"
    convert_model(str(hf), mlx)
    return hf, mlx


def test_fix_config_restores_rope_theta_and_drops_gguf_marker():
    cfg = {"model_type": "llama", "dtype": "float32",
           "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
           "quantization_config": {"quant_method": "gguf"}}
    fixed, changes = fix_config(cfg)
    assert fixed["rope_theta"] == 100000.0 and "rope_scaling" not in fixed
    assert "quantization_config" not in fixed and fixed["torch_dtype"] == "float32"
    assert len(changes) == 2 and "rope_theta" not in cfg  # the input is not modified
    scaled, _ = fix_config({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}})
    assert scaled["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    assert fix_config({"rope_theta": 1.0})[1] == []


def test_converted_model_matches_transformers(tiny):
    hf, mlx = tiny
    cfg = json.loads((mlx / "config.json").read_text())
    assert cfg["rope_theta"] == 100000.0
    assert json.loads((mlx / "ft_source.json").read_text())["config_fixes"]
    ref = peft_logits(hf, TOKENS)
    got = mlx_logits(mlx, TOKENS)
    assert np.abs(ref - got).max() < 1e-4
    # Without the fix mlx-lm's llama would use rope_theta 10000 and drift away from transformers.
    import mlx.core as mx
    from mlx_lm import load

    wrong, _ = load(str(mlx), model_config={"rope_theta": 10000.0})
    drift = np.abs(np.array(wrong(mx.array([TOKENS]))[0]) - ref).max()
    assert drift > 100 * 1e-4


def test_convert_refuses_existing_output_and_bad_bits(tiny, tmp_path):
    hf, mlx = tiny
    with pytest.raises(ConvertError, match="already exists"):
        convert_model(str(hf), mlx)
    with pytest.raises(ConvertError, match="bits"):
        convert_model(str(hf), tmp_path / "q7", quantize=7)
    with pytest.raises(ConvertError, match="no such folder"):
        convert_model("./nowhere", tmp_path / "x")


def test_quantized_conversion_loads_and_stays_close(tiny, tmp_path):
    hf, mlx = tiny
    q = tmp_path / "q4"
    info = convert_model(str(hf), q, quantize=4, group_size=32)
    cfg = json.loads((q / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4 and cfg["rope_theta"] == 100000.0 and info["quantize_bits"] == 4
    full, quant = mlx_logits(mlx, TOKENS), mlx_logits(q, TOKENS)
    assert np.corrcoef(full.ravel(), quant.ravel())[0, 1] > 0.95
    assert (q / "model.safetensors").stat().st_size < (mlx / "model.safetensors").stat().st_size / 3


def test_mlx_adapter_to_peft_gives_the_same_logits(tiny, tmp_path):
    hf, mlx = tiny
    ad = write_random_mlx_adapter(mlx, tmp_path / "mlx_ad", rank=4, scale=2.5, num_layers=1)
    cfg = mlx_to_peft(ad, tmp_path / "peft", str(hf))
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 10.0  # alpha = scale × rank
    assert cfg["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert cfg["layers_to_transform"] == [1] and cfg["layers_pattern"] == "layers"
    assert cfg["base_model_name_or_path"] == str(hf)
    base = peft_logits(hf, TOKENS)
    with_mlx = mlx_logits(mlx, TOKENS, ad)
    with_peft = peft_logits(hf, TOKENS, tmp_path / "peft")
    moved = np.abs(with_mlx - base).max()
    assert moved > 0.1  # the adapter itself moves the logits by far more than the tolerance
    assert np.abs(with_peft - with_mlx).max() < TOL


def test_mlx_subset_keys_all_layers(tiny, tmp_path):
    hf, mlx = tiny
    ad = write_random_mlx_adapter(mlx, tmp_path / "mlx_ad", rank=2, scale=4.0, num_layers=2,
                                  keys=["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"])
    cfg = mlx_to_peft(ad, tmp_path / "peft", str(hf))
    assert cfg["target_modules"] == ["down_proj", "q_proj", "v_proj"] and cfg["layers_to_transform"] == [0, 1]
    assert np.abs(peft_logits(hf, TOKENS, tmp_path / "peft") - mlx_logits(mlx, TOKENS, ad)).max() < TOL


def _random_peft_adapter(hf: Path, out: Path, **lora_kwargs) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(out)
    return out


def test_peft_adapter_to_mlx_gives_the_same_logits(tiny, tmp_path):
    """Layer 0 only (not a run of last layers), rslora and a per-module alpha: all exact in MLX."""
    hf, mlx = tiny
    peft_dir = _random_peft_adapter(hf, tmp_path / "peft", r=4, lora_alpha=16, target_modules=["q_proj", "down_proj"],
                                    layers_to_transform=[0], use_rslora=True, alpha_pattern={"down_proj": 4})
    cfg = peft_to_mlx(peft_dir, tmp_path / "mlx_ad", str(hf))
    assert cfg["num_layers"] == 2 and cfg["lora_parameters"]["rank"] == 4
    assert cfg["lora_parameters"]["keys"] == ["mlp.down_proj", "self_attn.q_proj"]
    base = peft_logits(hf, TOKENS)
    with_peft = peft_logits(hf, TOKENS, peft_dir)
    with_mlx = mlx_logits(mlx, TOKENS, tmp_path / "mlx_ad")
    assert np.abs(with_peft - base).max() > 0.1
    assert np.abs(with_mlx - with_peft).max() < TOL


def test_round_trips_are_exact(tiny, tmp_path):
    from safetensors.numpy import load_file

    hf, mlx = tiny
    ad = write_random_mlx_adapter(mlx, tmp_path / "a", rank=4, scale=2.0, num_layers=2)
    mlx_to_peft(ad, tmp_path / "p", str(hf))
    back = peft_to_mlx(tmp_path / "p", tmp_path / "a2")  # base from the adapter's base_model_name_or_path
    assert back["lora_parameters"]["scale"] == 2.0 and back["num_layers"] == 2
    w1, w2 = load_file(str(ad / "adapters.safetensors")), load_file(str(tmp_path / "a2" / "adapters.safetensors"))
    assert w1.keys() == w2.keys() and all(np.array_equal(w1[k], w2[k]) for k in w1)

    peft_dir = _random_peft_adapter(hf, tmp_path / "p0", r=2, lora_alpha=8, target_modules="all-linear")
    peft_to_mlx(peft_dir, tmp_path / "m0", str(hf))
    mlx_to_peft(tmp_path / "m0", tmp_path / "p1", str(hf))
    p0 = load_file(str(peft_dir / "adapter_model.safetensors"))
    p1 = load_file(str(tmp_path / "p1" / "adapter_model.safetensors"))
    assert p0.keys() == p1.keys() and all(np.allclose(p0[k], p1[k], atol=1e-7) for k in p0)
    assert json.loads((tmp_path / "p1" / "adapter_config.json").read_text())["lora_alpha"] == 8


def test_unconvertible_adapters_are_refused(tiny, tmp_path):
    hf, mlx = tiny
    ad = write_random_mlx_adapter(mlx, tmp_path / "a", num_layers=1)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    (ad / "adapter_config.json").write_text(json.dumps(cfg | {"fine_tune_type": "dora"}))
    with pytest.raises(AdapterConvertError, match="dora"):
        mlx_to_peft(ad, tmp_path / "p", str(hf))
    with pytest.raises(AdapterConvertError, match="not an mlx-lm adapter"):
        mlx_to_peft(tmp_path, tmp_path / "p", str(hf))
    dora = _random_peft_adapter(hf, tmp_path / "dora", r=2, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(AdapterConvertError, match="DoRA"):
        peft_to_mlx(dora, tmp_path / "m", str(hf))
    # An adapter for a deeper model than the base names a layer the base lacks.
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps({"num_hidden_layers": 1}))
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "config.json").write_text(deep.read_text())
    with pytest.raises(AdapterConvertError, match="layer 1"):
        mlx_to_peft(ad, tmp_path / "p", str(tmp_path / "one"))


def test_cli_adapter_convert_both_ways(tiny, tmp_path):
    from typer.testing import CliRunner

    from jobs.cli import app

    hf, mlx = tiny
    ad = write_random_mlx_adapter(mlx, tmp_path / "a", num_layers=1)
    runner = CliRunner()
    r = runner.invoke(app, ["adapter", "convert", "--from", "mlx", "--to", "peft", str(ad),
                            "--out", str(tmp_path / "p"), "--base", str(hf)])
    assert r.exit_code == 0, r.output
    assert "lora_alpha=8" in r.output and (tmp_path / "p" / "adapter_model.safetensors").exists()
    r = runner.invoke(app, ["adapter", "convert", "--from", "peft", "--to", "mlx", str(tmp_path / "p"),
                            "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "scale=2" in r.output and (tmp_path / "m" / "adapters.safetensors").exists()
    r = runner.invoke(app, ["adapter", "convert", "--from", "mlx", "--to", "peft", str(ad),
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--base" in r.output
