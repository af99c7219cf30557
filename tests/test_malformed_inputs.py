"""A corpus of malformed inputs (data lines and specs). For each: `ft bundle` exits 1, the message
names the file and line or the spec field, and nothing is written."""

from __future__ import annotations

import json
import shutil

import pytest
from spec_texts import math_spec
from typer.testing import CliRunner

from jobs.cli import app

SYS = {"role": "system", "content": "Solve."}
USER = {"role": "user", "content": "What is 2 + 3?"}
ASSISTANT = {"role": "assistant", "content": "2 + 3 = 5\n#### 5"}
GOOD_SFT = {"messages": [SYS, USER, ASSISTANT]}


def j(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


# (id, file to corrupt, line content or whole-file bytes, expected text in the message)
DATA_CASES = [
    ("json-syntax", "sft_train", '{"messages": [', "sft_train.jsonl:3: error: not valid JSON"),
    ("utf8", "sft_train", b'{"messages": "\xff\xfe"}', "sft_train.jsonl:3: error: not valid UTF-8"),
    ("not-object", "sft_train", "[1, 2]", "sft_train.jsonl:3: error: expected a JSON object"),
    ("no-messages", "sft_train", j({"text": "hi"}), "sft_train.jsonl:3: error: missing key 'messages'"),
    ("empty-messages", "sft_train", j({"messages": []}), "sft_train.jsonl:3: error: messages: expected a non-empty"),
    ("bad-role", "sft_train", j({"messages": [{"role": "bot", "content": "x"}, ASSISTANT]}),
     "sft_train.jsonl:3: error: messages[0].role: 'bot'"),
    ("empty-content", "sft_train", j({"messages": [USER, {"role": "assistant", "content": ""}]}),
     "sft_train.jsonl:3: error: messages[1].content: empty"),
    ("content-not-str", "sft_train", j({"messages": [USER, {"role": "assistant", "content": 5}]}),
     "sft_train.jsonl:3: error: messages[1].content"),
    ("system-late", "sft_train", j({"messages": [USER, SYS, ASSISTANT]}),
     "sft_train.jsonl:3: error: messages[1]: a system message may only come first"),
    ("order", "sft_train", j({"messages": [ASSISTANT, USER, ASSISTANT]}),
     "sft_train.jsonl:3: error: messages: roles out of order"),
    ("ends-with-user", "sft_train", j({"messages": [USER, ASSISTANT, USER]}),
     "sft_train.jsonl:3: error: messages: the last message must be from the assistant"),
    ("message-extra-key", "sft_train", j({"messages": [USER, {**ASSISTANT, "weight": 1}]}),
     "sft_train.jsonl:3: error: messages[1]: unknown keys ['weight']"),
    ("row-extra-key", "sft_train", j({**GOOD_SFT, "id": 7}), "sft_train.jsonl:3: error: unknown keys ['id']"),
    ("bom", "sft_train", b"\xef\xbb\xbf" + j(GOOD_SFT).encode(),
     "sft_train.jsonl:1: error: starts with a UTF-8 byte-order"),
    ("dpo-same", "preference_pairs", j({"prompt": [USER], "chosen": [ASSISTANT], "rejected": [ASSISTANT]}),
     "preference_pairs.jsonl:3: error: chosen and rejected are identical"),
    ("dpo-no-rejected", "preference_pairs", j({"prompt": [USER], "chosen": [ASSISTANT]}),
     "preference_pairs.jsonl:3: error: missing key 'rejected'"),
    ("dpo-empty-chosen", "preference_pairs", j({"prompt": "Q", "chosen": " ", "rejected": "x"}),
     "preference_pairs.jsonl:3: error: chosen: empty"),
    ("dpo-prompt-ends-assistant", "preference_pairs",
     j({"prompt": [USER, ASSISTANT], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "6"}]}),
     "preference_pairs.jsonl:3: error: prompt: the last message must be from the user"),
    ("grpo-unparseable", "grpo_prompts", j({"prompt": [USER], "answer": "#### banana"}),
     "grpo_prompts.jsonl:3: error: answer: the reward cannot parse"),
    ("grpo-no-answer", "grpo_prompts", j({"prompt": [USER]}), "grpo_prompts.jsonl:3: error: answer: missing"),
    ("grpo-empty-answer", "grpo_prompts", j({"prompt": [USER], "answer": ""}),
     "grpo_prompts.jsonl:3: error: answer: missing or empty"),
    ("grpo-prompt-missing", "grpo_prompts", j({"answer": "#### 5"}),
     "grpo_prompts.jsonl:3: error: missing key 'prompt'"),
    ("test-leak", "sft_train", None, "sft_train.jsonl:3: error: this prompt is also in the test set"),
    ("empty-file", "sft_val", b"", "sft_val.jsonl: error: no rows"),
]

BASE_SPEC = math_spec("corpus")

