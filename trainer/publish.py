"""Publishing a run's adapter (or merged model) to the Hugging Face Hub with a generated model card.

`prepare_hub_folder` does everything but the upload (it is what `--dry-run` leaves on disk);
`upload_folder` is the one network call.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from trainer import builtin_model
from trainer.errors import BadInput
from trainer.run import Run, is_adapter
from trainer.spec import BUILTIN_MODEL

SKIP = {"_COMPLETE", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"}


def hub_base_model(base: str) -> str | None:
    """The base model as a Hub id for the card's `base_model` (None for a local folder)."""
    if base == BUILTIN_MODEL:
        return builtin_model.HUB_ID
    return None if base.startswith(("/", ".", "~")) or Path(base).exists() else base


def model_card(run: Run, stage: str, kind: str, license_id: str,
               comparison: dict[str, Any] | None, repo_id: str, hub_base: str | None = None) -> str:
    """README.md with Hub metadata (base model, licence, library, tags) and what produced the model."""
    from trainer.evaluate import comparison_markdown

    info = run.info
    spec = info["spec"]
    base = spec["model"]["base"]
    hub_base = hub_base or hub_base_model(base)
    methods = [s["method"] for s in spec["stages"]]
    meta: dict[str, Any] = {
        "license": license_id,
        "library_name": "peft" if kind == "adapter" else "transformers",
        "pipeline_tag": "text-generation",
        "tags": sorted(
            {"ft", "trl", spec["finetune"]["method"], *methods} | ({"lora"} if kind == "adapter" else set())
        ),
    }
    if hub_base:
        meta["base_model"] = hub_base
    if spec["data"].get("source"):
        meta["datasets"] = [spec["data"]["source"]]
    rows = []
    for name in run.stage_names():
        s = next((x for x in spec["stages"] if x.get("name") == name), {})
        e = info["stages"].get(name, {})
        rows.append(f"| {name} | {s.get('method', e.get('method'))} | {s.get('learning_rate', '–')} | "
                    f"{e.get('steps', '–')} | {e.get('seconds', '–')} |")
    lora = spec["finetune"]["lora"]
    usage = (
        f'from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")'
        if kind == "adapter"
        else f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("{repo_id}")'
    )
    vllm = (f"vllm serve {hub_base or base} --enable-lora --lora-modules {spec['name']}={repo_id}"
            if kind == "adapter" else f"vllm serve {repo_id}")
    body = [
        f"# {spec['name']} ({stage})",
        "",
        f"{'A LoRA adapter for' if kind == 'adapter' else 'A fine-tune of'} `{hub_base or base}`, "
        f"trained with `ft` (llm-finetuning) through the stages {' → '.join(methods)}; this is the "
        f"`{stage}` stage of run `{info['run_id']}` (bundle `{str(info.get('bundle_id', ''))[:12]}`).",
        "",
        "## Training",
        "",
        f"- Task: {spec['data']['task']}; data: {spec['data'].get('source') or 'see the bundle'}",
        f"- Fine-tuning: {spec['finetune']['method']}, LoRA r={lora['r']}, alpha={lora['alpha']}, "
        f"dropout={lora['dropout']}, target modules {lora['target_modules']}",
        "",
        "| stage | method | learning rate | steps | seconds |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## Evaluation",
        "",
        comparison_markdown(comparison) if comparison and comparison.get("rows") else "Not evaluated yet.",
        "## Use",
        "",
        "```python",
        usage,
        "```",
        "",
        "```bash",
        vllm,
        "```",
        "",
        "## Licence",
        "",
        f"Released under `{license_id}`; the base model's licence and the training data's terms also apply.",
        "",
        "## Job spec",
        "",
        "<details><summary>resolved spec</summary>",
        "",
        "```yaml",
        yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(body)


def _point_at_hub_base(config_file: Path, hub_base: str) -> None:
    """PEFT wrote the path the trainer loaded the base from (a cache folder on some machine); on the Hub
    the adapter must name its base by Hub id, or nobody else can load it."""
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = hub_base
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def prepare_hub_folder(run: Run, stage: str | None, out_dir: Path, repo_id: str, merged: bool = False,
                       license_id: str = "apache-2.0", base_model_id: str | None = None) -> Path:
    """The folder to upload: adapter files (or the merged model), the tokenizer, README.md (card),
    the resolved spec and the evaluation across stages."""
    info = run.info
    stage = stage or run.last_done_stage()
    source = run.model_dir(stage)
    base = info["spec"]["model"]["base"]
    hub_base = base_model_id or hub_base_model(base)
    if is_adapter(source) and not merged and hub_base is None:
        raise BadInput(f"model.base {base!r} is a local folder, which nobody loading the adapter from the Hub "
                       "has: pass --base-model-id ORG/NAME (the Hub id of the same weights), or --merged")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if merged and is_adapter(source):
        from trainer.merge import merge_adapter

        merge_adapter(info["spec"]["model"]["base"], source, out_dir, dtype=info["spec"]["model"]["dtype"])
        kind = "merged"
    else:
        shutil.copytree(source, out_dir, ignore=lambda _d, names: [n for n in names if n in SKIP or n == "ref"])
        kind = "adapter" if is_adapter(source) else "full"
        if kind == "adapter":
            _point_at_hub_base(out_dir / "adapter_config.json", hub_base)
    comparison = run.read_json(run.comparison())
    if comparison is not None:
        (out_dir / "eval_comparison.json").write_text(json.dumps(comparison, indent=2))
    (out_dir / "ft_spec.yaml").write_text(yaml.safe_dump(info["spec"], sort_keys=False, allow_unicode=True))
    (out_dir / "README.md").write_text(
        model_card(run, stage, kind, license_id, comparison, repo_id, hub_base), encoding="utf-8"
    )
    return out_dir


def upload_folder(folder: Path, repo_id: str, private: bool = False) -> str:  # pragma: no cover -- network
    """Create the repo if needed and upload; HF_TOKEN from the environment. Returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                      commit_message="Upload from ft (llm-finetuning)")
    return str(url)
