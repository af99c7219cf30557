"""A corpus of hostile inputs (issue 17): data lines, specs, tampered bundles and store contents. Each
asserts the exit code, that the message names the file:line or the field, and that nothing is written
(nor anything outside its folder); the hostile-but-valid rows are trained on for real (tiny Llama, 1 step)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from spec_texts import math_spec
from typer.testing import CliRunner

from jobs.cli import app
from trainer.bundle import MANIFEST, BundleError, _hash_tree, bundle_id_of, fetch_bundle, push_bundle, verify_bundle
from trainer.spec import SpecError, load_spec

SYS = {"role": "system", "content": "Solve."}
USER = {"role": "user", "content": "What is 2 + 3?"}
ASSISTANT = {"role": "assistant", "content": "2 + 3 = 5\n#### 5"}
WRONG = {"role": "assistant", "content": "2 + 3 = 6\n#### 6"}


def j(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def sft(content: str, role: str = "assistant") -> str:
    return j({"messages": [USER, {"role": role, "content": content}]})


# ------------------------------------------------------------------------------------------ data
# (id, file, line 3 replaced by this, expected text in the output)
DATA_CASES = [
    ("dup-key-row", "sft_train", '{"messages": [], "messages": ' + j([USER, ASSISTANT]) + "}",
     "sft_train.jsonl:3: error: not valid JSON: duplicate key 'messages'"),
    ("dup-key-message", "sft_train", '{"messages": [{"role": "user", "role": "user", "content": "x"}]}',
     "sft_train.jsonl:3: error: not valid JSON: duplicate key 'role'"),
    ("nan", "sft_train", '{"messages": NaN}', "sft_train.jsonl:3: error: not valid JSON: NaN is not JSON"),
    ("infinity", "grpo_prompts", '{"prompt": [], "answer": Infinity}', "grpo_prompts.jsonl:3: error: not valid JSON"),
    ("int-5000-digits", "sft_train", '{"messages": ' + "9" * 5000 + "}", "sft_train.jsonl:3: error: not valid JSON"),
    ("deep-nesting", "sft_train", '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "sft_train.jsonl:3: error: not valid JSON: nested too deeply"),
    ("lone-surrogate", "sft_train", '{"messages": [{"role": "user", "content": "\\ud800"}]}',
     "sft_train.jsonl:3: error: not valid JSON text: a lone surrogate"),
    ("lone-low-surrogate-key", "sft_train", '{"\\udc00": 1}', "sft_train.jsonl:3: error: not valid JSON text"),
    ("nul-only", "sft_train", sft("\u0000"), "sft_train.jsonl:3: error: messages[1].content: empty"),
    ("zero-width-only", "sft_train", sft("\u200b\u200c\u200d"), "sft_train.jsonl:3: error: messages[1].content: empty"),
    ("bom-char-only", "sft_train", sft("\ufeff"), "sft_train.jsonl:3: error: messages[1].content: empty"),
    ("bidi-marks-only", "sft_train", sft("\u200f\u202e"), "sft_train.jsonl:3: error: messages[1].content: empty"),
    ("line-separator-only", "sft_train", sft("\u2028\u2029\u0085"),
     "sft_train.jsonl:3: error: messages[1].content: empty"),
    ("controls-only", "sft_train", sft("\x01\x07\x1b"), "sft_train.jsonl:3: error: messages[1].content: empty"),
    ("dpo-string-prompt-list-answers", "preference_pairs",
     j({"prompt": "Q?", "chosen": [ASSISTANT], "rejected": [WRONG]}),
     "preference_pairs.jsonl:3: error: prompt, chosen and rejected must all be strings or all be message lists"),
    ("dpo-list-prompt-string-answers", "preference_pairs", j({"prompt": [USER], "chosen": "5", "rejected": "6"}),
     "preference_pairs.jsonl:3: error: prompt, chosen and rejected must all be strings"),
    ("dpo-rows-mix-strings-and-lists", "preference_pairs", j({"prompt": "Q?", "chosen": "5", "rejected": "6"}),
     "preference_pairs.jsonl:3: error: rows differ in shape"),
    ("grpo-string-prompt", "grpo_prompts", j({"prompt": "What is 2 + 3?", "answer": "#### 5"}),
     "grpo_prompts.jsonl:3: error: prompt: expected a list of messages"),
    ("grpo-invisible-answer", "grpo_prompts", j({"prompt": [USER], "answer": "\u200b"}),
     "grpo_prompts.jsonl:3: error: answer: missing or empty"),
    ("grpo-number-answer", "grpo_prompts", j({"prompt": [USER], "answer": 5}),
     "grpo_prompts.jsonl:3: error: answer: missing or empty"),
    ("markup-close-tag-role", "sft_train", j({"messages": [{"role": "[/]", "content": "x"}, ASSISTANT]}),
     "sft_train.jsonl:3: error: messages[0].role: '[/]' is not one of"),
    ("markup-link-role", "sft_train",
     j({"messages": [{"role": "[link=https://evil.example]ok[/link]", "content": "x"}]}),
     "sft_train.jsonl:3: error: messages[0].role: '[link=https://evil.example]ok[/link]'"),
    ("markup-bold-key", "sft_train", j({"messages": [USER, ASSISTANT], "[bold red]x[/]": 1}),
     "sft_train.jsonl:3: error: unknown keys ['[bold red]x[/]']"),
    ("row-is-string", "sft_train", '"just text"', "sft_train.jsonl:3: error: expected a JSON object"),
    ("row-is-null", "sft_train", "null", "sft_train.jsonl:3: error: expected a JSON object"),
    ("row-is-number", "sft_train", "12", "sft_train.jsonl:3: error: expected a JSON object"),
    ("content-is-list", "sft_train", j({"messages": [USER, {"role": "assistant", "content": [{"type": "text"}]}]}),
     "sft_train.jsonl:3: error: messages[1].content: empty or not a string"),
    ("messages-is-object", "sft_train", j({"messages": {"role": "user"}}),
     "sft_train.jsonl:3: error: messages: expected a non-empty list"),
    ("tool-role", "sft_train", j({"messages": [USER, {"role": "tool", "content": "x"}]}),
     "sft_train.jsonl:3: error: messages[1].role: 'tool'"),
    ("dpo-identical-reordered", "preference_pairs",
     '{"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "A"}], '
     '"rejected": [{"content": "A", "role": "assistant"}]}',
     "preference_pairs.jsonl:3: error: chosen and rejected are identical"),
    ("dpo-chosen-from-user", "preference_pairs", j({"prompt": [USER], "chosen": [USER], "rejected": [WRONG]}),
     "preference_pairs.jsonl:3: error: chosen: roles out of order"),
    ("cesu-surrogate-bytes", "sft_train", b'{"messages": "\xed\xa0\x80"}',
     "sft_train.jsonl:3: error: not valid UTF-8"),
    ("overlong-utf8", "sft_train", b'{"messages": "\xc0\xaf"}', "sft_train.jsonl:3: error: not valid UTF-8"),
    ("raw-nul-byte", "sft_train", b'{"messages": "a\x00b"}', "sft_train.jsonl:3: error: not valid JSON"),
    ("trailing-garbage", "sft_train", j({"messages": [USER, ASSISTANT]}) + " x",
     "sft_train.jsonl:3: error: not valid JSON: Extra data"),
    ("two-objects-one-line", "sft_train", j({"messages": [USER, ASSISTANT]}) * 2,
     "sft_train.jsonl:3: error: not valid JSON: Extra data"),
]

BASE_SPEC = math_spec("hostile")
SFT = "{method: sft, max_length: 512}"
GRPO = "{method: grpo, max_length: 512, num_generations: 2}"


def sft_with(fields: str) -> tuple[str, str]:
    return SFT, "{method: sft, max_length: 512, " + fields + "}"


# (id, spec text or (old, new) on BASE_SPEC, expected text in the output)
SPEC_CASES = [
    ("alias-bomb", "name: hostile\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9)),
     "line 3, column 8: YAML aliases (*name) are not allowed"),
    ("merge-key", ("stages:", "base: &b {r: 8}\nlora2: {<<: *b}\nstages:"), "YAML aliases"),
    ("deep-nesting", ("stages:", "x: " + "[" * 500 + "]" * 500 + "\nstages:"),
     "line 10, column 35: nested deeper than 32"),
    ("lone-surrogate", ("  task: math\n", '  task: math\n  system_prompt: "\\ud800"\n'),
     "line 5, column 18: a lone surrogate"),
    ("int-5000-digits", ("stages:", "seedx: " + "9" * 5000 + "\nstages:"), "line 10: longer than 4096 characters"),
    ("int-100-digits", sft_with("seed: " + "9" * 100), "line 11, column "),
    ("long-line", ("  task: math\n", "  task: math\n  system_prompt: " + "x" * 5000 + "\n"),
     "line 5: longer than 4096"),
    ("duplicate-stages", (f"  - {GRPO}\n", f"  - {GRPO}\nstages:\n  - {SFT}\n"),
     "line 14, column 1: duplicate key 'stages' (first at line 10)"),
    ("duplicate-nested", ("  task: math\n", "  task: math\n  task: translation\n"), "duplicate key 'task'"),
    ("lr-inf", sft_with("learning_rate: .inf"), "stages[0].learning_rate (line 11): Input should be a finite number"),
    ("lr-nan", sft_with("learning_rate: .nan"), "stages[0].learning_rate (line 11): Input should be a finite number"),
    ("lr-huge", sft_with("learning_rate: 1e3"), "stages[0].learning_rate (line 11): Input should be less than"),
    ("epochs-inf", sft_with("epochs: .inf"), "stages[0].epochs (line 11): Input should be a finite number"),
    ("max-length-1e20", sft_with("max_length: 1e20").__class__(("max_length: 512}", "max_length: 1e20}")),
     "stages[0].max_length (line 11): Input should be a valid integer"),
    ("max-length-huge-int", ("max_length: 512}", "max_length: 1000000000000}"),
     "stages[0].max_length (line 11): Input should be less than or equal"),
    ("seed-negative", sft_with("seed: -1"), "stages[0].seed (line 11): Input should be greater than or equal to 0"),
    ("seed-2-40", sft_with("seed: 1099511627776"), "stages[0].seed (line 11): Input should be less than or equal"),
    ("scheduler-unknown", sft_with("lr_scheduler_type: cosine_annealing"), "stages[0].lr_scheduler_type (line 11)"),
    ("scheduler-needs-eval", sft_with("lr_scheduler_type: reduce_lr_on_plateau"), "stages[0].lr_scheduler_type"),
    ("target-modules-empty", ("stages:", "finetune: {lora: {target_modules: []}}\nstages:"),
     "finetune.lora.target_modules (line 10): name at least one module"),
    ("target-modules-blank", ("stages:", "finetune: {lora: {target_modules: ['', q_proj]}}\nstages:"),
     "finetune.lora.target_modules (line 10)"),
    ("layers-empty", ("stages:", "finetune: {lora: {layers_to_transform: []}}\nstages:"),
     "finetune.lora.layers_to_transform (line 10)"),
    ("reward-model-nothing", (GRPO, GRPO[:-1] + ", reward_model: name-of-nothing}"),
     "stages[2].reward_model (line 13): 'name-of-nothing' is no stage of this job"),
    ("reward-model-not-reward-stage", (GRPO, GRPO[:-1] + ", reward_model: sft}"),
     "stages[2].reward_model (line 13): 'sft' must name an earlier reward stage"),
    ("batch-true", sft_with("per_device_train_batch_size: true"),
     "stages[0].per_device_train_batch_size (line 11): Input should be a valid integer"),
    ("batch-quoted", sft_with("per_device_train_batch_size: '4'"), "stages[0].per_device_train_batch_size (line 11)"),
    ("batch-float", sft_with("per_device_train_batch_size: 4.0"), "stages[0].per_device_train_batch_size (line 11)"),
    ("bool-yes", ("stages:", "resources: {use_spot: yes}\nstages:"),
     "resources.use_spot (line 10): Input should be a valid boolean"),
    ("bool-one", sft_with("gradient_checkpointing: 1"), "stages[0].gradient_checkpointing (line 11)"),
    ("stage-name-escape", sft_with("name: ../../../escaped"),
     "stages[0].name (line 11): stage name '../../../escaped' is not a safe name"),
    ("stage-name-dotdot", sft_with("name: '..'"), "stages[0].name (line 11): stage name '..' is not a safe name"),
    ("stage-name-slash", sft_with("name: a/b"), "stages[0].name (line 11)"),
    ("stage-name-absolute", sft_with("name: /etc"), "stages[0].name (line 11)"),
    ("stage-name-space", sft_with("name: 'my stage'"), "stages[0].name (line 11)"),
    ("stage-name-reserved", sft_with("name: eval"), "stages[0].name (line 11): stage name 'eval' is reserved"),
    ("data-path-nul", ("data/gsm8k_test.jsonl", '"data/x\\0.jsonl"'), "data.test (line 9): must not contain a NUL"),
    ("data-path-empty", ("data/gsm8k_test.jsonl", "''"), "data.test (line 9): must not be empty"),
    ("num-generations-1", ("num_generations: 2}", "num_generations: 1}"), "stages[2].num_generations (line 13)"),
    ("non-string-key", ("stages:", "1: x\nstages:"), "Keys should be strings"),
    ("markup-in-name", ("name: hostile", "name: '[/]'"), "name (line 1): String should match pattern '^[a-z0-9]"),
    ("python-tag", ("name: hostile", "name: !!python/object/apply:os.system ['true']"), "not valid YAML"),
    ("binary-tag", ("name: hostile", "name: !!binary aGVsbG8="), "name (line 1): Input should be a valid string"),
    ("oversized-file", "name: x\n" + ("# padding\n" * 120_000), "larger than 1,000,000 characters"),
    ("tab-indent", "name: x\nmodel:\n\tbase: y\n", "not valid YAML"),
]


@pytest.fixture(scope="module")
def good_job(tmp_path_factory, math_data, tiny_model_dir):
    root = tmp_path_factory.mktemp("hostile-job")
    shutil.copytree(math_data, root / "data")
    (root / "hostile.yaml").write_text(BASE_SPEC.format(model=tiny_model_dir))
    return root


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_the_corpus_has_at_least_60_hostile_inputs():
    ids = [f"data-{c[0]}" for c in DATA_CASES] + [f"spec-{c[0]}" for c in SPEC_CASES] + BUNDLE_CASES + STORE_CASES
    assert len(set(ids)) == len(ids) >= 60, len(ids)


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_hostile_data_line_is_refused_with_file_and_line(case, good_job, tmp_path):
    name, file, content, expected = case
    job = tmp_path / "job"
    shutil.copytree(good_job, job)
    path = job / "data" / f"{file}.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = (content.encode() if isinstance(content, str) else content) + b"\n"
    path.write_bytes(b"".join(lines))
    out = tmp_path / "bundles"
    started = time.monotonic()
    result = invoke("bundle", "create", str(job / "hostile.yaml"), "--out", str(out))
    assert time.monotonic() - started < 60
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert expected in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_hostile_spec_is_refused_with_line_or_field(case, good_job, tmp_path):
    name, change, expected = case
    job = tmp_path / "job"
    shutil.copytree(good_job, job)
    spec = job / "hostile.yaml"
    if isinstance(change, tuple):
        text = spec.read_text()
        assert change[0] in text, f"case {name} does not apply"
        spec.write_text(text.replace(change[0], change[1], 1), encoding="utf-8")
    else:
        spec.write_text(change, encoding="utf-8")
    out = tmp_path / "bundles"
    started = time.monotonic()
    result = invoke("validate", str(spec), "--json")
    assert time.monotonic() - started < 30, "bounded cost"
    assert result.exit_code == 1, result.output
    assert expected in result.output, result.output
    bundled = invoke("bundle", "create", str(spec), "--out", str(out))
    assert bundled.exit_code == 1 and str(spec) in bundled.output, bundled.output
    assert expected in bundled.output.replace("\n", "") or expected[:20] in bundled.output
    assert not out.exists() or not any(out.iterdir())


def test_yaml_12_numbers_and_booleans_are_read_as_meant(good_job, tmp_path):
    spec = tmp_path / "ok.yaml"
    text = BASE_SPEC.format(model="x").replace(SFT, "{method: sft, learning_rate: 2e-5, name: sft-1.v2}")
    spec.write_text(text.replace(GRPO, GRPO[:-1] + ", use_vllm: off}"))
    loaded = load_spec(spec)
    assert loaded.stages[0].learning_rate == 2e-5 and loaded.stages[2].use_vllm == "off"
    assert loaded.stages[0].stage_name == "sft-1.v2"


# --------------------------------------------------------------------------------- hostile-but-valid
VALID_ODD_ROWS = [
    sft("line one\u2028line two, a paragraph\u2029and U+0085\u0085here"),
    sft("[bold red]not markup[/] [link=https://x]still text[/link] \\[escaped]"),
    sft("emoji 😀 as a surrogate pair, zero\u200bwidth inside visible text"),
    j({"messages": [SYS, USER, {"role": "assistant", "content": "Ｆｕｌｌｗｉｄｔｈ ５\n#### 5"}]}),
]


def test_hostile_but_valid_rows_validate_and_the_trainer_trains_on_them(good_job, tmp_path):
    job = tmp_path / "job"
    shutil.copytree(good_job, job)
    data = job / "data" / "sft_train.jsonl"
    raw_escaped = '{"messages": [{"role": "user", "content": "\\ud83d\\ude00 escaped pair"}, ' \
                  '{"role": "assistant", "content": "ok"}]}'
    data.write_text("\n".join(VALID_ODD_ROWS + [raw_escaped]) + "\n", encoding="utf-8")
    spec = job / "hostile.yaml"
    spec.write_text(spec.read_text().split("stages:")[0].replace("  dpo_train: data/preference_pairs.jsonl\n", "")
                    .replace("  grpo_train: data/grpo_prompts.jsonl\n", "")
                    + "stages:\n  - {method: sft, max_length: 128, max_steps: 1, per_device_train_batch_size: 2,"
                      " gradient_accumulation_steps: 1, packing: false, gradient_checkpointing: false}\n")
    result = invoke("bundle", "create", str(spec), "--out", str(tmp_path / "b"), "--json")
    assert result.exit_code == 0, result.output
    bundle = json.loads(result.stdout.strip().splitlines()[-1])["path"]
    env = {**os.environ, "FT_WORKDIR": str(tmp_path / "work"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WANDB_API_KEY", None)
    run = subprocess.run([sys.executable, "-m", "trainer", "run", bundle, "--run-id", "odd", "--store",
                          str(tmp_path / "store")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "store" / "runs" / "odd" / "sft" / "final" / "_COMPLETE").exists()


def test_a_50_mb_row_validates_in_flat_memory(tmp_path, tiny_model_dir):
    row = tmp_path / "big.jsonl"
    row.write_text(sft("word " * 10_000_000) + "\n" + sft("small") + "\n", encoding="utf-8")
    assert row.stat().st_size > 50_000_000
    code = ("import json, sys; from mac.validate_job import validate_data\n"
            f"r = validate_data({str(row)!r}, 'sft', tokenizer_name={str(tiny_model_dir)!r}, max_length=512)\n"
            # VmHWM: this process's own peak (ru_maxrss starts at the parent's peak: pytest's, after the
            # tests before this one loaded models, which made the check depend on the test order)
            "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "print(json.dumps([r.errors, r.truncated, hwm]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    errors, truncated, max_rss_kib = json.loads(out.stdout.strip().splitlines()[-1])
    assert errors == 0 and truncated == 1
    assert max_rss_kib < 1_500_000, f"peak {max_rss_kib / 1024:.0f} MiB for a 50 MB row"


# ---------------------------------------------------------------------------------------- bundles
SPEC_FOR_BUNDLE = """name: tamper
model: {{base: {model}}}
data:
  task: math
  sft_train: data/sft_train.jsonl
  test: data/gsm8k_test.jsonl
