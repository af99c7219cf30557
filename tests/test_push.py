"""`ft push --dry-run`: the folder that would go to the Hub and its model card. The upload call
itself (HfApi.create_repo / upload_folder) is the one part not exercised: no network here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from eval_fixtures import make_run, make_tiny_model
from typer.testing import CliRunner

from jobs.cli import app
from trainer.evaluate import evaluate_run
from trainer.run import Run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("push")
    base = make_tiny_model(root / "base")
    store, run_id = make_run(root, base, stages=("sft", "dpo"))
    evaluate_run(Run(str(store), run_id), ["sft"], max_new_tokens=4)
    return base, store, run_id


def test_push_dry_run_adapter_folder_and_card(run: tuple[Path, Path, str], tmp_path: Path) -> None:
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, store, run_id = run
    out = tmp_path / "hub"
    args = ["push", run_id, "--store", str(store), "--hub", "me/eval-test", "--stage", "sft", "--dry-run",
            "--out", str(out)]
    # A local-folder base has no Hub id: an adapter naming it could not be loaded by anyone else.
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--base-model-id" in refused.output and "Traceback" not in refused.output
    assert not out.exists()
    res = CliRunner().invoke(app, [*args, "--base-model-id", "me/tiny-base"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "ft_spec.yaml",
            "eval_comparison.json", "tokenizer_config.json"} <= names
    assert "_COMPLETE" not in names

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "text-generation"
    assert "lora" in card.data.tags and "sft" in card.data.tags and "dpo" in card.data.tags
    assert card.data.base_model == "me/tiny-base" and "me/tiny-base" in card.text
    assert "| Stage | GSM8K accuracy | #### format | format reward |" in card.text and "| sft | " in card.text
    assert f"run `{run_id}`" in card.text
    assert yaml.safe_load((out / "ft_spec.yaml").read_text())["name"] == "eval-test"
    assert json.loads((out / "eval_comparison.json").read_text())["rows"][0]["stage"] == "sft"
    # The adapter names its base by Hub id, not by a folder of this machine ...
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "me/tiny-base"
    # ... and what gets uploaded is a working adapter.
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)


def test_push_dry_run_merged(run: tuple[Path, Path, str], tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    _, store, run_id = run
    out = tmp_path / "hub-merged"
    res = CliRunner().invoke(app, ["push", f"{store}/runs/{run_id}", "--hub", "me/eval-test-merged", "--merged",
                                   "--license", "mit", "--dry-run", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "mit"
    assert "dpo" in card.text  # the last finished stage by default
    assert 'AutoModelForCausalLM.from_pretrained("me/eval-test-merged")' in card.text


def test_builtin_base_maps_to_hub_id() -> None:
    from trainer.publish import hub_base_model

    assert hub_base_model("builtin:smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_base_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
