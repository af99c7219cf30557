"""`ft launch` task building (validated by SkyPilot), SkyPilot's optimizer over the same small catalogs,
`ft launch --dry-run` end to end, and `ft fetch` from a store. Nothing is launched."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from jobs import launch, pricing
from trainer.errors import BadInput
from trainer.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def four_clouds(monkeypatch):
    """The cloud credential check is what is mocked, as SkyPilot's own tests do
    (tests/common.py: enable_all_clouds_in_monkeypatch): the optimizer sees the four clouds enabled."""
    from sky import clouds

    enabled = [clouds.AWS(), clouds.Lambda(), clouds.RunPod(), clouds.Vast()]
    monkeypatch.setattr("sky.check.get_cached_enabled_clouds_or_refresh", lambda *_a, **_k: enabled)
    monkeypatch.setattr("sky.check.check", lambda *_a, **_k: None)
    return enabled


def _spec(**over):
    data = {"name": "math", "model": {"base": "Qwen/Qwen2.5-7B-Instruct-not-cached", "dtype": "bfloat16"},
            "data": {"task": "math", "sft_train": "a.jsonl", "dpo_train": "b.jsonl", "grpo_train": "c.jsonl"},
            "finetune": {"method": "qlora"},
            "stages": [{"method": "sft", "max_steps": 100}, {"method": "dpo", "max_steps": 50},
                       {"method": "grpo", "max_steps": 20}],
            "store": {"uri": "s3://bucket/prefix"}, **over}
    return parse_spec(data)


def test_task_from_offers_is_ordered_by_price_and_valid(catalog):
    spec = _spec()
    offers = pricing.candidates_for_spec(spec)
    cfg = launch.build_task_config(spec, "s3://bucket/prefix/bundles/math-0123", "run-7", offers, stage="grpo",
                                   image="registry/ft-gpu:abc123")
    ordered = cfg["resources"]["ordered"]
    assert len(ordered) == min(launch.MAX_CANDIDATES, len({(o.cloud, o.region, o.accelerator, o.spot)
                                                           for o in offers}))
    prices = [o.price_per_hour for o in offers if o.price_per_hour is not None]
    assert ordered[0]["infra"] == f"{offers[0].cloud}/{offers[0].region}" and offers[0].price_per_hour == prices[0]
    assert all(not c["use_spot"] for c in ordered if c["infra"].startswith("lambda"))
    assert cfg["name"] == "ft-run-7" and cfg["envs"]["STAGE"] == "grpo" and cfg["envs"]["RUN_ID"] == "run-7"
    assert cfg["resources"]["image_id"] == "docker:registry/ft-gpu:abc123"
    task = launch.to_task(cfg)
    assert isinstance(task.resources, list) and len(task.resources) == len(ordered)  # `ordered` keeps the order
    assert task.envs["BUNDLE"] == "s3://bucket/prefix/bundles/math-0123"


def test_multi_node_task(catalog):
    spec = _spec(distributed={"strategy": "fsdp", "num_nodes": 2}, resources={"clouds": ["aws", "lambda"]})
    cfg = launch.build_task_config(spec, "s3://b/p/bundles/x", "r", pricing.candidates_for_spec(spec), image="i:1")
    assert cfg["num_nodes"] == 2
    assert all(c["infra"].split("/")[0] in ("aws", "lambda") for c in cfg["resources"]["ordered"])
    acc = yaml.safe_load(base64.b64decode(cfg["envs"]["FT_ACCELERATE_CONFIG"]))
    assert acc["distributed_type"] == "FSDP" and acc["num_machines"] == 2
    task = launch.to_task(cfg)
    assert task.num_nodes == 2


def test_no_catalog_keeps_yaml_candidates(monkeypatch):
    spec = _spec(resources={"clouds": ["aws", "runpod"], "use_spot": False})
    cfg = launch.build_task_config(spec, "s3://b/p/bundles/x", "r", [], image="i:1")
    assert [c["infra"] for c in cfg["resources"]["any_of"]] == ["aws", "runpod"]
    assert cfg["resources"]["use_spot"] is False
    launch.to_task(cfg)


def test_skypilot_optimizer_agrees_with_our_cheapest(catalog, four_clouds):
    """SkyPilot's optimizer, over the same catalog, picks the offer we rank first (by its hourly cost)."""
    from sky.utils import common

    import sky
    from sky import optimizer

    spec = _spec(stages=[{"method": "sft", "max_steps": 10}])
    offers = pricing.candidates_for_spec(spec)
    cfg = launch.build_task_config(spec, "s3://b/p/bundles/x", "r", offers, stage="sft", image="i:1")
    # any_of instead of ordered: let the optimizer choose freely among our candidates.
    cfg["resources"]["any_of"] = cfg["resources"].pop("ordered")
    task = launch.to_task(cfg)
    with sky.Dag() as dag:
        dag.add(task)
    optimizer.Optimizer.optimize(dag, minimize=common.OptimizeTarget.COST, quiet=True)
    best = task.best_resources
    assert str(best.cloud).lower() == offers[0].cloud
    assert best.get_cost(3600) == pytest.approx(offers[0].price_per_hour, rel=1e-6)