# (id, spec text or a replacement on BASE_SPEC, expected text)
SPEC_CASES = [
    ("yaml-syntax", "name: corpus\nmodel: {base: [\n", "corpus.yaml: error: line 3, column 1: not valid YAML"),
    ("unknown-top", ("stages:", "epochs: 3\nstages:"), "epochs (line 10): unknown key"),
    ("no-stages", ("stages:\n  - {method: sft, max_length: 512}\n  - {method: dpo, max_length: 512}\n"
                   "  - {method: grpo, max_length: 512, num_generations: 2}\n", "stages: []\n"), "stages (line 10)"),
    ("unknown-method", ("{method: sft, max_length: 512}", "{method: ppo}"), "stages[0] (line 11)"),
    ("lora-r-zero", ("stages:", "finetune: {lora: {r: 0}}\nstages:"), "finetune.lora.r (line 10)"),
    ("negative-lr", ("{method: sft, max_length: 512}", "{method: sft, learning_rate: -1}"),
     "stages[0].learning_rate (line 11)"),
    ("bad-name", ("name: corpus", "name: Corpus_Job"), "name (line 1)"),
    ("missing-sft-data", ("  sft_train: data/sft_train.jsonl\n", ""), "stages[0] (sft) needs data.sft_train"),
    ("missing-file", ("data/gsm8k_test.jsonl", "data/nope.jsonl"), "nope.jsonl: error: file not found"),
    ("chrf-on-math", ("num_generations: 2}", "num_generations: 2, rewards: [chrf]}"),
     "stages[2].rewards (line 13): chrf is a translation reward"),
    ("multinode-runpod", ("stages:", "distributed: {num_nodes: 2}\nstages:"), "num_nodes > 1 runs on aws or lambda"),
    ("duplicate-stage", ("{method: dpo, max_length: 512}", "{method: sft, max_length: 512}"),
     "stage names must be unique; repeated: sft"),
    ("top-level-list", "- name: corpus\n", "the spec must be a YAML mapping"),
    ("bad-task", ("task: math", "task: poetry"), "data.task (line 4)"),
    ("bad-dtype", ("{base: ", "{dtype: float8, base: "), "model.dtype (line 2)"),
]


@pytest.fixture(scope="module")
def good_job(tmp_path_factory, math_data, tiny_model_dir):
    root = tmp_path_factory.mktemp("good-job")
    shutil.copytree(math_data, root / "data")
    (root / "corpus.yaml").write_text(BASE_SPEC.format(model=tiny_model_dir))
    return root


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_the_good_job_bundles(good_job, tmp_path):
    result = invoke("bundle", "create", str(good_job / "corpus.yaml"), "--out", str(tmp_path / "b"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["bundle_id"]


def test_corpus_has_at_least_30_distinct_cases():
    ids = [c[0] for c in DATA_CASES] + [c[0] for c in SPEC_CASES]
    assert len(set(ids)) == len(ids) >= 30


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_line(case, good_job, tmp_path, math_data):
    name, file, content, expected = case
    job = tmp_path / "job"
    shutil.copytree(good_job, job)
    path = job / "data" / f"{file}.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    if name == "test-leak":
        test_row = json.loads((job / "data/gsm8k_test.jsonl").read_text().splitlines()[0])
        content = j({"messages": test_row["prompt"] + [ASSISTANT]})
    if name in ("bom", "empty-file"):
        path.write_bytes(content + (b"\n" + b"".join(lines[1:]) if content else b""))
    else:
        raw = content.encode() if isinstance(content, str) else content
        lines[2] = raw + b"\n"
        path.write_bytes(b"".join(lines))
    out = tmp_path / "bundles"
    result = invoke("bundle", "create", str(job / "corpus.yaml"), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert expected in result.output, result.output
    assert "no bundle written" in result.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec(case, good_job, tmp_path):
    name, change, expected = case
    job = tmp_path / "job"
    shutil.copytree(good_job, job)
    spec = job / "corpus.yaml"
    if isinstance(change, tuple):
        text = spec.read_text()
        assert change[0] in text, f"case {name} does not apply"
        spec.write_text(text.replace(change[0], change[1], 1))
    else:
        spec.write_text(change)
    out = tmp_path / "bundles"
    result = invoke("bundle", "create", str(spec), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert expected in result.output, result.output
    assert str(spec) in result.output or "nope.jsonl" in expected
    assert not out.exists() or not any(out.iterdir())


def test_validate_one_file_and_usage_errors(good_job):
    data = good_job / "data" / "sft_train.jsonl"
    ok = invoke("validate", "--data", str(data), "--kind", "sft", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["files"][0]["rows"] == len(data.read_text().splitlines())
    assert invoke("validate").exit_code == 2
    assert invoke("validate", "--data", str(data)).exit_code == 2


def test_warnings_fail_only_with_strict(good_job, tmp_path):
    data = tmp_path / "dupes.jsonl"
    data.write_text(j(GOOD_SFT) + "\n" + j(GOOD_SFT) + "\n")
    assert invoke("validate", "--data", str(data), "--kind", "sft").exit_code == 0
    strict = invoke("validate", "--data", str(data), "--kind", "sft", "--strict")
    assert strict.exit_code == 1
    assert f"{data}:2: warning: exact duplicate of line 1" in strict.output


def test_token_lengths_count_truncation(good_job, tiny_model_dir):
    from transformers import AutoTokenizer

    data = good_job / "data" / "sft_train.jsonl"
    result = invoke("validate", "--data", str(data), "--kind", "sft", "--tokenizer", str(tiny_model_dir),
                    "--max-length", "100", "--json")
    report = json.loads(result.stdout)["files"][0]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = [len(tok(tok.apply_chat_template(json.loads(line)["messages"], tokenize=False),
                       add_special_tokens=False)["input_ids"]) for line in data.read_text().splitlines()]
    assert report["truncated"] == sum(n > 100 for n in lengths) > 0
    assert (report["tokens"]["min"], report["tokens"]["max"]) == (min(lengths), max(lengths))
