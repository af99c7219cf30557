"""`ft demo`: its very step list on a tiny random Llama (MLX prototype in its own process, the PEFT
adapter in the bundle, SFT from it, on-policy DPO, GRPO, evaluation of every model, merge, the serving
plan, the report) and its summary from that real run; the translation demo's spec validates and freezes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from mac_fixtures import REPO, make_tiny_llama
from rich.console import Console

from jobs import demo as demo_module
from jobs.demo import TASKS, Demo, run_demo, summary_rows

TINY_OVERRIDES = [
    "prototype.iters=2", "prototype.steps_per_eval=2", "prototype.val_batches=1", "prototype.max_seq_length=128",
    "prototype.num_layers=-1",
    "stages.0.max_steps=2", "stages.0.save_steps=2", "stages.0.max_length=128",
    "stages.1.max_steps=1", "stages.1.save_steps=1", "stages.1.max_length=160", "stages.1.on_policy.prompts=2",
    "stages.1.on_policy.max_new_tokens=8",
    "stages.2.max_steps=1", "stages.2.save_steps=1", "stages.2.max_completion_length=8",
    "evaluation.limit=2", "evaluation.max_new_tokens=8",
]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from mac.mlx_convert import convert_model

    root = tmp_path_factory.mktemp("demo-tiny")
    hf = make_tiny_llama(root / "hf")
    convert_model(str(hf), root / "mlx")
    return hf, root / "mlx"


@pytest.fixture(scope="module")
def finished(tiny_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Demo, str]:
    """The math demo's whole step list, run once on the tiny model with everything cut to a step or two."""
    hf, mlx = tiny_models
    tmp = tmp_path_factory.mktemp("demo-run")
    mp = pytest.MonkeyPatch()
    mp.chdir(REPO)  # the demo spec's data paths are relative to the repository, as `make demo` runs it
    mp.setenv("FT_MLX_OUTPUTS", str(tmp / "mlx"))
    mp.setenv("FT_WORKDIR", str(tmp / "work"))
    mp.setenv("FT_STORE", str(tmp / "store"))
    out = io.StringIO()
    demo = Demo(TASKS["math"], str(tmp / "store"), [f"model.base={hf}", f"prototype.model={mlx}", *TINY_OVERRIDES],
                console=Console(file=out, width=160), bundles=tmp / "bundles", merged_root=tmp / "merged",
                serve_root=tmp / "serve")
    try:
        run_demo(demo)
    finally:
        mp.undo()
    return demo, out.getvalue()


def test_the_demo_runs_every_step_and_says_where_each_output_is(finished: tuple[Demo, str]) -> None:
    demo, text = finished
    assert list(demo.seconds) == [s.name for s in demo_module.STEPS] + ["total"]
    for i, step in enumerate(demo_module.STEPS, 1):
        assert f"{i}/{len(demo_module.STEPS)} {step.name}" in text
    run = demo.run
    assert run is not None
    # the bundle carries the prototype's PEFT adapter, and SFT started from it
    adapter = demo.bundle.prototype_adapter
    assert adapter is not None and (adapter / "adapter_config.json").is_file()
    assert run.bundle.spec.stages[0].init_adapter == "prototype"
    record = run.read_record()
    assert [record["stages"][s]["status"] for s in ("sft", "dpo", "grpo")] == ["done"] * 3
    assert run.store.is_complete(run.on_policy_pairs("dpo"))  # DPO sampled its pairs from the SFT model
    # every model evaluated on the same rows, with the eval loss on the validation split
    rows = {r["stage"]: r for r in demo.comparison["rows"]}
    assert list(rows) == ["base", "prototype", "sft", "dpo", "grpo"]
    for row in rows.values():
        assert row["n"] == 2 and isinstance(row["eval_loss"], float) and 0 <= row["format_rate"] <= 1
    assert rows["sft"]["eval_loss"] != rows["base"]["eval_loss"]  # the adapters change the model
    # merge, serving plan, report: each where the step said
    merged = Path(demo.merged or "")
    assert (merged / "merge_info.json").is_file() and any(merged.glob("*.safetensors"))
    plan = yaml.safe_load(Path(demo.serve_yaml or "").read_text())
    assert plan["envs"]["ADAPTER_URI"].endswith("grpo/final") and plan["service"]["readiness_probe"]
    assert demo.report_uri and Path(demo.report_uri).is_file()
    for where in (str(demo.bundle.path), demo.merged, str(demo.serve_yaml)):
        assert where in text.replace("\n", "")