def _demo_job(tmp_path: Path) -> Path:
    """The demo spec as a cloud job: absolute data paths, a 7B base, an s3:// store."""
    demo = load_spec(REPO / "configs" / "demo.yaml")
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["data"] = {k: str((REPO / "configs" / v).resolve()) if k in demo.data.files() else v
                   for k, v in raw["data"].items()}
    raw["model"] = {"base": "Qwen/Qwen2.5-7B-Instruct-not-cached"}
    raw["store"] = {"uri": "s3://my-ft-bucket/llm-finetuning"}
    raw["distributed"] = {"strategy": "deepspeed_zero2"}
    raw.pop("prototype", None)
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    return spec_path


def test_launch_dry_run_cli(catalog, tmp_path):
    from jobs.cli import app

    spec_path = _demo_job(tmp_path)
    result = CliRunner().invoke(app, ["launch", str(spec_path), "--stage", "sft", "--dry-run", "--run-id", "r1",
                                      "--out", str(tmp_path / "bundles")])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.output[result.output.index("name: ft-r1"):])
    assert cfg["envs"]["BUNDLE"].startswith("s3://my-ft-bucket/llm-finetuning/bundles/demo-")
    assert cfg["envs"]["STAGE"] == "sft" and cfg["envs"]["FT_STRATEGY"] == "deepspeed_zero2"
    assert cfg["resources"]["ordered"] and cfg["resources"]["job_recovery"]["recover_on_exit_codes"] == [75]
    assert "est. $ job" in result.output
    assert list((tmp_path / "bundles").iterdir())  # the bundle was written (pushed only when launching)
    launch.to_task(cfg)


