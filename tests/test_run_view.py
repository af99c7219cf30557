"""The live view of a run from the store (issue 16): `ft runs`, `ft status RUN [--watch] [--json]`,
`ft logs RUN`.

Real: the store (local folders, and moto_server over HTTP for S3), run.json written through `Run` with
the trainer's own bill functions (`trainer.cost.open_attempt`/`touch_attempt`), metrics.jsonl rows as
the MetricsCallback writes them, checkpoint markers, the run's lease, the `ft` app and its error
boundary. Mocked, because it cannot exist here: the cloud API behind SkyPilot's SDK (`sky.get`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs import run_view
from trainer import cost
from trainer.run import Run
from trainer.store import MARKER, open_store

NOW = 1_750_000_000.0
SPEC = {"name": "demo", "stages": [{"name": "sft", "method": "sft", "max_steps": 40},
                                   {"name": "dpo", "method": "dpo", "max_steps": 100},
                                   {"name": "grpo", "method": "grpo", "max_steps": -1}]}
PRICED = {"cloud": "runpod", "region": "US", "zone": None, "nodes": 1, "gpus_per_node": 1}


def _app():
    from jobs.cli import app

    return app


def ft(*argv: str):
    result = CliRunner().invoke(_app(), list(argv))
    assert "Traceback" not in result.output, result.output
    return result


class RunBuilder:
    """A run in a real store, written the way the trainer writes it."""

    def __init__(self, store_uri: str, run_id: str, spec: dict | None = None):
        self.run = Run(store_uri, run_id)
        self.record = {"run_id": run_id, "bundle_id": "b" * 64, "bundle_uri": "/b", "spec": spec or SPEC,
                       "stages": {}, "created_at": "2025-06-15T10:00:00"}

    def stage(self, name: str, status: str, started: float, seen: float, price: float | None = None,
              steps: int | None = None, instance: cost.Instance | None = None) -> RunBuilder:
        method = next(s["method"] for s in self.record["spec"]["stages"] if s["name"] == name)
        entry = self.record["stages"].setdefault(name, {"status": "running", "method": method})
        cost.open_attempt(entry, instance, price, now=started)
        cost.touch_attempt(entry, now=seen)
        entry["status"] = status
        if status == "done":
            entry.update(final=self.run.final(name), steps=steps, seconds=round(seen - started, 1))
        return self

    def metrics(self, name: str, rows: list[dict]) -> RunBuilder:
        text = "".join(json.dumps({"stage": name, **r}) + "\n" for r in rows)
        self.run.store.write_text(self.run.metrics(name), text)
        return self

    def checkpoint(self, name: str, step: int, written: float | None = None, max_steps: int | None = None,
                   complete: bool = True) -> RunBuilder:
        key = self.run.checkpoint(name, step)
        self.run.store.write_text(f"{key}/trainer_state.json",
                                  json.dumps({"global_step": step, "max_steps": max_steps or 0}))
        if complete:
            self.run.store.write_text(f"{key}/{MARKER}", "")
            if written is not None and str(self.run.store_uri)[:5] != "s3://":
                os.utime(Path(self.run.store_uri) / key / MARKER, (written, written))
        return self

    def lease(self, expires_at: float, holder: str = "vm-1:42:abcd") -> RunBuilder:
        self.run.store.write_text(self.run.lease, json.dumps({"holder": holder, "expires_at": expires_at, "ttl": 90}))
        return self

    def write(self) -> Run:
        self.run.write_record(self.record)
        return Run(self.run.store_uri, self.run.run_id)


def _rows(first: int, last: int, every: int, step_time: float, key: str = "loss") -> list[dict]:
    return [{"step": s, "epoch": s / 100, key: 2.0 - s / 100, "learning_rate": 1e-5, "step_time": step_time}
            for s in range(first, last + 1, every)]


def _three_stage_run(store: str, run_id: str = "r1", lease: float | None = NOW + 60) -> Run:
    b = (RunBuilder(store, run_id)
         .stage("sft", "done", NOW - 3000, NOW - 2000, steps=40)
         .metrics("sft", _rows(10, 40, 10, 0.5) + [{"step": 40, "train_loss": 1.7, "train_runtime": 20.0,
                                                    "final": True}])
         .stage("dpo", "running", NOW - 1900, NOW - 120)
         .metrics("dpo", _rows(5, 60, 5, 2.0))
         .checkpoint("dpo", 30, written=NOW - 900).checkpoint("dpo", 60, written=NOW - 120)
         .checkpoint("dpo", 70, complete=False))  # an upload cut off: no marker, never counted
    if lease is not None:
        b.lease(lease)
    return b.write()


# ----------------------------------------------------------------------------- run_status
def test_a_running_run_per_stage(tmp_path):
    run = _three_stage_run(str(tmp_path / "store"))
    view = run_view.run_status(run, now=NOW)
    assert view.state == "running" and not view.finished
    assert view.trainer.alive and view.trainer.holder == "vm-1:42:abcd"
    assert view.started == "2025-06-15T14:16:40Z"  # the first attempt's start, in UTC
    assert view.cost_usd == 0.0  # a local run costs nothing
    sft, dpo, grpo = view.stages
    assert (sft.state, sft.step, sft.max_steps, sft.loss) == ("done", 40, 40, 1.6)
    assert sft.steps_per_s == pytest.approx(2.0) and sft.eta_s is None
    assert dpo.state == "running" and (dpo.step, dpo.max_steps) == (60, 100)
    assert dpo.loss == pytest.approx(1.4) and dpo.reward is None
    assert dpo.steps_per_s == pytest.approx(0.5) and "step_time" in dpo.rate_basis
    assert dpo.eta_s == pytest.approx(80.0)  # 40 steps left at 0.5 steps/s
    assert dpo.last_checkpoint == 60 and dpo.checkpoint_age_s == pytest.approx(120, abs=1)
    assert dpo.checkpoint_age_basis.startswith("store time")
    assert (grpo.state, grpo.step, grpo.last_checkpoint) == ("not started", None, None)


@pytest.mark.parametrize("lease", [None, NOW - 5])  # no lease, or one its holder stopped renewing
def test_a_running_stage_without_a_live_trainer_is_interrupted(tmp_path, lease):
    view = run_view.run_status(_three_stage_run(str(tmp_path / "store"), lease=lease), now=NOW)
    assert view.state == "interrupted" and view.stages[1].state == "interrupted"
    assert (view.trainer is None) == (lease is None)
    if lease is not None:
        assert not view.trainer.alive and view.trainer.expires_in_s == pytest.approx(-5)


def test_done_stopped_at_budget_and_not_started(tmp_path):
    store = str(tmp_path / "store")
    spec = {"name": "x", "stages": [{"name": "sft", "method": "sft", "max_steps": 4}]}
    done = RunBuilder(store, "done", spec).stage("sft", "done", NOW - 100, NOW - 10, steps=4).write()
    view = run_view.run_status(done, now=NOW)
    assert view.state == "done" and view.finished and view.stages[0].step == 4
    assert view.stages[0].steps_per_s == pytest.approx(4 / 90) and "seconds" in view.stages[0].rate_basis

    stopped = (RunBuilder(store, "broke", spec).stage("sft", "stopped_budget", NOW - 3600, NOW - 60, price=2.0,
                                                      instance=cost.Instance(**PRICED))
               .checkpoint("sft", 2).write())
    view = run_view.run_status(stopped, now=NOW)
    assert view.state == "stopped_budget" and view.finished
    assert view.cost_usd == pytest.approx(1.9667, abs=1e-3)  # 3540 s at $2/h
    assert view.stages[0].step == 2 and view.stages[0].cost_usd == pytest.approx(1.9667, abs=1e-3)

    fresh = RunBuilder(store, "fresh", spec).write()
    view = run_view.run_status(fresh, now=NOW)
    assert view.state == "not started" and view.stages[0].state == "not started" and view.cost_usd is None


def test_between_stages_with_a_live_trainer_is_running_and_without_it_incomplete(tmp_path):
    store = str(tmp_path / "store")
    b = RunBuilder(store, "r").stage("sft", "done", NOW - 100, NOW - 50, steps=40)
    assert run_view.run_status(b.write(), now=NOW).state == "incomplete"
    assert run_view.run_status(b.lease(NOW + 30).write(), now=NOW).state == "running"


def test_an_epoch_bound_stage_takes_max_steps_from_its_checkpoint_and_rate_from_seconds(tmp_path):
    store = str(tmp_path / "store")
    run = (RunBuilder(store, "r").stage("sft", "done", NOW - 100, NOW - 50, steps=40)
           .stage("dpo", "done", NOW - 50, NOW - 40, steps=100)
           .stage("grpo", "running", NOW - 1000, NOW - 200)
           .metrics("grpo", [{"step": 10, "reward_mean": 0.25}, {"step": 20, "reward_mean": 0.5}])
           .checkpoint("grpo", 20, max_steps=120).lease(NOW + 10).write())
    grpo = run_view.run_status(run, now=NOW).stages[2]
    assert (grpo.step, grpo.max_steps, grpo.reward) == (20, 120, 0.5)
    assert grpo.steps_per_s == pytest.approx(20 / 800) and grpo.eta_s == pytest.approx(100 / (20 / 800))


def test_a_cloud_run_whose_price_was_not_passed_costs_unknown_not_zero(tmp_path):
    run = RunBuilder(str(tmp_path / "s"), "r").stage("sft", "running", NOW - 10, NOW,
                                                     instance=cost.Instance(**PRICED)).write()
    assert run_view.run_status(run, now=NOW).cost_usd is None


def test_checkpoint_age_falls_back_to_the_bill_when_the_store_gives_no_time(tmp_path, monkeypatch):
    run = _three_stage_run(str(tmp_path / "store"))
    monkeypatch.setattr(run_view, "modified", lambda store, key: None)  # a store that tells no times
    dpo = run_view.run_status(run, now=NOW).stages[1]
    assert dpo.checkpoint_age_s == pytest.approx(120) and dpo.checkpoint_age_basis.startswith("run.json bill")


def test_a_cut_last_metrics_line_is_skipped(tmp_path):
    run = _three_stage_run(str(tmp_path / "store"))
    text = run.store.read_text(run.metrics("dpo"))
    run.store.write_text(run.metrics("dpo"), text + '{"step": 65, "lo')  # preempted mid-write
    assert run_view.run_status(run, now=NOW).stages[1].step == 60


# --------------------------------------------------------------------------------- list_runs
def test_list_runs_newest_first_with_current_stage_and_step(tmp_path):
    store_uri = str(tmp_path / "store")
    _three_stage_run(store_uri, "older", lease=None)
    spec = {"name": "x", "stages": [{"name": "sft", "method": "sft", "max_steps": 4}]}
    RunBuilder(store_uri, "newer", spec).stage("sft", "done", NOW + 100, NOW + 200, steps=4).write()
    (tmp_path / "store" / "runs" / "no-record" / "sft").mkdir(parents=True)  # a folder without run.json
    (tmp_path / "store" / "runs" / "broken").mkdir()
    (tmp_path / "store" / "runs" / "broken" / "run.json").write_text("{not json")
    rows = run_view.list_runs(open_store(store_uri), now=NOW)
    by_id = {r.run_id: r for r in rows}
    assert [r.run_id for r in rows][:2] == ["newer", "older"] and "no-record" not in by_id
    older = by_id["older"]
    assert (older.state, older.stages_done, older.stages_total) == ("interrupted", 1, 3)
    assert (older.current_stage, older.step, older.max_steps) == ("dpo", 60, 100)
    newer = by_id["newer"]
    assert (newer.state, newer.current_stage, newer.step, newer.cost_usd) == ("done", "sft", 4, 0.0)
    assert by_id["broken"].state == "unreadable run.json"


def test_list_runs_and_status_over_s3(s3_env):
    store_uri = f"{s3_env}/ft"
    run = _three_stage_run(store_uri)
    rows = run_view.list_runs(open_store(store_uri), now=NOW)
    assert [(r.run_id, r.state, r.step) for r in rows] == [("r1", "running", 60)]
    import time

    dpo = run_view.run_status(run, now=time.time()).stages[1]
    assert dpo.checkpoint_age_basis.startswith("store time") and dpo.checkpoint_age_s < 120


# ------------------------------------------------------------------------------------- watch
def test_watch_stops_when_finished_or_after_max_iterations():
    pauses: list[float] = []
    answers = iter([False, False, True])
    assert run_view.watch(lambda: next(answers), 7, sleep=pauses.append) == 3 and pauses == [7, 7]
    assert run_view.watch(lambda: False, 1, sleep=pauses.append, max_iterations=2) == 2


# -------------------------------------------------------------------------------------- CLI
def test_ft_runs_table_json_and_an_empty_store(tmp_path):
    store = str(tmp_path / "store")
    _three_stage_run(store)
    table = ft("runs", "--store", store)
    assert table.exit_code == 0, table.output
    assert "r1" in table.output and "1/3" in table.output and "dpo" in table.output and "60/100" in table.output
    rows = json.loads(ft("runs", "--store", store, "--json").output)
    assert rows[0]["run_id"] == "r1" and rows[0]["current_stage"] == "dpo" and rows[0]["cost_usd"] == 0.0
    empty = ft("runs", "--store", str(tmp_path / "nothing"))
    assert empty.exit_code == 0 and "no runs in" in empty.output


def test_ft_status_run_json_and_table(tmp_path):
    store = str(tmp_path / "store")
    _three_stage_run(store, lease=None)
    data = json.loads(ft("status", "r1", "--store", store, "--json", "--no-job").output)
    assert data["state"] == "interrupted" and data["job"] is None
    dpo = data["stages"][1]
    assert dpo["step"] == 60 and dpo["max_steps"] == 100 and dpo["last_checkpoint"] == 60
    assert dpo["eta_s"] == pytest.approx(80.0) and dpo["checkpoint_age_basis"]
    table = ft("status", f"{store}/runs/r1", "--no-job")  # a STORE/runs/ID reference needs no --store
    assert table.exit_code == 0, table.output
    for text in ("run r1", "interrupted", "60/100", "1.4000", "checkpoint age: store time"):
        assert text in table.output, table.output


@pytest.mark.parametrize("argv", [["status", "nope"], ["status", "../escape"], ["status", "a/b"]])
def test_ft_status_of_a_missing_or_malformed_run_is_bad_input(tmp_path, argv):
    result = ft(*argv, "--store", str(tmp_path / "store"), "--no-job")
    assert result.exit_code == 2, result.output
    assert "error:" in result.output


def test_ft_status_watch_refreshes_until_the_run_is_done(tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    spec = {"name": "x", "stages": [{"name": "sft", "method": "sft", "max_steps": 4}]}
    builder = RunBuilder(store, "w", spec).stage("sft", "running", NOW - 10, NOW).lease(NOW + 1e9)
    builder.write()
    pauses: list[float] = []

    def pause(seconds: float) -> None:  # the clock: between two refreshes the stage finishes
        pauses.append(seconds)
        builder.record["stages"]["sft"].update(status="done", steps=4, seconds=10.0)
        builder.write()

    monkeypatch.setattr(run_view, "SLEEP", pause)
    result = ft("status", "w", "--store", store, "--watch", "--interval", "3", "--json", "--no-job")
    assert result.exit_code == 0, result.output
    states = [json.loads(line)["state"] for line in result.output.splitlines() if line.startswith("{")]
    assert states == ["running", "done"] and pauses == [3.0]


def test_ft_status_watch_ctrl_c_is_a_clean_exit(tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    _three_stage_run(store)

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_view, "SLEEP", interrupted)
    result = ft("status", "r1", "--store", store, "--watch", "--no-job")
    assert result.exit_code == 0 and "stopped watching" in result.output


def test_ft_status_run_with_skypilots_view_or_without_it(tmp_path, monkeypatch):
    import sky
    from sky import exceptions

    store = str(tmp_path / "store")
    _three_stage_run(store)
    monkeypatch.setattr(sky.jobs, "queue", lambda **_k: "request-q")
    monkeypatch.setattr(sky, "get", lambda _r: ([{"job_id": 7, "job_name": "ft-r1", "status": "RECOVERING",
                                                  "recovery_count": 2}], 1, {}, 1))
    known = ft("status", "r1", "--store", store)
    assert known.exit_code == 0 and "managed job: RECOVERING (2 recoveries), job id 7" in known.output

    def down(_request):
        raise exceptions.ApiServerConnectionError("http://127.0.0.1:46580")

    monkeypatch.setattr(sky, "get", down)
    offline = ft("status", "r1", "--store", store, "--json")
    assert offline.exit_code == 0, offline.output
    job = json.loads(offline.output)["job"]
    assert job.startswith("job state unknown:") and "ApiServerConnectionError" in job
    monkeypatch.setattr(sky, "get", lambda _r: ([], 0, {}, 0))
    assert "no managed job ft-r1" in ft("status", "r1", "--store", store).output
    assert ft("status", "--watch").exit_code == 2  # --watch needs a run


def test_ft_logs_says_why_it_cannot(tmp_path, monkeypatch):
    import sky
    from sky import exceptions

    store = str(tmp_path / "store")
    _three_stage_run(store)
    monkeypatch.setattr(sky.jobs, "queue", lambda **_k: "request-q")
    monkeypatch.setattr(sky, "get", lambda _r: ([], 0, {}, 0))
    local = ft("logs", "r1", "--store", store)
    assert local.exit_code == 2 and "no managed job ft-r1" in local.output
    assert "the store has run r1" in local.output and "ft status r1" in local.output
    unknown = ft("logs", "nope", "--store", store)
    assert unknown.exit_code == 2 and "nor does the store show it" in unknown.output
    assert ft("logs", "../x").exit_code == 2

    def down(_request):
        raise exceptions.ApiServerConnectionError("http://127.0.0.1:46580")

    monkeypatch.setattr(sky, "get", down)
    result = ft("logs", "r1", "--store", store)
    assert result.exit_code == 75 and "ApiServerConnectionError" in result.output


def test_a_store_out_of_reach_or_missing_is_one_line_and_its_exit_code(tmp_path, s3_env, monkeypatch):
    missing = ft("runs", "--store", "s3://no-such-bucket-here/ft")
    assert missing.exit_code == 2 and "no-such-bucket-here" in missing.output
    assert ft("status", "r1", "--store", "s3:/typo", "--no-job").exit_code == 2
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("FT_STORE_TIMEOUT_S", "2")
    for argv in (["runs", "--store", f"{s3_env}/ft"], ["status", "r1", "--store", f"{s3_env}/ft", "--no-job"]):
        result = ft(*argv)
        assert result.exit_code == 75, result.output
        assert "unreachable" in result.output and len(result.output.strip().splitlines()) == 1
