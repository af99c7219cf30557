"""Evaluation of a run's stages with a real (tiny, random) model and real adapters: generation,
scoring, the files stored with the run, the comparison table; lm-eval on the local offline task;
the streaming chat loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_fixtures import gsm8k_test_rows, make_run, make_tiny_model, write_jsonl

from trainer import evaluate
from trainer.errors import BadInput
from trainer.generation import generate_transformers
from trainer.run import Run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("evalrun")
    base = make_tiny_model(root / "base")
    store, run_id = make_run(root, base, stages=("sft", "grpo"))
    return base, store, run_id


def test_run_from_ref() -> None:
    assert Run.from_ref("s3://bkt/p/runs/abc") == Run("s3://bkt/p", "abc")
    assert Run.from_ref("/data/store/runs/abc/") == Run("/data/store", "abc")
    assert Run.from_ref("abc", "s3://bkt/x") == Run("s3://bkt/x", "abc")
    for bad in ("some/folder", "s3://bkt/runs/", "s3://bkt/runs/a/b", "s3:/bkt/runs/a", "s3://B/runs/a"):
        with pytest.raises(BadInput):
            Run.from_ref(bad)


def test_load_test_rows_accepts_bundle_and_raw_gsm8k(tmp_path: Path) -> None:
    bundle_rows = write_jsonl(tmp_path / "a.jsonl", gsm8k_test_rows(2))
    raw = write_jsonl(tmp_path / "b.jsonl", [{"question": "1+1?", "answer": "#### 2"}])
    assert evaluate.load_test_rows(bundle_rows)[0]["messages"][0]["role"] == "system"
    assert evaluate.load_test_rows(raw) == [{"messages": [{"role": "user", "content": "1+1?"}], "answer": "#### 2"}]


def test_evaluate_model_predictions_are_the_models_greedy_output(run: tuple[Path, Path, str]) -> None:
    from trainer.models import load_model_for_inference, load_tokenizer

    base, _, _ = run
    rows = evaluate.load_test_rows(write_jsonl(base.parent / "t.jsonl", gsm8k_test_rows(3)))
    result = evaluate.evaluate_model(str(base), None, rows, "gsm8k", limit=2, max_new_tokens=6, batch_size=2)
    assert result["n"] == 2 and result["backend"] == "transformers"
    # Unbatched, one prompt at a time: left padding in the batch must not change the answers.
    model, tok = load_model_for_inference(str(base)), load_tokenizer(str(base))
    for item, row in zip(result["items"], rows, strict=False):
        assert item["prediction"] == generate_transformers(model, tok, [row["messages"]], 6, batch_size=1)[0]
        assert item["gold"] == row["answer"].rsplit("####", 1)[1].strip()


def test_evaluate_run_stores_results_and_comparison(run: tuple[Path, Path, str]) -> None:
    _, store, run_id = run
    results: dict[str, dict] = {}
    table = evaluate.evaluate_run(Run(str(store), run_id), ["base", "sft"], max_new_tokens=4,
                                  on_result=results.__setitem__)
    eval_dir = store / "runs" / run_id / "eval"
    stored = json.loads((eval_dir / "sft.json").read_text())
    # the spec's evaluation.limit (4) when no --limit is given
    assert stored["stage"] == "sft" and stored["n"] == 4 and stored["adapter"].endswith("sft/final")
    # The adapter changes the model, so its greedy outputs differ from the base model's.
    assert [i["prediction"] for i in results["base"]["items"]] != [i["prediction"] for i in results["sft"]["items"]]
    assert table == json.loads((eval_dir / "comparison.json").read_text())
    assert [r["stage"] for r in table["rows"]] == ["base", "sft"]
    assert table["metric"] == "accuracy"
    md = (eval_dir / "comparison.md").read_text()
    header = md.splitlines()[0]
    assert header.startswith("| Stage | GSM8K accuracy | #### format | format reward |")
    assert header.endswith(" n | source |")
    # the learning signals beside the accuracy, as stored for the stage
    cells = [f"{100 * stored['accuracy']:.1f}%", f"{100 * stored['format_rate']:.1f}%",
             f"{stored['format_reward']:.3f}"]
    assert f"| sft | {' | '.join(cells)} |" in md


def test_a_cut_evaluation_is_stored_apart_and_never_replaces_the_full_one(run: tuple[Path, Path, str]) -> None:
    _, store, run_id = run
    full = Run(str(store), run_id)
    evaluate.evaluate_run(full, ["sft"], max_new_tokens=4)
    before = (store / "runs" / run_id / "eval" / "sft.json").read_bytes()
    table = evaluate.evaluate_run(Run(str(store), run_id), ["sft"], limit=2, max_new_tokens=4)
    cut = json.loads((store / "runs" / run_id / "eval" / "n2" / "sft.json").read_text())
    assert cut["n"] == 2 and cut["stage"] == "sft"
    assert (store / "runs" / run_id / "eval" / "sft.json").read_bytes() == before
    assert {r["stage"]: r["n"] for r in table["rows"]}["sft"] == 4


def test_evaluate_run_errors_name_the_stage(run: tuple[Path, Path, str]) -> None:
    _, store, run_id = run
    with pytest.raises(BadInput, match=r"no stage 'ppo' \(stages: sft, grpo\)"):
        evaluate.evaluate_run(Run(str(store), run_id), ["ppo"])
    with pytest.raises(BadInput, match="no run at"):
        evaluate.evaluate_run(Run(str(store), "nope"))


def test_comparison_markdown_translation() -> None:
    table = {"task": "translation", "rows": [
        {"stage": "base", "bleu": 18.2, "chrf": 45.0, "ter": 70.1, "comet": None, "n": 100, "source": "ft eval"}]}
    md = evaluate.comparison_markdown(table)
    assert md.splitlines()[0] == "| Stage | BLEU | chrF | TER | COMET | n | source |"
    assert "| base | 18.20 | 45.00 | 70.10 | – | 100 | ft eval |" in md


@pytest.mark.integration
def test_lm_eval_local_gsm8k_task_offline(run: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, store, run_id = run
    result = evaluate.lm_eval_stage(Run(str(store), run_id), "sft", ["gsm8k_local"], limit=2)
    metrics = result["results"]["gsm8k_local"]
    assert "exact_match,strict-match" in metrics and "exact_match,flexible-extract" in metrics
    assert result["n-samples"]["gsm8k_local"]["effective"] == 2
    assert (store / "runs" / run_id / "eval" / "lm_eval" / "sft.json").exists()


def test_chat_loop_streams_the_greedy_reply(run: tuple[Path, Path, str]) -> None:
    from trainer.chat import chat_loop
    from trainer.generation import stream_transformers
    from trainer.models import load_model_for_inference, load_tokenizer

    base, store, run_id = run
    # The adapted model: the random base alone tends to emit only special tokens (nothing to stream).
    model = load_model_for_inference(str(base), store / "runs" / run_id / "sft" / "final")
    tok = load_tokenizer(str(base))
    inputs = iter(["How many legs does a cat have?", "/exit"])
    written: list[str] = []
    history = chat_loop(lambda m: stream_transformers(model, tok, m, 8), lambda: next(inputs), written.append,
                        system="Be brief.")
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    expected = generate_transformers(model, tok, [history[:2]], 8, batch_size=1)[0]
    assert history[2]["content"] == expected
    assert len([w for w in written if w.strip()]) >= 2, "the reply arrives in pieces, not at once"
