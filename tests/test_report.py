"""The run report rendered by a real browser: Debian's headless Chromium opens report.html from
disk with networking off and every embedded image must have decoded (naturalWidth > 0)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from eval_fixtures import make_run, make_tiny_model

from trainer.evaluate import evaluate_run
from trainer.report import write_report
from trainer.run import Run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Appended to a COPY of the report (the report itself has no scripts): reports how many images loaded.
PROBE = ("<script>window.addEventListener('load',function(){var im=document.images,ok=0,bad=[];"
         "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;else bad.push(im[i].alt)}"
         "var d=document.createElement('pre');d.textContent='FT-PROBE '+JSON.stringify({total:im.length,"
         "loaded:ok,broken:bad});document.body.appendChild(d)});</script>")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    root = tmp_path_factory.mktemp("report")
    base = make_tiny_model(root / "base")
    store, run_id = make_run(root, base)
    evaluate_run(Run(str(store), run_id), ["base", "grpo"], max_new_tokens=4)
    write_report(Run(str(store), run_id))
    return store, run_id, store / Run(str(store), run_id).report


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is needed to render the report (make setup installs Debian's chromium)"
    with tempfile.TemporaryDirectory(prefix="ft-chromium-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def test_report_is_self_contained(report: tuple[Path, str, Path]) -> None:
    _, run_id, page = report
    html = page.read_text()
    assert f"Run report: {run_id}" in html
    # Nothing to fetch: every src/href is inline, no scripts.
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "<script" not in html
    for title in ("Loss per stage", "GRPO reward (grpo)", "Evaluation across stages",
                  "Token lengths (validation and test data)", "Time and cost per stage"):
        assert f"<h3>{title}</h3>" in html


@pytest.mark.integration
def test_report_renders_in_headless_chromium(report: tuple[Path, str, Path], tmp_path: Path) -> None:
    _, _, page = report
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    out = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r"FT-PROBE (\{.*?\})", out.stdout)
    assert found, f"no probe output; chromium said: {out.stderr[-2000:]}"
    status = json.loads(found.group(1))
    assert status == {"total": 5, "loaded": 5, "broken": []}

    shot = tmp_path / "report.png"
    _chromium("--window-size=1000,2600", f"--screenshot={shot}", page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_ft_report_cli(report: tuple[Path, str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from jobs.cli import app

    store, run_id, _ = report
    out = CliRunner().invoke(app, ["report", f"{store}/runs/{run_id}", "--out", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 5


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
