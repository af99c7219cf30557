"""The `ft` command tree and its one error boundary: user errors end in one masked message and a
documented exit code (never a traceback), bugs keep theirs; overrides reach the frozen bundle; `ft
init` writes specs that validate; `ft launch` freezes through the one freeze (prototype adapter
included) and refuses bad data before anything leaves the machine.

Real: the `ft` app, typer, the spec, validation, bundles, the catalogs (small CSVs under
SKY_RUNTIME_DIR) and SkyPilot's task validation. Nothing is launched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from jobs.cli import ErrorBoundary, app
from trainer.errors import BadInput, FtError, Retryable, Stopped

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"


def ft(*args: str):
    return CliRunner().invoke(app, list(args))


def _no_traceback(result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # typer's exit, not an escape
    assert "Traceback" not in result.output, result.output
    for w in words:
        assert w in result.output, result.output


# ---------------------------------------------------------------------------------- the boundary
def _probe_app(error: BaseException) -> typer.Typer:
    probe = typer.Typer(cls=ErrorBoundary)

    @probe.command("boom")
    def boom() -> None:
        raise error

    @probe.command("ok")
    def ok() -> None:
        print("fine")

    return probe


@pytest.mark.parametrize(("error", "code"), [(BadInput("bad spec field"), 2), (Retryable("store timed out"), 75),
                                             (Stopped("budget reached"), 3), (FtError("check said no"), 1),
                                             (ConnectionError("connection refused"), 75)])
def test_errors_we_explain_end_in_their_exit_code_and_one_message(error, code):
    result = CliRunner().invoke(_probe_app(error), ["boom"])
    _no_traceback(result, code, "error:", str(error).split()[0])


def test_the_hubs_closed_client_after_its_retries_is_the_network():
    # what huggingface_hub raises, unchained, when the Hub cannot be resolved at all (seen on this machine)
    closed = RuntimeError("Cannot send a request, as the client has been closed.")
    result = CliRunner().invoke(_probe_app(closed), ["boom"])
    _no_traceback(result, 75, "network unavailable")


def test_a_bug_keeps_its_traceback():
    result = CliRunner().invoke(_probe_app(KeyError("a bug")), ["boom"])
    assert isinstance(result.exception, KeyError) and result.exit_code == 1


def test_the_message_is_masked(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value-123")
    error = BadInput("cannot log in with wandb-secret-value-123 or hf_abcdefghijklmnopqrstu")
    result = CliRunner().invoke(_probe_app(error), ["boom"])
    _no_traceback(result, 2, "***", "hf_***")
    assert "wandb-secret-value-123" not in result.output and "abcdefghijklmnop" not in result.output


@pytest.mark.parametrize(("argv", "code", "words"), [
    (["bundle", "create", "missing.yaml"], 2, ["missing.yaml", "file not found"]),
    (["bundle", "create", str(DEMO), "finetune.lora.rr=3"], 2, ["finetune.lora.rr=3", "did you mean r"]),
    (["bundle", "create", str(DEMO), "stages.9.learning_rate=1"], 2, ["stages.9", "no such item"]),
    (["bundle", "create", str(DEMO), "stages.0.max_steps"], 2, ["expected KEY=VALUE"]),
    (["bundle", "verify", "/nonexistent/demo-0123456789ab"], 1, ["no such bundle folder"]),
    (["validate", str(DEMO), "--data", str(DEMO), "--kind", "sft"], 2, ["give either CONFIG or --data"]),
    (["validate"], 2, ["give either CONFIG or --data"]),
    (["gpus", "--gpu", "A100:x"], 2, ["expected NAME or NAME:COUNT"]),
    (["gpus", "--clouds", "gcp"], 2, ["unknown gcp"]),
    (["run", "some-bundle", "--devices", "all"], 2, ["--devices", "--docker"]),
    (["launch", str(DEMO), "--run-id", "../escape", "--dry-run"], 2, ["--run-id", "not a safe name"]),
    (["launch", "/nonexistent.yaml", "--dry-run"], 2, ["no such file or bundle folder"]),
    (["preflight", "/nonexistent.yaml"], 2, ["file not found"]),
    (["fetch", "../x", "--store", "/tmp/ft-no-store"], 2, ["run id"]),
    (["init", "math", "--out", "/"], 2, ["is a folder"]),
    (["image", "tag", "cpu"], 2, ["unknown image"]),
    (["image", "tag", "gpu", "--build-arg", "NOEQUALS"], 2, ["expected KEY=VALUE"]),
    (["adapter", "convert", str(REPO), "--out", "/tmp/x", "--from", "mlx", "--to", "mlx"], 2, ["same format"]),
    (["model", "convert", "builtin:smollm2-135m", "--out", "/tmp/x", "--dtype", "int3"], 2, ["--dtype int3"]),
    (["eval", "run", "no-such-run", "--store", "/tmp/ft-no-store"], 2, ["not a run in", "--test FILE"]),
    (["eval", "run", "s3:/one-slash/runs/x"], 2, ["its store", "two slashes"]),
    (["eval", "score", "--task", "bleu", "--predictions", "p", "--references", "r"], 2, ["--task 'bleu'"]),
    (["serve", "up", "no-such-run", "--store", "/tmp/ft-no-store", "--dry-run"], 2, ["no run at"]),
    (["merge", "no-such-run", "--store", "/tmp/ft-no-store", "--out", "/tmp/x"], 2, ["no run at"]),
    (["report", "no-such-run", "--store", "/tmp/ft-no-store"], 2, ["no run at"]),
    (["push", "no-such-run", "--store", "/tmp/ft-no-store", "--hub", "a/b", "--dry-run"], 2, ["no run at"]),
    (["chat", "not-a-run-or-cached-model", "--store", "/tmp/ft-no-store"], 2, ["HF_HUB_OFFLINE"]),
    (["status", "no-such-run", "--store", "/tmp/ft-no-store", "--no-job"], 2, ["no run"]),
])
def test_no_user_error_prints_a_traceback(argv, code, words, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path / "skyrt"))  # no catalog: nothing cached to read
    _no_traceback(ft(*argv), code, *words)


def test_a_bad_override_value_is_a_finding_of_the_spec_model(tmp_path):
    result = ft("validate", str(DEMO), "stages.0.max_steps=abc")
    _no_traceback(result, 1, "stages[0].max_steps (override stages.0.max_steps=abc)", "valid integer")
    bundled = ft("bundle", "create", str(DEMO), "stages.0.max_steps=abc", "--out", str(tmp_path / "b"))
    _no_traceback(bundled, 1, "no bundle written")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


# ------------------------------------------------------------------------------------- the tree
def _all_commands():
    from typer.main import get_command

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    yield from walk(get_command(app), [])


def test_the_tree_has_subcommands_not_magic_first_words():
    paths = {" ".join(p) for p, _ in _all_commands()}
    assert {"bundle create", "bundle verify", "init", "run", "gpus", "model convert", "adapter convert"} <= paths
    assert not {"train", "mac convert", "mac"} & paths  # `ft run` in process replaces `ft train`


def test_one_spelling_per_flag():
    flags: dict[str, set[str]] = {}
    for path, cmd in _all_commands():
        for p in getattr(cmd, "params", []):
            for opt in getattr(p, "opts", []):
                flags.setdefault(opt, set()).add(" ".join(path))
    assert "--to" not in flags or flags["--to"] == {"adapter convert"}  # a format there; paths are --out
    assert "--config" not in flags and "--gpus" not in flags and "--bundles-dir" not in flags
    assert {"fetch", "bundle create", "launch", "model convert", "adapter convert", "init"} <= flags["--out"]
    assert flags["--devices"] == {"run"} and "gpus" in flags["--gpu"]  # --gpu: NAME[:COUNT]; --devices: docker's


MODULES = ("mac.cli", "mac.mlx_cli", "jobs.cloud_cli", "jobs.run_cli", "images.cli", "jobs.cli")


def test_help_is_paragraphs_that_wrap():
    """Markdown help joins a paragraph's lines; `<word>` would be eaten as HTML, so none may appear."""
    import re

    for path, cmd in _all_commands():
        if getattr(getattr(cmd, "callback", None), "__module__", None) not in MODULES:
            continue
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in getattr(cmd, "params", [])]
        for text in texts:
            assert not re.search(r"<[A-Za-z][^>\s]*>", text), (path, text)
    out = CliRunner().invoke(app, ["--help"], terminal_width=100).output
    panel = out[out.index("Commands"):]
    for line in panel.splitlines()[1:-1]:
        assert line.startswith("│ ") or line.startswith("╰"), line