stages:
  - {{method: sft, max_length: 512}}
"""


@pytest.fixture
def bundle(tmp_path, math_data, tiny_model_dir) -> Path:
    from trainer.bundle import write_bundle

    job = tmp_path / "job"
    shutil.copytree(math_data, job / "data")
    (job / "job.yaml").write_text(SPEC_FOR_BUNDLE.format(model=tiny_model_dir))
    return write_bundle(load_spec(job / "job.yaml"), job, tmp_path / "bundles").path


def rehash(path: Path, rename: bool = True) -> Path:
    """What a careful attacker does: recompute every hash and the id, and rename the folder to match."""
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"] = _hash_tree(path)
    manifest["bundle_id"] = bundle_id_of(manifest["files"])
    (path / MANIFEST).write_text(json.dumps(manifest))
    if not rename:
        return path
    new = path.with_name(f"{manifest['name']}-{manifest['bundle_id'][:12]}")
    path.rename(new)
    return new


def _manifest(path: Path, **change) -> Path:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(change)
    (path / MANIFEST).write_text(json.dumps(manifest))
    return path


def _spec_edit(path: Path, old: str, new: str) -> Path:
    spec = path / "spec.yaml"
    spec.write_text(spec.read_text().replace(old, new, 1))
    return rehash(path)


def _fifo(path: Path) -> Path:
    os.mkfifo(path / "data" / "pipe")
    return path


def _data_row(path: Path, row: str) -> Path:
    (path / "data" / "sft_train.jsonl").write_text(row + "\n")
    return rehash(path)


def _outside(path: Path) -> Path:
    outside = path.parent / "outside.jsonl"
    shutil.copyfile(path / "data" / "sft_train.jsonl", outside)
    return _spec_edit(path, "sft_train: data/sft_train.jsonl", "sft_train: ../outside.jsonl")


TAMPER = {
    "renamed-to-another-id": (lambda p: p.rename(p.with_name("tamper-000000000000")),
                              "folder: 'tamper-000000000000' names bundle 000000000000"),
    "consistent-edit-same-folder": (lambda p: (p / "data" / "sft_train.jsonl").write_text(sft("evil") + "\n")
                                    and rehash(p, rename=False), "folder: "),
    "folder-without-id": (lambda p: p.rename(p.with_name("anything")), "is not <name>-<id12>"),
    "empty-manifest-object": (lambda p: (p / MANIFEST).write_text("{}") and p, "malformed manifest"),
    "manifest-no-files": (lambda p: _manifest(p, files={}), "malformed manifest: files"),
    "manifest-files-list": (lambda p: _manifest(p, files=[]), "malformed manifest: files"),
    "manifest-not-json": (lambda p: (p / MANIFEST).write_text("{not json") and p, "unreadable manifest"),
    "manifest-empty-file": (lambda p: (p / MANIFEST).write_text("") or p, "unreadable manifest"),
    "manifest-dotdot-entry": (lambda p: _manifest(p, files={"../x": {"sha256": "0" * 64, "size": 1}}),
                              "refusing path '../x'"),
    "manifest-absolute-entry": (lambda p: _manifest(p, files={"/etc/passwd": {"sha256": "0" * 64, "size": 1}}),
                                "refusing path '/etc/passwd'"),
    "manifest-bad-sha": (lambda p: _manifest(p, bundle_id="xyz"), "malformed manifest: bundle_id"),
    "manifest-format-2": (lambda p: _manifest(p, format=2), "malformed manifest: format"),
    "manifest-size-bool": (lambda p: _manifest(p, files={"spec.yaml": {"sha256": "0" * 64, "size": True}}),
                           "malformed manifest"),
    "symlink-inside": (lambda p: (p / "data" / "link").symlink_to("/etc/hostname") or p, "data/link is a symlink"),
    "data-replaced-by-symlink": (lambda p: (p / "data" / "sft_train.jsonl").unlink()
                                 or (p / "data" / "sft_train.jsonl").symlink_to(p / "data" / "test.jsonl") or p,
                                 "data/sft_train.jsonl is a symlink"),
    "fifo-inside": (_fifo, "data/pipe is not a plain file"),
    "extra-file": (lambda p: (p / "data" / "extra.jsonl").write_text("x") and p, "extra: data/extra.jsonl"),
    "missing-file": (lambda p: (p / "data" / "test.jsonl").unlink() or p, "missing: data/test.jsonl"),
    "changed-file": (lambda p: (p / "data" / "test.jsonl").write_text("x\n") and p,
                     "changed: data/test.jsonl"),
    "spec-data-outside-bundle": (_outside, "data.sft_train: '../outside.jsonl' is not a data file of this bundle"),
    "spec-invalid-inside": (lambda p: _spec_edit(p, "learning_rate: 2.0e-05", "learning_rate: .inf"),
                            "spec.yaml is not a valid spec"),
    "spec-alias-inside": (lambda p: _spec_edit(p, "name: tamper", "name: &n tamper\nx: *n"), "YAML aliases"),
    "spec-name-differs": (lambda p: _spec_edit(p, "name: tamper", "name: other"), "spec.yaml: name 'other'"),
}
BUNDLE_CASES = [f"bundle-{k}" for k in TAMPER] + ["bundle-data-untrainable"]


@pytest.mark.parametrize("case", list(TAMPER), ids=list(TAMPER))
def test_tampered_bundle_does_not_verify(case, bundle):
    tamper, expected = TAMPER[case]
    target = tamper(bundle)
    with pytest.raises(BundleError) as err:
        verify_bundle(target)
    assert expected in str(err.value), str(err.value)
    result = invoke("bundle", "verify", str(target))
    assert result.exit_code == 1 and expected in result.output.replace("\n", " ").replace("  ", " ") \
        or expected in result.output, result.output


def test_consistently_rehashed_untrainable_data_is_refused_before_training(bundle):
    target = _data_row(bundle, '{"messages": [], "messages": [{"role": "user", "content": "x"}]}')
    verified = verify_bundle(target)  # the hashes agree: the content itself is what is wrong
    with pytest.raises(BundleError, match=r"data/sft_train.jsonl:1: not valid JSON: duplicate key"):
        verified.data_path("sft_train")


def test_trainer_exits_2_on_a_malformed_manifest_and_an_invalid_spec_inside(bundle, tmp_path):
    env = {**os.environ, "FT_WORKDIR": str(tmp_path / "work"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    _manifest(bundle, files={})
    run = subprocess.run([sys.executable, "-m", "trainer", "run", str(bundle), "--run-id", "m", "--store",
                          str(tmp_path / "store")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "malformed manifest" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "store").exists()


def test_run_ids_follow_the_name_grammar(tmp_path):
    from trainer.run import Run

    store = str(tmp_path / "store")
    for bad in ("../x", "a/b", "..", "", "/abs", "x" * 200):
        with pytest.raises(ValueError, match="run id"):
            Run(store, bad)
    assert Run(store, "job-20260101-abc.1_x").root == "runs/job-20260101-abc.1_x"


# ------------------------------------------------------------------------------------------ store
STORE_CASES = ["store-dotdot-key", "store-absolute-key", "store-stale-extra", "store-missing-object",
               "store-same-size-edit", "store-warm-cache-tampered", "store-uri-id-mismatch", "store-no-marker",
               "store-uri-without-id", "store-concurrent-fetch", "store-fetch-run-escape"]


def _s3(s3_env):
    import boto3

    bucket = s3_env.removeprefix("s3://")
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL")), bucket


@pytest.fixture
def pushed(bundle, s3_env, tmp_path):
    uri = push_bundle(verify_bundle(bundle), f"{s3_env}/ft", progress=False)
    client, bucket = _s3(s3_env)
    return uri, client, bucket, f"ft/bundles/{bundle.name}"


@pytest.mark.parametrize("key, expected", [("../../escaped.txt", "unsafe object"), ("/etc/escaped", "unsafe object"),
                                            ("data/stale.jsonl", "extra object: data/stale.jsonl")],
                         ids=["dotdot", "absolute", "stale-extra"])
def test_planted_object_under_a_bundle_prefix_is_reported_and_nothing_escapes(key, expected, pushed, tmp_path,
                                                                               monkeypatch):
    uri, client, bucket, prefix = pushed
    client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=b"planted")
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "cache" / "deep" / "er"))
    result = invoke("bundle", "verify", uri)
    assert result.exit_code == 1 and expected in result.output, result.output
    assert not list(tmp_path.rglob("escaped*"))
    assert not Path("/etc/escaped").exists()


def test_missing_or_edited_remote_objects_fail_even_with_a_warm_cache(pushed, tmp_path, monkeypatch):
    uri, client, bucket, prefix = pushed
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "cache"))
    assert invoke("bundle", "verify", uri).exit_code == 0  # the cache is now warm
    body = client.get_object(Bucket=bucket, Key=f"{prefix}/data/test.jsonl")["Body"].read()
    client.put_object(Bucket=bucket, Key=f"{prefix}/data/test.jsonl", Body=body[:-2] + b"X\n")  # same size
    edited = invoke("bundle", "verify", uri)
    assert edited.exit_code == 1 and "data/test.jsonl" in edited.output, edited.output
    client.delete_object(Bucket=bucket, Key=f"{prefix}/data/test.jsonl")
    missing = invoke("bundle", "verify", uri)
    assert missing.exit_code == 1 and "missing object: data/test.jsonl" in missing.output, missing.output


def test_uri_must_carry_the_manifest_id_and_a_marker(pushed, tmp_path, monkeypatch, s3_env):
    uri, client, bucket, prefix = pushed
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "cache"))
    wrong = uri[:-12] + "0" * 12
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
        client.copy_object(Bucket=bucket, CopySource={"Bucket": bucket, "Key": obj["Key"]},
                           Key=obj["Key"].replace(prefix, prefix[:-12] + "0" * 12))
    result = invoke("bundle", "verify", wrong)
    assert result.exit_code == 1 and "its manifest says" in result.output, result.output
    no_id = invoke("bundle", "verify", f"{s3_env}/ft/bundles/tamper")
    assert no_id.exit_code == 1 and "<name>-<id12>" in no_id.output
    client.delete_object(Bucket=bucket, Key=f"{prefix}/_COMPLETE")
    unmarked = invoke("bundle", "verify", uri)
    assert unmarked.exit_code == 1 and "no complete bundle" in unmarked.output
    assert not (tmp_path / "cache" / "bundles" / wrong.rsplit("/", 1)[-1]).exists()


def test_two_processes_fetching_one_bundle_share_the_cache_safely(pushed, tmp_path):
    uri = pushed[0]
    results, errors = [], []

    def fetch() -> None:
        try:
            results.append(fetch_bundle(uri, cache_dir=tmp_path / "cache", progress=False))
        except Exception as e:  # noqa: BLE001 - the test reports any failure
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({r.path for r in results}) == 1
    assert [p.name for p in (tmp_path / "cache" / "bundles").iterdir()] == [uri.rsplit("/", 1)[-1]]
    verify_bundle(results[0].path)


def test_ft_fetch_refuses_run_keys_that_escape(s3_env, tmp_path):
    from jobs import launch

    client, bucket = _s3(s3_env)
    client.put_object(Bucket=bucket, Key="ft/runs/r1/run.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="ft/runs/r1/../../escaped.txt", Body=b"x")
    with pytest.raises(ValueError, match="leave"):
        launch.fetch("r1", f"{s3_env}/ft", tmp_path / "to")
    assert not list(tmp_path.rglob("escaped*"))


def test_spec_error_names_the_field_not_a_traceback(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel: {base: y}\ndata: {task: math, sft_train: a}\nstages:\n  - {method: sft}\n"
                    "  - {method: sft}\n")
    with pytest.raises(SpecError, match="stage names must be unique"):
        load_spec(spec)
