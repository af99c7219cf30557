"""The image's entry point on a SkyPilot node (trainer/launch.py): SkyPilot's variables, mixed precision,
exit codes through accelerate, signals passed on. The job YAMLs' own run text is run in
test_job_yamls.py and, for real on two "nodes", in test_rehearsal.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import launch
from trainer.errors import BadInput


@pytest.mark.parametrize(("capability", "expected"), [(None, "no"), (6, "fp16"), (7, "fp16"), (8, "bf16"),
                                                      (9, "bf16"), (10, "bf16")])
def test_auto_mixed_precision_by_compute_capability(capability, expected):
    assert launch.mixed_precision("auto", capability) == expected
    for given in ("bf16", "fp16", "no"):
        assert launch.mixed_precision(given, capability) == given


def test_node_from_skypilot_variables():
    env = {"SKYPILOT_NODE_RANK": "1", "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NUM_GPUS_PER_NODE": "8",
           "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6\n"}
    node = launch.node_from_env(env)
    assert (node.rank, node.num_nodes, node.gpus, node.head_ip, node.processes, node.is_head) == \
        (1, 2, 8, "10.0.0.5", 16, False)
    assert launch.node_from_env({}) == launch.Node()
    with pytest.raises(BadInput, match="SKYPILOT_NUM_NODES"):
        launch.node_from_env({"SKYPILOT_NUM_NODES": "two"})


def test_empty_optional_variables_are_unset():
    env = {"AWS_ENDPOINT_URL": "", "HF_TOKEN": "", "FT_STORE": "", "WANDB_API_KEY": "k", "OTHER": ""}
    assert launch.clean_environment(env) == {"WANDB_API_KEY": "k", "OTHER": ""}


def _child(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(body)
    return [sys.executable, str(script)]


def test_exit_code_file_wins_over_accelerates_1(tmp_path):
    """accelerate reports any failed rank as 1; the trainer's own code (75: retry) is what SkyPilot sees."""
    code_file = tmp_path / "code"
    writes_75 = "import os, sys\nopen(os.environ['FT_EXIT_CODE_FILE'], 'w').write('75')\nsys.exit(1)\n"
    assert launch._run(_child(tmp_path, writes_75), {}, code_file) == 75
    assert launch._run(_child(tmp_path, "import sys\nsys.exit(2)\n"), {}, code_file) == 2  # stale file removed
    assert launch._run(_child(tmp_path, "pass\n"), {}, code_file) == 0


def test_sigterm_is_passed_on_to_the_trainer(tmp_path):
    """A preemption notice reaches the trainer, which checkpoints and exits 75 (here: a child that does)."""
    ready = tmp_path / "ready"
    body = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
            f"open({str(ready)!r}, 'w').close()\n"
            "time.sleep(60)\n")
    script = tmp_path / "launcher.py"
    script.write_text("import sys\nfrom pathlib import Path\nfrom trainer import launch\n"
                      f"sys.exit(launch._run([sys.executable, '-c', {body!r}], {{}}, Path({str(tmp_path / 'c')!r})))\n")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).resolve().parent.parent)
    for _ in range(200):
        if ready.exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 75