# ---------------------------------------------------------------------------- overrides frozen
def test_overrides_are_frozen_into_the_bundle_spec(tmp_path):
    plain = ft("bundle", "create", str(DEMO), "--out", str(tmp_path / "b"), "--json")
    assert plain.exit_code == 0, plain.output
    result = ft("bundle", "create", str(DEMO), "stages.0.max_steps=3", "finetune.lora.r=16",
                "--out", str(tmp_path / "b"), "--json")
    assert result.exit_code == 0, result.output
    made, base = json.loads(result.stdout), json.loads(plain.stdout)
    assert made["bundle_id"] != base["bundle_id"]
    spec = yaml.safe_load((Path(made["path"]) / "spec.yaml").read_text())
    assert spec["stages"][0]["max_steps"] == 3 and spec["finetune"]["lora"]["r"] == 16
    original = yaml.safe_load((Path(base["path"]) / "spec.yaml").read_text())
    assert original["stages"][0]["max_steps"] != 3 and original["finetune"]["lora"]["r"] != 16
    assert ft("bundle", "verify", made["path"]).exit_code == 0


# ------------------------------------------------------------------------------------------ init
@pytest.mark.parametrize("task", ["math", "translation"])
def test_init_writes_a_commented_spec_that_validates(task, tmp_path, monkeypatch):
    from mac.data_prep import prepare_math, prepare_translation

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path / "skyrt"))
    if task == "math":
        prepare_math(str(REPO / "data/samples/gsm8k"), Path("data/processed/math"), limit=40, test_limit=10)
    else:
        prepare_translation(str(REPO / "data/samples/ko-en"), Path("data/processed/korean_english"), limit=40)
    result = ft("init", task, "--out", "configs/my_job.yaml")
    assert result.exit_code == 0, result.output
    text = Path("configs/my_job.yaml").read_text()
    assert text.count("#") > 20 and "name: my-job" in text and "../data/processed/" in text
    validated = ft("validate", "configs/my_job.yaml", "--json")
    assert validated.exit_code == 0, validated.output
    report = json.loads(validated.stdout)
    assert report["errors"] == 0 and len(report["files"]) == (6 if task == "math" else 3)
    again = ft("init", task, "--out", "configs/my_job.yaml")
    _no_traceback(again, 2, "exists", "--force")
    Path("configs/my_job.yaml").write_text("edited")
    assert ft("init", task, "--out", "configs/my_job.yaml", "--force").exit_code == 0
    assert Path("configs/my_job.yaml").read_text() == text


