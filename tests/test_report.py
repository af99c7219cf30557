"""The run report from a real trainer run (tiny random Llama, CPU: SFT → DPO → GRPO, then `ft eval`),
and rendered by a real browser: Debian's headless Chromium opens report.html from disk with networking off
and every embedded image must have decoded (naturalWidth > 0)."""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest
from eval_fixtures import make_tiny_model

from trainer.run import Run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Appended to a COPY of the report (the report itself has no scripts): reports how many images loaded.
PROBE = ("<script>window.addEventListener('load',function(){var im=document.images,ok=0,bad=[];"
         "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;else bad.push(im[i].alt)}"
         "var d=document.createElement('pre');d.textContent='FT-PROBE '+JSON.stringify({total:im.length,"
         "loaded:ok,broken:bad});document.body.appendChild(d)});</script>")

# Every stage logs each step and checkpoints every 2: SFT and DPO evaluate on their validation files
# before the first step, at step 2 and at the end; GRPO's 8 new tokens are all cut (a finding).
SPEC = """name: report-tiny
model: {{base: {model}}}
data: {{task: math, sft_train: data/sft_train.jsonl, sft_valid: data/sft_val.jsonl,
        dpo_train: data/preference_pairs.jsonl, dpo_valid: data/preference_pairs_val.jsonl,
        grpo_train: data/grpo_prompts.jsonl, test: data/gsm8k_test.jsonl}}
finetune: {{method: lora, lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}}}}
stages:
  - {{method: sft, max_steps: 4, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false, logging_steps: 1, save_steps: 2}}
  - {{method: dpo, max_steps: 3, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, max_length: 256, gradient_checkpointing: false, logging_steps: 1, save_steps: 2}}
  - {{method: grpo, max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 2,
      gradient_accumulation_steps: 1, num_generations: 2, max_completion_length: 8, max_length: 256,
      gradient_checkpointing: false, logging_steps: 1, save_steps: 2}}
evaluation: {{task: gsm8k, limit: 3, max_new_tokens: 8}}
"""
STAGES = ("sft", "dpo", "grpo")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, math_data: Path) -> tuple[Path, str, Path]:
    """One real run for the whole module: the trainer's entry point in a process of its own, then the
    evaluation of base and every stage and the report, as `ft eval` does."""
    from trainer_runner import run_main

    from trainer.bundle import write_bundle
    from trainer.evaluate import evaluate_run
    from trainer.report import write_report
    from trainer.spec import load_spec

    root = tmp_path_factory.mktemp("report")
    base = make_tiny_model(root / "base")
    shutil.copytree(math_data, root / "job" / "data")
    (root / "job" / "job.yaml").write_text(SPEC.format(model=base))
    bundle = write_bundle(load_spec(root / "job" / "job.yaml"), root / "job", root / "bundles")
    store, run_id = root / "store", "report-run"
    environ = {**os.environ, "FT_WORKDIR": str(root / "work"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = run_main(["run", str(bundle.path), "--run-id", run_id, "--store", str(store)], environ,
                    root / "trainer.log")
    assert done.returncode == 0, done.stderr[-3000:]
    run = Run(str(store), run_id)
    evaluate_run(run)
    write_report(Run(str(store), run_id))
    return store, run_id, store / run.report


def _metrics(store: Path, run_id: str, stage: str) -> list[dict]:
    return [json.loads(line) for line in (store / "runs" / run_id / stage / "metrics.jsonl").read_text().splitlines()]


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is needed to render the report (make setup installs Debian's chromium)"
    with tempfile.TemporaryDirectory(prefix="ft-chromium-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def test_the_trainer_writes_the_metrics_the_report_reads(report: tuple[Path, str, Path]) -> None:
    from trainer import metric_names as m

    store, run_id, _ = report
    sft, dpo, grpo = (_metrics(store, run_id, s) for s in STAGES)
    for rows, steps in ((sft, 4), (dpo, 3)):
        train, evals = m.training_rows(rows), m.eval_rows(rows)
        assert [r["step"] for r in train] == list(range(1, steps + 1))
        assert all(isinstance(r[k], float) for r in train for k in (m.LOSS, m.GRAD_NORM, m.LEARNING_RATE))
        assert [r["step"] for r in evals] == [0, 2, steps]  # before the first step, at the checkpoint, at the end
        assert all("step_time" not in r for r in evals) and sum(bool(r.get(m.FINAL)) for r in rows) == 1
    for key in (m.DPO_MARGINS, m.DPO_ACCURACIES, m.DPO_CHOSEN, m.DPO_REJECTED):
        assert all(key in r for r in m.training_rows(dpo)) and all(m.eval_key(key) in r for r in m.eval_rows(dpo))
    assert abs(m.eval_rows(dpo)[0][m.EVAL_LOSS] - 0.6931) < 1e-3  # DPO starts at ln 2: policy = reference
    train = m.training_rows(grpo)
    assert m.reward_functions(train) == ["math_correctness", "format_reward"]
    for key in (m.REWARD_MEAN, m.REWARD_STD, m.REWARD_ZERO_STD, m.KL, m.CLIPPED_RATIO, m.MEAN_LENGTH,
                "rewards/math_correctness/std"):
        assert all(isinstance(r[key], float) for r in train), key
    assert "reward" not in train[0]  # TRL's name, stored as reward_mean


def test_report_is_self_contained(report: tuple[Path, str, Path]) -> None:
    _, run_id, page = report
    html = page.read_text()
    assert f"Run report: {run_id}" in html
    # Nothing to fetch: every src/href is inline, no scripts.
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "<script" not in html


def test_every_section_holds_the_runs_own_numbers(report: tuple[Path, str, Path]) -> None:
    from trainer import metric_names as m
    from trainer.diagnostics import diagnose
    from trainer.report import _fmt

    store, run_id, page = report
    html = page.read_text()
    sections = re.findall(r'<h2 id="([^"]+)">', html)
    assert sections == ["diagnostics", "run", "stages", "evaluation", "samples", "training", "dpo", "grpo", "data",
                        "time-and-cost", "spec"]
    titles = re.findall(r"<h3>([^<]+)</h3>", html)
    for title in ("Training: sft (sft)", "Training: dpo (dpo)", "Training: grpo (grpo)", "DPO rewards: dpo",
                  "GRPO: grpo", "Evaluation across stages", "Token lengths", "Time and cost per stage"):
        assert title in titles

    run = Run(str(store), run_id)
    # diagnostics at the top: what diagnose() finds in this run, in the run's own words
    findings = diagnose(run)
    assert {"grpo_zero_variance", "grpo_all_clipped"} <= {f.rule for f in findings}  # a random model: reward 0
    top = html[html.index('id="diagnostics"'):html.index('id="run"')]
    assert all(htmllib.escape(f.text) in top for f in findings)
    # the run: bundle id and the versions the trainer recorded at run start
    assert run.info["bundle_id"] in html
    assert all(f"{name} {version(name)}" in html for name in ("torch", "transformers", "trl", "peft"))
    # the stages' numbers, start → end (the mean of up to three logged steps at each end), from metrics.jsonl
    def ends(values: list[float]) -> str:
        k = max(1, min(3, len(values) // 2))
        return f"{_fmt(sum(values[:k]) / k)} → {_fmt(sum(values[-k:]) / k)}"

    for stage in STAGES:
        rows = _metrics(store, run_id, stage)
        assert ends([r[m.LOSS] for r in m.training_rows(rows)]) in html
        if stage != "grpo":
            assert ends([r[m.EVAL_LOSS] for r in m.eval_rows(rows)]) in html
    margins = [r[m.DPO_MARGINS] for r in m.training_rows(_metrics(store, run_id, "dpo"))]
    assert f"margin {ends(margins)}" in html
    # evaluation: every stage's stored accuracy, base first
    evaluation = html[html.index('id="evaluation"'):html.index('id="samples"')]
    for stage in ("base", *STAGES):
        result = json.loads((store / "runs" / run_id / "eval" / f"{stage}.json").read_text())
        v = result.get("eval_loss")  # three decimals, two from 10 up (a random tiny model's loss)
        loss = "" if v is None else f"<td>{v:.3f}</td>" if v < 10 else f"<td>{v:.2f}</td>"
        assert (f"<td>{stage}</td><td>{100 * result['accuracy']:.1f}%</td><td>{100 * result['format_rate']:.1f}%</td>"
                f"<td>{result['format_reward']:.3f}</td>{loss}<td>{result['n']}</td>") in evaluation
    # sample generations: the same first prompts, one row per stage, marked as the evaluation scored them
    samples = html[html.index('id="samples"'):html.index('id="training"')]
    test_rows = [json.loads(line) for line in (store.parent / "job/data/gsm8k_test.jsonl").read_text().splitlines()]
    for i in range(3):
        assert htmllib.escape(test_rows[i]["prompt"][-1]["content"]) in samples
    marks = re.findall(r'<td class="(yes|no)">', samples)
    expected = [json.loads((store / "runs" / run_id / "eval" / f"{s}.json").read_text())["items"][i]["correct"]
                for i in range(3) for s in ("base", *STAGES)]
    assert marks == ["yes" if ok else "no" for ok in expected]
    # token lengths against each stage's max_length, and the cost section of a local run
    data = html[html.index('id="data"'):html.index('id="time-and-cost"')]
    assert all(f"<td>{role}</td>" in data for role in ("sft_train", "sft_valid", "dpo_train", "grpo_train", "test"))
    assert "sft max_length 256" in data and "grpo max_length 256" in data
    assert "Ran locally: no cloud bill (actual $0)." in html
    assert "name: report-tiny" in html  # the resolved spec


@pytest.mark.integration
def test_report_renders_in_headless_chromium(report: tuple[Path, str, Path], tmp_path: Path) -> None:
    _, _, page = report
    html = page.read_text()
    images = html.count("<img ")
    assert images == 8  # 3 training, DPO, GRPO, evaluation, token lengths, time and cost
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    out = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r"FT-PROBE (\{.*?\})", out.stdout)
    assert found, f"no probe output; chromium said: {out.stderr[-2000:]}"
    status = json.loads(found.group(1))
    assert status == {"total": images, "loaded": images, "broken": []}

    shot = tmp_path / "report.png"
    _chromium("--window-size=1000,2600", f"--screenshot={shot}", page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_ft_report_cli(report: tuple[Path, str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from jobs.cli import app

    store, run_id, page = report
    out = CliRunner().invoke(app, ["report", f"{store}/runs/{run_id}", "--out", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == page.read_text().count("<img ")


def test_cost_section_local_cloud_and_no_estimate() -> None:
    from trainer.report import cost_section

    local_stage = {"status": "done", "seconds": 60.0, "attempts": [{"instance": None, "price_per_hour": None}],
                   "attempts_count": 1, "seconds_billed": 60.0, "gpu_hours": 0.0, "cost_usd": 0.0}
    estimate = {"cloud": "runpod", "instance_type": "1x_L40S_SECURE", "accelerator": "L40S", "count": 1,
                "spot": True, "price_per_hour": 0.26, "est_hours": 0.4, "est_cost_usd": 0.1,
                "basis": "the cheapest fitting cloud offer"}
    local = "".join(cost_section({"stages": {"sft": local_stage}, "cost": {"instance": None, "estimate": estimate}},
                                 ["sft"]))
    assert "Ran locally: no cloud bill (actual $0)" in local
    assert "about 0.40 h, $0.10 on 1× L40S on runpod 1x_L40S_SECURE (spot, $0.26/h)" in local
    assert "<td>total</td><td>–</td><td>–</td><td>–</td><td>0</td>" in local.replace("0.0<", "0<")
    assert "<td>sft</td><td>1</td><td>60</td><td>0</td><td>0</td><td>–</td><td>–</td>" in \
        local.replace("60.0<", "60<").replace("0.0<", "0<")  # no per-stage estimate in this row

    cloud_stage = {**local_stage, "attempts_count": 2, "cost_usd": 0.13}
    cloud = "".join(cost_section({"stages": {"sft": cloud_stage, "grpo": {**cloud_stage, "cost_usd": 0.2}},
                                  "cost": {"instance": {"cloud": "runpod", "accelerator": "L40S", "gpus_per_node": 1,
                                                        "nodes": 2, "spot": True, "instance_type": None},
                                           "price_per_hour": 0.26, "estimate": estimate, "max_cost_usd": 5}},
                                 ["sft", "grpo"]))
    assert "Ran on 2 nodes × 1× L40S on runpod (spot, $0.26/h)." in cloud and "; actual $0.33." in cloud
    assert "Budget (resources.max_cost_usd): $5.00." in cloud
    noted = "".join(cost_section({"stages": {"sft": local_stage},
                                  "cost": {"estimate": {"note": "no cached SkyPilot catalog on this machine"}}},
                                 ["sft"]))
    assert "No cloud estimate: no cached SkyPilot catalog on this machine." in noted
    assert cost_section({"stages": {}}, []) == []
    # per stage: the launch row's stage hours × its price × nodes, beside the actual
    per_stage = {**estimate, "nodes": 2, "stage_hours": {"sft": 0.5, "grpo": 0.25}}
    staged = "".join(cost_section({"stages": {"sft": cloud_stage, "grpo": {**cloud_stage, "cost_usd": 0.2}},
                                   "cost": {"estimate": per_stage}}, ["sft", "grpo"]))
    assert "<td>sft</td><td>2</td><td>60</td><td>0</td><td>0.13</td><td>0.5</td><td>0.26</td>" in \
        staged.replace("60.0<", "60<").replace("0.0<", "0<")
    assert "<td>0.25</td><td>0.13</td>" in staged


def test_first_last_averages_non_overlapping_windows_of_up_to_three() -> None:
    """Every length up to 9: the two windows hold min(3, n // 2) values (at least one), never the same step."""
    from trainer import metric_names as m

    assert m.first_last([]) is None
    for n in range(1, 10):
        values = [float(10 ** i) for i in range(n)]  # each value is its own digit: the sums say which were read
        first, last = m.first_last(values)
        k = max(1, min(3, n // 2))
        assert first == sum(values[:k]) / k and last == sum(values[-k:]) / k
        assert n == 1 or k <= n - k
