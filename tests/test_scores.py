"""Scoring: sacrebleu equality (library and its own CLI), GSM8K accuracy on hand-checked
predictions, and `ft eval score` end to end on the shipped samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sacrebleu
from eval_fixtures import GSM8K_SAMPLE, KO_EN, write_jsonl
from typer.testing import CliRunner

from jobs.cli import app
from trainer.scores import gsm8k_scores, translation_scores

REFS = Path(f"{KO_EN}.en").read_text(encoding="utf-8").splitlines()[:50]


def _hyps() -> list[str]:
    # Degraded references: drop every third word, so the scores land strictly between 0 and 100.
    return [" ".join(w for i, w in enumerate(r.split()) if i % 3 != 2) for r in REFS]


def test_translation_scores_equal_sacrebleu() -> None:
    hyps = _hyps()
    ours = translation_scores(hyps, REFS, comet=False)
    assert ours["bleu"] == round(sacrebleu.corpus_bleu(hyps, [REFS]).score, 4)
    assert ours["chrf"] == round(sacrebleu.corpus_chrf(hyps, [REFS]).score, 4)
    assert ours["ter"] == round(sacrebleu.corpus_ter(hyps, [REFS]).score, 4)
    assert 0 < ours["bleu"] < 100 and 0 < ours["ter"] < 100
    assert ours["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.")
    assert "nc:6|nw:0" in ours["signatures"]["chrf"]
    assert ours["comet"] is None and ours["comet_note"] == "not requested"
    perfect = translation_scores(REFS, REFS, comet=False)
    assert perfect["bleu"] == 100.0 and perfect["ter"] == 0.0


def test_gsm8k_scores_hand_checked() -> None:
    golds = ["Some work\n#### 18", "#### 3", "#### 70,000", "#### -4", "#### 5", "#### 12"]
    preds = [
        "She makes 9 * 2 = $18 every day.\n#### 18",  # reference format
        "So the answer is \\boxed{3}.",  # boxed
        "The answer is $70,000.",  # thousands + dollar
        "It drops by 4, so the change is -4 degrees.",  # negative, last number
        "I am not sure.",  # no number at all
        "The answer is 13.",  # wrong
    ]
    result = gsm8k_scores(preds, golds)
    assert [it["correct"] for it in result["items"]] == [True, True, True, True, False, False]
    assert result["correct"] == 4 and result["n"] == 6 and result["no_answer"] == 1
    assert result["accuracy"] == round(4 / 6, 6)
    assert result["items"][2] == {"index": 2, "extracted": "70000", "gold": "70000", "correct": True,
                                  "formatted": False, "format_reward": 0.0}
    # only the first states its answer on a `#### N` line, after its reasoning (the GRPO format reward's 1.0)
    assert [it["formatted"] for it in result["items"]] == [True, False, False, False, False, False]
    assert result["format_rate"] == round(1 / 6, 6) and result["format_reward"] == round(1 / 6, 6)


runner = CliRunner()


def test_ft_eval_score_gsm8k_sample(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in GSM8K_SAMPLE.read_text().splitlines()]
    # Predictions: the first half correct (the reference's own working), the second half off by one.
    golds = [int(r["answer"].split("####")[1].replace(",", "")) for r in rows]
    preds = [{"answer": r["answer"] if i < 100 else f"I think it is {g + 1}."}
             for i, (r, g) in enumerate(zip(rows, golds, strict=True))]
    pred_file = write_jsonl(tmp_path / "preds.jsonl", preds)
    per_item = tmp_path / "items.jsonl"
    out = runner.invoke(app, ["eval", "score", "--task", "gsm8k", "--predictions", str(pred_file),
                              "--references", str(GSM8K_SAMPLE), "--per-item", str(per_item), "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["n"] == 200 and result["correct"] == 100 and result["accuracy"] == 0.5
    items = [json.loads(line) for line in per_item.read_text().splitlines()]
    assert len(items) == 200
    assert items[0] == {"index": 0, "extracted": "18", "gold": "18", "correct": True, "formatted": True,
                        "format_reward": 1.0}
    assert result["format_rate"] == 0.5  # the references' own `#### N` lines; "I think it is N." has none
    assert items[150]["correct"] is False and int(items[150]["extracted"]) == int(items[150]["gold"]) + 1


def test_ft_eval_score_translation_equals_sacrebleu_cli(tmp_path: Path) -> None:
    hyp_file = tmp_path / "hyp.en"
    ref_file = tmp_path / "ref.en"
    hyp_file.write_text("\n".join(_hyps()) + "\n", encoding="utf-8")
    ref_file.write_text("\n".join(REFS) + "\n", encoding="utf-8")
    out = runner.invoke(app, ["eval", "score", "--task", "translation", "--predictions", str(hyp_file),
                              "--references", str(ref_file), "--json"])
    assert out.exit_code == 0, out.output
    ours = json.loads(out.output)
    cli = subprocess.run([str(Path(sys.executable).parent / "sacrebleu"), str(ref_file), "-i", str(hyp_file),
                          "-m", "bleu", "chrf", "ter", "-w", "4"], capture_output=True, text=True, check=True)
    bleu, chrf, ter = json.loads(cli.stdout)  # sacrebleu prints a JSON list, one object per metric
    assert (ours["bleu"], ours["chrf"], ours["ter"]) == (bleu["score"], chrf["score"], ter["score"])
    assert ours["signatures"] == {"bleu": bleu["signature"], "chrf": chrf["signature"], "ter": ter["signature"]}


def test_ft_eval_score_usage_errors(tmp_path: Path) -> None:
    out = runner.invoke(app, ["eval", "score", "--task", "gsm8k"])
    assert out.exit_code == 2
    out = runner.invoke(app, ["eval", "score", "--task", "gsm8k", "--predictions", str(tmp_path / "nope"),
                              "--references", str(GSM8K_SAMPLE)])
    assert out.exit_code == 2 and "no such file" in out.output
