"""Data preparation from the bundled real samples: formats, determinism, dedupe, no test leakage."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from jobs.cli import app
from mac.data_prep import prepare_math, prepare_translation, wrong_solution
from trainer.answers import answers_match, extract_answer, gold_answer

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_math_files_and_formats(tmp_path):
    result = prepare_math(str(SAMPLES / "gsm8k"), tmp_path, limit=100, test_limit=20)
    assert result.counts["gsm8k_test.jsonl"] == 20
    sft = rows(tmp_path / "sft_train.jsonl")
    assert [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]
    assert "<<" not in sft[0]["messages"][2]["content"]  # calculator annotations stripped
    for pair in rows(tmp_path / "preference_pairs.jsonl"):
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert chosen != rejected
        assert not answers_match(extract_answer(rejected), gold_answer(chosen))
    grpo = rows(tmp_path / "grpo_prompts.jsonl")
    assert all(extract_answer(r["answer"]) is not None for r in grpo)


def test_deterministic_and_seeded(tmp_path):
    prepare_math(str(SAMPLES / "gsm8k"), tmp_path / "a", limit=50)
    prepare_math(str(SAMPLES / "gsm8k"), tmp_path / "b", limit=50)
    prepare_math(str(SAMPLES / "gsm8k"), tmp_path / "c", limit=50, seed=7)
    a, b, c = ((tmp_path / d / "sft_train.jsonl").read_text() for d in "abc")
    assert a == b and a != c


def test_duplicates_removed_and_test_items_never_in_train(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    train = (SAMPLES / "gsm8k/train.jsonl").read_text().splitlines()[:40]
    test = (SAMPLES / "gsm8k/test.jsonl").read_text().splitlines()[:10]
    # 5 exact duplicates and 3 test questions planted in train
    (src / "train.jsonl").write_text("\n".join(train + train[:5] + test[:3]) + "\n")
    (src / "test.jsonl").write_text("\n".join(test) + "\n")
    result = prepare_math(str(src), tmp_path / "out")
    assert result.dropped_duplicates == 5 and result.dropped_test_overlap == 3
    test_q = {json.loads(t)["question"] for t in test}
    for name in ("sft_train.jsonl", "sft_val.jsonl"):
        for r in rows(tmp_path / "out" / name):
            assert r["messages"][1]["content"] not in test_q
    assert result.counts["sft_train.jsonl"] + result.counts["sft_val.jsonl"] == 40


def test_translation_from_local_parallel_files(tmp_path):
    result = prepare_translation(str(SAMPLES / "ko-en"), tmp_path)
    counts = result.counts
    assert counts["train.jsonl"] + counts["val.jsonl"] + counts["test.jsonl"] + result.dropped_duplicates == 1000
    test_src = {r["prompt"][-1]["content"] for r in rows(tmp_path / "test.jsonl")}
    assert not test_src & {r["messages"][1]["content"] for r in rows(tmp_path / "train.jsonl")}
    first = rows(tmp_path / "train.jsonl")[0]["messages"]
    assert first[1]["content"].startswith("Translate to English:\n") and first[2]["role"] == "assistant"


def test_wrong_solution_changes_the_final_answer_everywhere():
    import random

    wrong = wrong_solution("12 + 6 = 18 apples\n#### 18", random.Random(0))
    assert wrong.endswith(f"#### {extract_answer(wrong)}") and "18" not in wrong


def test_cli_prepare_and_bad_source(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "prepare", "translation", "--source", str(SAMPLES / "ko-en"),
                             "--out", str(tmp_path / "t"), "--limit", "50"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "t" / "data_config.yaml").exists()
    bad = runner.invoke(app, ["data", "prepare", "math", "--source", str(tmp_path / "nothing"), "--out",
                              str(tmp_path / "m")])
    assert bad.exit_code == 2 and "train.jsonl" in bad.output  # a DataSourceError is bad input
