"""`ft run BUNDLE --docker`: run a bundle in the GPU image on this machine, exactly as a cloud VM would.

`run_request` builds the docker SDK's `containers.run` keyword arguments; `format_docker_command`
prints the same thing as a `docker run …` line (`--dry-run`); `run_in_docker` runs it, streams the
logs and returns the trainer's exit code (0 ok, 2 bad input, 75 retryable).

- The bundle folder is mounted read-only at /bundle (a bundle is never modified); an `s3://` bundle
  URI is passed as it is and the trainer downloads it.
- Outputs go to the store: a local store folder is mounted read-write at /store (FT_STORE=/store);
  an `s3://` store is reached with the credentials below.
- Credentials go in by name only: values are read from this process's environment when the request
  is made and handed to the docker API; they are never on a command line (the dry run prints
  `-e NAME`, which docker itself fills from the environment) and never in the image.
- The container runs as the caller's uid:gid, so files in a local store stay theirs; as root on the
  host it runs as the image's own non-root user (1000:1000).

The docker SDK is imported inside the functions that talk to the daemon: `import images` stays light.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainer import settings
from trainer.errors import BadInput
from trainer.settings import SECRET_NAMES

# Passed by name only, never printed: the secrets the trainer uses (the registry password is SkyPilot's,
# not the container's) and the S3 endpoint, which may name a private host.
CREDENTIALS = (*(n for n in SECRET_NAMES if n != "SKYPILOT_DOCKER_PASSWORD"), "AWS_ENDPOINT_URL")
# Not secret, but the container needs them to reach the same store and region as this machine.
PASSTHROUGH = ("AWS_DEFAULT_REGION", "AWS_REGION")
BUNDLE_MOUNT = "/bundle"
STORE_MOUNT = "/store"
HF_CACHE_MOUNT = "/cache/huggingface"
HF_CACHE_VOLUME = "ft-hf-cache"  # a named volume: downloaded base models survive between runs
IMAGE_USER = "1000:1000"
SHM_SIZE = "16g"  # PyTorch DataLoader workers and NCCL use /dev/shm; docker's default 64 MB is too small
SPEC_FILE = "spec.yaml"
MANIFEST = "manifest.json"


class DockerRunError(BadInput):
    """The bundle, the store, --gpus or the docker daemon is not usable as given."""


def _is_uri(value: str) -> bool:
    return "://" in value and not value.startswith("file://")


def _local_path(value: str) -> Path:
    return Path(value.removeprefix("file://")).expanduser().resolve()


def _bundle_store_uri(bundle: Path) -> str:
    """The store URI the bundle's spec names (validated by the very model the trainer uses)."""
    import yaml

    from trainer.spec import parse_spec

    text = (bundle / SPEC_FILE).read_text(encoding="utf-8")
    return parse_spec(yaml.safe_load(text), str(bundle / SPEC_FILE), text).store.uri