def test_the_summary_reads_the_real_run(finished: tuple[Demo, str]) -> None:
    demo, text = finished
    assert demo.run is not None
    rows = {r["stage"]: r for r in summary_rows(demo.run, demo.comparison, demo.run.bundle.prototype_metrics)}
    assert list(rows) == ["base", "prototype", "sft", "dpo", "grpo"]
    assert rows["base"]["steps"] == "–" and rows["prototype"]["steps"] == "2" and rows["sft"]["steps"] == "2"
    assert "→" in rows["sft"]["train loss"] and rows["grpo"]["train loss"] == "–"
    assert rows["grpo"]["train reward"] != "–" and rows["dpo"]["train reward"] == "–"
    assert all(r["n"] == "2" and r["accuracy"].endswith("%") and r["eval loss"] != "–" for r in rows.values())
    assert f"demo (math) run {demo.run.run_id}" in text and "took" in text


def test_the_train_step_draws_one_line_per_stage_not_tqdm(finished: tuple[Demo, str]) -> None:
    _, text = finished
    train = text[text.index("train: SFT"):text.index("evaluate: base")]
    assert "it/s]" not in train and "Map:" not in train  # no tqdm bar of the Trainer or datasets
    for stage in ("sft", "dpo", "grpo"):
        assert sum(line.strip().startswith(stage + " ") and "━" in line for line in train.splitlines()) == 1


def test_translation_demo_spec_validates_and_freezes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mac.freeze import freeze
    from mac.validate_job import validate_job

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("FT_MLX_OUTPUTS", str(tmp_path / "no-prototype"))
    TASKS["translation"].prepare()
    report = validate_job(TASKS["translation"].config)
    assert report.errors == 0 and report.spec is not None
    spec = report.spec
    assert spec.data.task == "translation" and spec.evaluation.task == "translation"
    assert [s.method for s in spec.stages] == ["sft", "grpo"] and spec.stages[1].rewards == ["chrf"]
    assert spec.stages[0].init_adapter == "prototype" and spec.prototype is not None
    bundle = freeze(TASKS["translation"].config, report=report, out=tmp_path / "bundles", progress=False).bundle
    for role in ("sft_train", "sft_valid", "grpo_train", "test"):
        assert bundle.data_path(role) is not None and bundle.data_path(role).stat().st_size > 0


def test_an_unknown_task_is_bad_input() -> None:
    from trainer.errors import BadInput

    with pytest.raises(BadInput, match="--task 'poetry': choose math or translation"):
        demo_module.task_named("poetry")


def test_a_fresh_machine_converts_the_builtin_model_under_one_status_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """First use of the built-in model on a machine (an empty FT_CACHE): validate converts it from GGUF,
    and the GGUF reader's and the shard writer's tqdm bars stay off the terminal."""
    from trainer import builtin_model

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "cache"))
    assert not builtin_model.converted()
    out = io.StringIO()
    demo = Demo(TASKS["math"], str(tmp_path / "store"), console=Console(file=out, width=160))
    demo_module.step_data(demo)
    line = demo_module.step_validate(demo)
    assert builtin_model.converted() and "0 errors" in line
    text = out.getvalue()
    assert f"converted builtin:smollm2-135m for transformers → {builtin_model.model_dir()}" in text
    leaked = capfd.readouterr()
    for stream in (text, leaked.out, leaked.err):
        assert "it/s]" not in stream and "GGUF tensors" not in stream and "Writing model shards" not in stream