def test_gpus_cli_json_and_filters(catalog):
    from jobs.cli import app

    result = CliRunner().invoke(app, ["gpus", "--gpu", "A100-80GB", "--on-demand", "--clouds", "runpod",
                                      "--clouds", "vast", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and {r["cloud"] for r in rows} <= {"runpod", "vast"} and not any(r["spot"] for r in rows)
    assert rows[0]["price_per_hour"] == 1.2  # Vast's on-demand A100-80GB
    bad = CliRunner().invoke(app, ["gpus", "--clouds", "gcp"])
    assert bad.exit_code == 2


def test_fetch_from_local_store(tmp_path):
    store = tmp_path / "store"
    run = store / "runs" / "r1"
    for rel in ("run.json", "sft/final/adapter_model.safetensors", "sft/final/_COMPLETE", "sft/metrics.jsonl",
                "sft/checkpoints/100/optimizer.pt", "eval/results.json", "report/index.html"):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(rel)
    dest = launch.fetch("r1", str(store), tmp_path / "out")
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert "sft/final/adapter_model.safetensors" in got and "report/index.html" in got
    assert not any("checkpoints" in g for g in got)
    dest2 = launch.fetch(f"{store}/runs/r1", "unused", tmp_path / "out2", checkpoints=True)
    assert (dest2 / "sft/checkpoints/100/optimizer.pt").is_file()
    with pytest.raises(BadInput, match="nothing at"):  # exit 2: no such run in that store
        launch.fetch("nope", str(store), tmp_path / "out3")


# ------------------------------------------------------------------------- registry and docker login
DOCKER_LOGIN = {"SKYPILOT_DOCKER_USERNAME": "robot-user", "SKYPILOT_DOCKER_PASSWORD": "docker-pw-0123456789",
                "SKYPILOT_DOCKER_SERVER": "ghcr.io"}


@pytest.fixture
def no_local_secrets(monkeypatch):
    from jobs.images_ref import DOCKER_LOGIN as names
    from trainer.settings import SECRET_NAMES

    for name in (*SECRET_NAMES, *names, "FT_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_docker_login_names_are_skypilots():
    from sky.skylet import constants

    from jobs.images_ref import DOCKER_LOGIN, DOCKER_PASSWORD
    from trainer.settings import SECRET_NAMES

    assert set(DOCKER_LOGIN) == constants.DOCKER_LOGIN_ENV_VARS
    assert DOCKER_PASSWORD in SECRET_NAMES  # masked in every message


def test_registry_setting_names_the_image(catalog, no_local_secrets):
    from images.tags import image_tag

    spec, tag = _spec(), image_tag("gpu")
    cfg = launch.build_task_config(spec, "s3://b/p/bundles/x", "r", [])
    assert cfg["resources"]["image_id"] == f"docker:ghcr.io/llm-finetuning/ft-gpu:{tag}"  # the default
    no_local_secrets.setenv("FT_REGISTRY", "registry.example.com:5000/team/")
    cfg = launch.build_task_config(spec, "s3://b/p/bundles/x", "r", [])
    assert cfg["resources"]["image_id"] == f"docker:registry.example.com:5000/team/ft-gpu:{tag}"
    cfg = launch.build_task_config(spec, "s3://b/p/bundles/x", "r", [], registry="123456789012.dkr.ecr."
                                   "us-east-1.amazonaws.com")  # --registry wins over FT_REGISTRY
    image = next(iter(launch.to_task(cfg).resources)).extract_docker_image()
    assert image == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ft-gpu:{tag}"
    for bad in ("https://ghcr.io/me", "ghcr.io/Me", "ghcr.io/me:tag"):
        no_local_secrets.setenv("FT_REGISTRY", bad)
        with pytest.raises(BadInput, match="FT_REGISTRY"):
            launch.build_task_config(spec, "s3://b/p/bundles/x", "r", [])


def test_docker_login_travels_as_skypilot_secrets(catalog, no_local_secrets):
    """A private registry: SkyPilot attaches the login to every candidate (its own parsing); the
    values are secrets, never in the task's YAML; a partial set or another server is refused first."""
    for name, value in {**DOCKER_LOGIN, "HF_TOKEN": "hf_secret_value_1"}.items():
        no_local_secrets.setenv(name, value)
    spec = _spec()
    cfg = launch.build_task_config(spec, "s3://b/p/bundles/x", "r", pricing.candidates_for_spec(spec),
                                   registry="ghcr.io/me")
    secrets = launch.local_secrets(cfg)
    assert secrets == {**DOCKER_LOGIN, "HF_TOKEN": "hf_secret_value_1"}
    task = launch.to_task(cfg, secrets)
    assert set(DOCKER_LOGIN) <= set(task.secrets) and not set(DOCKER_LOGIN) & set(task.envs)
    for r in task.resources:
        login = r.docker_login_config
        assert login is not None and login.server == "ghcr.io" and login.username == "robot-user"
        assert r.extract_docker_image().startswith("ghcr.io/me/ft-gpu:")
    dumped = yaml.safe_dump(cfg)
    assert not any(v in dumped for v in (*DOCKER_LOGIN.values(), "hf_secret_value_1") if v != "ghcr.io")
    with pytest.raises(BadInput, match="is on quay.io"):  # SkyPilot would pull ghcr.io/quay.io/me/…
        launch.local_secrets({**cfg, "resources": {**cfg["resources"], "image_id": "docker:quay.io/me/ft-gpu:1"}})
    no_local_secrets.delenv("SKYPILOT_DOCKER_SERVER")
    with pytest.raises(BadInput, match="SKYPILOT_DOCKER_SERVER not set") as refused:
        launch.local_secrets(cfg)
    assert "docker-pw" not in str(refused.value)
    no_local_secrets.delenv("SKYPILOT_DOCKER_USERNAME")
    no_local_secrets.delenv("SKYPILOT_DOCKER_PASSWORD")
    assert launch.local_secrets(cfg) == {"HF_TOKEN": "hf_secret_value_1"}  # a public registry: no login
    assert all(r.docker_login_config is None for r in launch.to_task(cfg, launch.local_secrets(cfg)).resources)


def test_launch_dry_run_shows_the_registry_from_dotenv(catalog, tmp_path, no_local_secrets):
    """FT_REGISTRY from `.env` reaches the printed task; the secrets are named, their values never shown."""
    from images.tags import image_tag
    from jobs.cli import app

    spec_path = _demo_job(tmp_path)
    work = tmp_path / "cwd"
    work.mkdir()
    (work / ".env").write_text("FT_REGISTRY=ghcr.io/me\n" + "".join(f"{k}={v}\n" for k, v in DOCKER_LOGIN.items()))
    no_local_secrets.chdir(work)
    for name in ("FT_REGISTRY", *DOCKER_LOGIN):  # what load_dotenv sets is removed after the test
        no_local_secrets.setenv(name, "")
        no_local_secrets.delenv(name)
    no_local_secrets.setenv("WANDB_API_KEY", "wandb-value-0123456789")
    args = ["launch", str(spec_path), "--stage", "sft", "--dry-run", "--run-id", "r2", "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.output[result.output.index("name: ft-r2"):])
    assert cfg["resources"]["image_id"] == f"docker:ghcr.io/me/ft-gpu:{image_tag('gpu')}"
    assert "registry: FT_REGISTRY" in result.output
    assert "SKYPILOT_DOCKER_PASSWORD" in result.output and "WANDB_API_KEY" in result.output
    assert "docker-pw-0123456789" not in result.output and "wandb-value-0123456789" not in result.output
    assert "robot-user" not in result.output
    # --registry wins over .env; a bad one is refused before anything is frozen
    bad = CliRunner().invoke(app, [*args, "--registry", "https://ghcr.io/me"])
    assert bad.exit_code == 2 and "--registry" in bad.output and "scheme" in bad.output
