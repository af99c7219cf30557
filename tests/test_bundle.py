"""Bundles: content-addressed ids, verification, atomic writes, push/fetch through real S3 (moto)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from trainer.bundle import BundleError, fetch_bundle, push_bundle, verify_bundle, write_bundle
from trainer.spec import load_spec

SPEC = """name: bundle-test
model: {{base: {model}}}
data:
  task: math
  sft_train: data/sft_train.jsonl
  dpo_train: data/preference_pairs.jsonl
  test: data/gsm8k_test.jsonl
stages:
  - {{method: sft, max_length: 512}}
  - {{method: dpo}}
"""


@pytest.fixture
def job(tmp_path, math_data, tiny_model_dir) -> Path:
    root = tmp_path / "job"
    shutil.copytree(math_data, root / "data")
    (root / "job.yaml").write_text(SPEC.format(model=tiny_model_dir))
    return root


def test_same_inputs_same_id_from_any_path(job, tmp_path):
    spec = load_spec(job / "job.yaml")
    first = write_bundle(spec, job, tmp_path / "out1")
    moved = tmp_path / "elsewhere" / "deep"
    shutil.copytree(job, moved)
    second = write_bundle(load_spec(moved / "job.yaml"), moved, tmp_path / "out2")
    assert first.bundle_id == second.bundle_id
    assert first.manifest["provenance"]["versions"]["trl"]
    # the resolved spec has every default and bundle-relative data paths
    resolved = first.spec
    assert resolved.data.sft_train == "data/sft_train.jsonl" and resolved.stages[1].beta == 0.1
    assert resolved.stages[0].name == "sft"


def test_changed_data_changes_id(job, tmp_path):
    a = write_bundle(load_spec(job / "job.yaml"), job, tmp_path / "o")
    with open(job / "data/sft_train.jsonl", "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                + "\n")
    b = write_bundle(load_spec(job / "job.yaml"), job, tmp_path / "o")
    assert a.bundle_id != b.bundle_id and a.path != b.path


@pytest.mark.parametrize("tamper", ["changed", "missing", "extra"])
def test_verify_fails_loudly(job, tmp_path, tamper):
    b = write_bundle(load_spec(job / "job.yaml"), job, tmp_path / "o")
    target = b.path / "data" / "sft_train.jsonl"
    if tamper == "changed":
        target.write_text(target.read_text().replace("a", "b", 1))
    elif tamper == "missing":
        target.unlink()
    else:
        (b.path / "data" / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match=f"{tamper}: data/"):
        verify_bundle(b.path)
    result = CliRunner().invoke(app, ["bundle", "verify", str(b.path)])
    assert result.exit_code == 1 and f"{tamper}: data/" in result.output


def test_failed_write_leaves_nothing(job, tmp_path, monkeypatch):
    import trainer.bundle as bundle_mod

    def boom(root):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod, "_hash_tree", boom)
    with pytest.raises(OSError):
        write_bundle(load_spec(job / "job.yaml"), job, tmp_path / "o")
    assert list((tmp_path / "o").iterdir()) == []


def test_push_fetch_roundtrip_and_idempotent_push(job, tmp_path, s3_env):
    b = write_bundle(load_spec(job / "job.yaml"), job, tmp_path / "o")
    uri = push_bundle(b, f"{s3_env}/ft", progress=False)
    assert uri == f"{s3_env}/ft/bundles/{b.path.name}"
    assert push_bundle(b, f"{s3_env}/ft", progress=False) == uri  # complete copy with same id: nothing sent
    fetched = fetch_bundle(uri, cache_dir=tmp_path / "cache", progress=False)
    assert fetched.bundle_id == b.bundle_id
    result = CliRunner().invoke(app, ["bundle", "verify", uri, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["bundle_id"] == b.bundle_id


def test_cli_bundle_json_and_push(job, tmp_path, s3_env):
    result = CliRunner().invoke(app, ["bundle", "create", str(job / "job.yaml"), "--out", str(tmp_path / "o"),
                                      "--push", f"{s3_env}/p", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out) == {"bundle_id", "path", "uri"} and out["uri"].startswith(s3_env)


def test_no_secret_lands_in_a_bundle(job, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecretvalue123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-xyz-987")
    b = write_bundle(load_spec(job / "job.yaml"), job, tmp_path / "o")
    for path in b.path.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert b"hf_supersecretvalue123" not in text and b"aws-secret-xyz-987" not in text