# ---------------------------------------------------------------------------------- launch freeze
def _cloud_spec(tmp_path: Path, data_dir: Path | None = None) -> Path:
    raw = yaml.safe_load(DEMO.read_text())
    src = {k: (REPO / "configs" / v).resolve() for k, v in raw["data"].items() if k != "task"}
    if data_dir is not None:  # a copy of the demo's data the test may spoil
        data_dir.mkdir()
        for role, path in src.items():
            (data_dir / path.name).write_bytes(path.read_bytes())
            src[role] = data_dir / path.name
    raw["data"] = {"task": "math", **{k: str(v) for k, v in src.items()}}
    raw["model"] = {"base": "Qwen/Qwen2.5-7B-Instruct-not-cached"}
    raw["store"] = {"uri": "s3://my-ft-bucket/llm-finetuning"}
    raw.pop("prototype", None)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_launch_freezes_with_the_prototype_adapter_and_the_overrides(catalog, tmp_path, monkeypatch):
    proto = tmp_path / "mlx"
    (proto / "demo" / "peft_adapter").mkdir(parents=True)
    (proto / "demo" / "peft_adapter" / "adapter_config.json").write_text('{"r": 8}')
    (proto / "demo" / "metrics.json").write_text('{"train": {}}')
    monkeypatch.setenv("FT_MLX_OUTPUTS", str(proto))
    result = ft("launch", str(_cloud_spec(tmp_path)), "stages.0.max_steps=2", "--dry-run", "--run-id", "r1",
                "--out", str(tmp_path / "bundles"))
    assert result.exit_code == 0, result.output
    (bundle,) = (tmp_path / "bundles").iterdir()
    assert (bundle / "prototype" / "adapter" / "adapter_config.json").is_file()
    assert (bundle / "prototype" / "metrics.json").is_file()
    assert yaml.safe_load((bundle / "spec.yaml").read_text())["stages"][0]["max_steps"] == 2
    cfg = yaml.safe_load(result.output[result.output.index("name: ft-r1"):])
    assert cfg["envs"]["BUNDLE"].endswith(bundle.name)


def test_launch_refuses_bad_data_before_any_cloud_call(catalog, tmp_path, monkeypatch):
    from jobs import launch, pricing

    def no_cloud(*_a, **_k):
        raise AssertionError("a cloud call before the data was checked")

    monkeypatch.setattr(pricing, "enabled_clouds", no_cloud)
    monkeypatch.setattr(launch, "launch", no_cloud)
    monkeypatch.setattr(launch, "to_task", no_cloud)
    spec = _cloud_spec(tmp_path, data_dir=tmp_path / "data")
    sft = tmp_path / "data" / "sft_train.jsonl"
    sft.write_text(sft.read_text() + '{"messages": "not a list"}\n')
    result = ft("launch", str(spec), "--yes", "--run-id", "r1", "--out", str(tmp_path / "bundles"))
    _no_traceback(result, 2, "refusing to launch", "spec and data")
    assert not (tmp_path / "bundles").exists() or not any((tmp_path / "bundles").iterdir())
    overridden = ft("launch", str(spec), "stages.0.learning_rate=-1", "--dry-run", "--out", str(tmp_path / "b2"))
    _no_traceback(overridden, 2, "stages[0].learning_rate (override stages.0.learning_rate=-1)")


def test_a_bundle_takes_no_overrides(tmp_path):
    made = ft("bundle", "create", str(DEMO), "--out", str(tmp_path / "b"), "--json")
    path = json.loads(made.stdout)["path"]
    _no_traceback(ft("launch", path, "stages.0.max_steps=1", "--dry-run"), 2, "frozen bundle")


def test_run_dry_run_prints_the_images_entry_point():
    result = ft("run", "outputs/bundles/demo-0123456789ab", "--stage", "sft", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "python -m trainer run outputs/bundles/demo-0123456789ab --stage sft"