def _nvidia_smi_gpus(environ: Mapping[str, str]) -> tuple[int | None, str]:
    """(GPUs `nvidia-smi -L` lists, how it went); None when there is no nvidia-smi on the PATH."""
    import subprocess

    exe = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if exe is None:
        return None, "no nvidia-smi"
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30,
                              env={**environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return 0, f"nvidia-smi -L failed ({type(e).__name__})"
    if done.returncode != 0:
        first = next((ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()), "")
        return 0, f"nvidia-smi -L failed: {first[:160]}" if first else "nvidia-smi -L failed"
    return sum(1 for ln in done.stdout.splitlines() if ln.startswith("GPU ")), "nvidia-smi -L"


def _docker_info_gpus(info: Mapping[str, Any]) -> tuple[int | None, str]:
    """(GPUs the daemon offers, how known) from docker's info: CDI devices named nvidia.com/gpu=N
    (Docker 25+), else an nvidia runtime (a count it does not give: None); (0, …) for neither."""
    cdi = {d.get("ID", "") for d in info.get("DiscoveredDevices") or [] if isinstance(d, Mapping)}
    gpus = [d for d in cdi if d.startswith("nvidia.com/gpu=") and not d.endswith("=all")]
    if gpus:
        return len(gpus), "docker info: CDI devices"
    if "nvidia" in (info.get("Runtimes") or {}):
        return None, "docker info: nvidia runtime"
    return 0, "docker info: no GPU runtime or device"


def _daemon_info() -> Mapping[str, Any] | None:
    try:
        import docker
        from docker.errors import DockerException

        try:
            return docker.from_env(timeout=10).info()
        except DockerException:
            return None
    except ImportError:
        return None


def default_devices(environ: Mapping[str, str] | None = None,
                    docker_info: Mapping[str, Any] | None = None) -> tuple[str | None, str]:
    """`--devices` when none is given: `all` when the docker host has GPUs, None (run on the CPU) when it
    has none, with a line saying which and how it was found. The host is this machine (`nvidia-smi -L`;
    docker's info when there is no nvidia-smi), or only docker's info for a remote daemon (DOCKER_HOST
    not a unix socket). `docker_info` stands in for the daemon's answer (tests); None asks the daemon."""
    env = dict(os.environ if environ is None else environ)
    host = env.get("DOCKER_HOST") or ""
    remote = bool(host) and not host.startswith(("unix://", "npipe://"))
    count, how = (None, "remote docker daemon") if remote else _nvidia_smi_gpus(env)
    if count is None:  # no nvidia-smi here (or a remote daemon): ask docker
        info = _daemon_info() if docker_info is None else docker_info
        if info is not None:
            count, how = _docker_info_gpus(info)
            if count is None:
                return "all", f"using all GPUs ({how}); --devices 0,1 for some, none for the CPU"
        else:
            count, how = 0, f"{how}, docker daemon not reachable"
    if count:
        return "all", (f"using all {count} GPU{'s' if count > 1 else ''} ({how}); --devices 0,1 for some, "
                       "none for the CPU")
    return None, (f"no GPU found on this host ({how}): the GPU image runs on the CPU, slowly; "
                  "--devices all asks docker for GPUs anyway")


def _device_requests(gpus: str) -> list[Any]:
    """`--gpus` values as docker takes them: `all`, a count (`2`), or ids (`0,1` or `device=0,1`)."""
    from docker.types import DeviceRequest

    value = gpus.strip().strip('"')
    if value == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if value.isdigit():
        if int(value) == 0:  # docker's count 0: no GPU at all, never what `--devices 0` means
            raise DockerRunError(f"--gpus {gpus!r} is a count of zero GPUs: device=0 for the first GPU, none for "
                                 "the CPU")
        return [DeviceRequest(count=int(value), capabilities=[["gpu"]])]
    ids = [i.strip() for i in value.removeprefix("device=").split(",") if i.strip()]
    if not ids:
        raise DockerRunError(f"--gpus {gpus!r}: expected all, a count, or device ids like 0,1")
    return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def _user() -> str:
    uid, gid = os.getuid(), os.getgid()
    return IMAGE_USER if uid == 0 else f"{uid}:{gid}"


def _needs_host_network(environ: Mapping[str, str]) -> bool:
    # An S3 endpoint on this machine's loopback (MinIO, moto) is unreachable from a bridged container.
    host = urlparse(environ.get("AWS_ENDPOINT_URL", "")).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1")


def run_request(
    bundle_path_or_uri: str | Path,
    gpus: str | None = None,
    *,
    image: str | None = None,
    stage: str | None = None,
    run_id: str | None = None,
    store: str | None = None,
    hf_cache: str | None = HF_CACHE_VOLUME,
    name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The `docker.containers.run(**request)` arguments that run the bundle in the GPU image.

    `store` (or FT_STORE in the environment) overrides the bundle spec's `store.uri`; `image` defaults
    to the content-addressed tag of Dockerfile.gpu; `hf_cache` names a volume (or host folder) kept at
    the image's HF cache, None for none; `gpus` is docker's --gpus value, None or `none` to run without
    GPUs (`ft run --docker` passes `default_devices()` when --devices is not given).
    `environ` stands in for this process's environment (tests).
    """
    env_in = dict(os.environ if environ is None else environ)
    override = store or (settings.store() if environ is None else env_in.get("FT_STORE") or None)
    bundle_arg, store_uri, volumes, labels = _bundle_mount(str(bundle_path_or_uri), override)
    environment = _store_mount(store_uri, override, volumes)
    if hf_cache:
        source = hf_cache if "/" not in hf_cache else str(_local_path(hf_cache))
        volumes[source] = {"bind": HF_CACHE_MOUNT, "mode": "rw"}
    environment.update({key: env_in[key] for key in (*CREDENTIALS, *PASSTHROUGH) if env_in.get(key)})
    command = ["run", bundle_arg]
    if stage:
        command += ["--stage", stage]
    if run_id:
        command += ["--run-id", run_id]
    if image is None:
        from images.tags import image_ref

        image = image_ref("gpu")
    request: dict[str, Any] = {"image": image, "command": command, "user": _user(), "volumes": volumes,
                               "environment": environment, "labels": labels, "shm_size": SHM_SIZE, "detach": True}
    request.update(_host_options(gpus, env_in))
    if name:
        request["name"] = name
    return request


def _bundle_mount(target: str, store_override: str | None) -> tuple[str, str | None, dict[str, dict[str, str]],
                                                                       dict[str, str]]:
    """(the trainer's bundle argument, the store URI, volumes, labels) for a bundle folder or URI."""
    if _is_uri(target):  # passed as it is: the trainer downloads it and reads the store from its spec
        return target, store_override, {}, {"ft.bundle": target}
    bundle = _local_path(target)
    if not (bundle / MANIFEST).is_file() or not (bundle / SPEC_FILE).is_file():
        raise DockerRunError(f"{bundle}: not a bundle folder (no {MANIFEST} / {SPEC_FILE}); "
                             "export one with `ft bundle`")
    volumes = {str(bundle): {"bind": BUNDLE_MOUNT, "mode": "ro"}}
    return BUNDLE_MOUNT, store_override or _bundle_store_uri(bundle), volumes, {"ft.bundle": bundle.name}


def _store_mount(store_uri: str | None, store_override: str | None,
                 volumes: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's FT_STORE, mounting a local store folder into `volumes`."""
    if store_uri and not _is_uri(store_uri):
        # A local store: relative paths are relative to where `ft run` is started, as for --local.
        volumes[str(_local_path(store_uri))] = {"bind": STORE_MOUNT, "mode": "rw"}
        return {"FT_STORE": STORE_MOUNT}
    return {"FT_STORE": store_override} if store_override else {}


def _host_options(gpus: str | None, env_in: Mapping[str, str]) -> dict[str, Any]:
    """GPUs, their ulimits and the network mode."""
    options: dict[str, Any] = {}
    if gpus and gpus.strip() != "none":
        from docker.types import Ulimit

        options["device_requests"] = _device_requests(gpus)
        # NVIDIA's recommended limits for PyTorch on GPUs: pinned host memory, deep CUDA graph stacks.
        # Only with GPUs: a daemon without CAP_SYS_RESOURCE (rootless, nested) refuses them.
        options["ulimits"] = [Ulimit(name="memlock", soft=-1, hard=-1),
                              Ulimit(name="stack", soft=67108864, hard=67108864)]
    if _needs_host_network(env_in):
        options["network_mode"] = "host"
    return options


def format_docker_command(request: Mapping[str, Any]) -> str:
    """The `docker run …` line equivalent to `request`, with credentials as `-e NAME` (never values)."""
    args = ["docker", "run", "--rm"]
    if request.get("name"):
        args += ["--name", request["name"]]
    if request.get("user"):
        args += ["--user", request["user"]]
    for dr in request.get("device_requests") or []:
        ids, count = dr.get("DeviceIDs"), dr.get("Count")
        args += ["--gpus", f'"device={",".join(ids)}"' if ids else ("all" if count == -1 else str(count))]
    if request.get("network_mode"):
        args += ["--network", request["network_mode"]]
    if request.get("shm_size"):
        args += ["--shm-size", str(request["shm_size"])]
    for u in request.get("ulimits") or []:
        args += ["--ulimit", f"{u['Name']}={u['Soft']}" if u["Soft"] == u["Hard"] else
                 f"{u['Name']}={u['Soft']}:{u['Hard']}"]
    for source, mount in (request.get("volumes") or {}).items():
        args += ["-v", f"{source}:{mount['bind']}:{mount.get('mode', 'rw')}"]
    for key, value in (request.get("environment") or {}).items():
        args += ["-e", key if key in CREDENTIALS else f"{key}={value}"]
    for key, value in (request.get("labels") or {}).items():
        args += ["--label", f"{key}={value}"]
    args.append(request["image"])
    args += list(request.get("command") or [])
    # shlex keeps the inner quotes of --gpus '"device=0,1"', which docker's own parser needs.
    return " ".join(shlex.quote(a) for a in args)


def _can_read(path: Path, uid: int, gid: int) -> bool:
    st = path.stat()
    need = 0o5 if path.is_dir() else 0o4  # folders need r and x
    if st.st_uid == uid:
        return st.st_mode >> 6 & need == need
    if st.st_gid == gid:
        return st.st_mode >> 3 & need == need
    return st.st_mode & need == need


def _check_bundle_readable(request: Mapping[str, Any]) -> None:
    """Fail here, with the fix, rather than with a PermissionError inside the container: a bundle
    written by root into a private (0700) folder cannot be read by the image's non-root user."""
    uid, gid = (int(x) for x in str(request.get("user") or IMAGE_USER).split(":"))
    for source, mount in (request.get("volumes") or {}).items():
        if mount["bind"] != BUNDLE_MOUNT:
            continue
        root = Path(source)
        for path in (root, root / MANIFEST, root / SPEC_FILE):
            if not _can_read(path, uid, gid):
                raise DockerRunError(f"{path} is not readable by the container's user {uid}:{gid}: "
                                     f"chmod -R a+rX {root}")


def _prepare_store(request: Mapping[str, Any]) -> None:
    """Create a missing local store folder before the daemon does (it would make it root's), and make
    sure the container's user can write to it."""
    for source, mount in (request.get("volumes") or {}).items():
        if mount["bind"] != STORE_MOUNT:
            continue
        path = Path(source)
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        uid, gid = (int(x) for x in str(request.get("user") or IMAGE_USER).split(":"))
        if created and os.getuid() == 0:
            os.chown(path, uid, gid)  # root on the host: the container runs as the image's user
        st = path.stat()
        if not (st.st_uid == uid or st.st_mode & 0o002 or (st.st_gid == gid and st.st_mode & 0o020)):
            raise DockerRunError(f"local store {path} is not writable by the container's user {uid}:{gid}: "
                                 f"chown -R {uid}:{gid} {path}, or pass another store")


def run_in_docker(request: Mapping[str, Any], out: Any = None) -> int:
    """Run the container, stream its output, return its exit code. Ctrl-C stops it gracefully (the
    trainer gets SIGTERM and checkpoints), and the container is removed in every case."""
    import docker
    from docker.errors import APIError, DockerException, ImageNotFound

    out = out or sys.stdout.buffer
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as e:
        raise DockerRunError(f"cannot reach the docker daemon ({e}); is it running, and may you use it?") from None
    try:
        client.images.get(request["image"])
    except ImageNotFound:
        raise DockerRunError(f"image {request['image']} is not on this machine: build it with "
                             "`ft image build gpu` (or pull it from your registry)") from None
    _check_bundle_readable(request)
    _prepare_store(request)
    # create, then start inside the try: a container the daemon fails to start is removed too.
    container = client.containers.create(**{k: v for k, v in request.items() if k != "detach"})
    try:
        try:
            container.start()
        except APIError as e:
            raise DockerRunError(f"the container did not start: {e.explanation or e}") from None
        try:
            for chunk in container.logs(stream=True, follow=True):
                out.write(chunk)
                out.flush()
        except KeyboardInterrupt:
            print("\nstopping the container (the trainer checkpoints on SIGTERM)…", file=sys.stderr)
            container.stop(timeout=60)
        return int(container.wait().get("StatusCode", 1))
    finally:
        try:
            container.remove(force=True)
        except APIError:
            pass
