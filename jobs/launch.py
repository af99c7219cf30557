"""Managed-job launch, status, logs, cancel and artifact fetch, through SkyPilot's Python SDK.

`ft launch` starts from the job YAML of the stage (jobs/<stage>.yaml, jobs/pipeline.yaml for every
stage) and fills in what SkyPilot does not know: the bundle and run id, the image (the registry setting's
`ft-gpu:<content hash>`, jobs.images_ref),
the accelerate config for the spec's strategy, the number of nodes, and the resources: the offers
the job fits, cheapest first, as SkyPilot `ordered` candidates, so SkyPilot tries them in price order
and, after a preemption, recovers on the next.

A managed job is named `ft-<run id>`, so `ft logs RUN` and `ft cancel RUN` find it by the run id.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

from jobs import accelerate_config, images_ref
from jobs.pricing import NO_MULTI_NODE, Offer
from trainer import settings
from trainer.errors import EXIT_BAD_INPUT, EXIT_RETRYABLE, FtError
from trainer.spec import JobSpec

JOBS_DIR = Path(__file__).parent
REPO_ROOT = JOBS_DIR.parent
SKY_CONFIG = REPO_ROOT / "sky" / "config.yaml"
MAX_CANDIDATES = 8  # SkyPilot tries them in order; more only slows the optimizer
ACCEL_DIR_ON_NODE = "/tmp/ft-accelerate"


def job_name(run_id: str) -> str:
    return f"ft-{run_id}"


def yaml_for(stage_method: str | None) -> Path:
    """The job YAML of one stage's method, or the pipeline (every stage) when None."""
    name = stage_method if stage_method in ("sft", "dpo", "grpo", "eval") else "pipeline"
    return JOBS_DIR / f"{name}.yaml"


def load_job_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def accelerate_envs(spec: JobSpec) -> dict[str, str]:
    """FT_STRATEGY, FT_MIXED_PRECISION (the spec's model.dtype as bf16 | fp16 | no | auto) and the base64
    accelerate/DeepSpeed configs the YAML's run script writes out."""
    strategy = accelerate_config.strategy_for(spec)
    mixed = accelerate_config.mixed_precision_for(spec)
    if strategy is None:
        return {"FT_STRATEGY": "ddp", "FT_MIXED_PRECISION": mixed}
    cfg = accelerate_config.accelerate_config(strategy, num_machines=spec.distributed.num_nodes,
                                              mixed_precision=mixed)
    envs = {"FT_STRATEGY": strategy, "FT_MIXED_PRECISION": mixed}
    if strategy in accelerate_config.DEEPSPEED:
        cfg["deepspeed_config"]["deepspeed_config_file"] = f"{ACCEL_DIR_ON_NODE}/deepspeed.json"
        envs["FT_DEEPSPEED_CONFIG"] = _b64(json.dumps(accelerate_config.DEEPSPEED[strategy], indent=2))
    # Machine rank, head address and process counts come from SkyPilot's variables on the node
    # (the run script passes them as accelerate flags, which override these placeholders).
    envs["FT_ACCELERATE_CONFIG"] = _b64(accelerate_config.render(cfg))
    return envs


def resources_from_offers(offers: list[Offer], disk_size: int) -> list[dict[str, Any]]:
    """SkyPilot `ordered` candidates: one per (cloud, region, accelerator, spot), cheapest first."""
    out, seen = [], set()
    for o in offers:
        key = (o.cloud, o.region, o.accelerator, o.count, o.spot)
        if key in seen:
            continue
        seen.add(key)
        out.append({"infra": f"{o.cloud}/{o.region}", "accelerators": f"{o.accelerator}:{o.count}",
                    "use_spot": o.spot})
        if len(out) == MAX_CANDIDATES:
            break
    return out


def build_task_config(
    spec: JobSpec,
    bundle_uri: str,
    run_id: str,
    offers: list[Offer],
    stage: str | None = None,
    image: str | None = None,
    registry: str | None = None,
) -> dict[str, Any]:
    """The exact SkyPilot task (as a YAML dict) `ft launch` submits. `image` names the image outright;
    else it is `ft-gpu:<content hash>` on `registry` (--registry), FT_REGISTRY or the default registry."""
    method = spec.stage(stage).method if stage and stage != "eval" else stage
    cfg = copy.deepcopy(load_job_yaml(yaml_for(method)))
    cfg["name"] = job_name(run_id)
    envs = cfg.setdefault("envs", {})
    envs.update(BUNDLE=bundle_uri, RUN_ID=run_id, FT_STORE=spec.store.uri)
    if "STAGE" in envs:
        envs["STAGE"] = stage or ""
    envs.update(accelerate_envs(spec))
    if os.environ.get("AWS_ENDPOINT_URL"):
        envs["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
    if spec.distributed.num_nodes > 1:
        cfg["num_nodes"] = spec.distributed.num_nodes
    res = cfg["resources"]
    res["image_id"] = f"docker:{image or images_ref.gpu_image(registry)}"
    res["disk_size"] = spec.resources.disk_size
    if offers:
        res.pop("accelerators", None)
        res.pop("any_of", None)
        res.pop("use_spot", None)
        res["ordered"] = resources_from_offers(offers, spec.resources.disk_size)
    else:  # no catalog: keep the YAML's candidates, narrowed to the spec's clouds and spot choice
        clouds = set(spec.resources.clouds)
        if spec.distributed.num_nodes > 1:
            clouds -= NO_MULTI_NODE
        res["any_of"] = [c for c in res.get("any_of", []) if c["infra"].split("/")[0] in clouds]
        res["use_spot"] = spec.resources.use_spot
        if spec.resources.accelerators:
            res["accelerators"] = spec.resources.accelerators
    if spec.resources.max_price_per_hour:
        res["max_hourly_cost"] = spec.resources.max_price_per_hour
    return cfg


def to_task(cfg: dict[str, Any], secrets: dict[str, str] | None = None):
    """Parse and validate with SkyPilot itself (schema, envs, resources)."""
    import sky

    return sky.Task.from_yaml_config(copy.deepcopy(cfg), secrets_overrides=secrets or None)


def task_image(cfg: dict[str, Any]) -> str | None:
    """The docker image a task (or service) config runs, without SkyPilot's `docker:` prefix."""
    image_id = (cfg.get("resources") or {}).get("image_id")
    return image_id.removeprefix("docker:") if isinstance(image_id, str) else None


def local_secrets(cfg: dict[str, Any] | None = None) -> dict[str, str]:
    """The secrets a task takes from this environment (`.env` already loaded): each credential of
    trainer.settings.SECRET_NAMES that is set and that the task's YAML declares under `secrets:` (every
    one when `cfg` is None), plus SkyPilot's docker login for a private registry when all three of its
    variables are set (BadInput for a partial set). Passed as SkyPilot secrets, never printed."""
    declared = None if cfg is None else set(cfg.get("secrets") or {})
    found = {name: value for name, value in settings.secrets_present().items()
             if name not in images_ref.DOCKER_LOGIN and (declared is None or name in declared)}
    found.update(images_ref.docker_login(task_image(cfg) if cfg else None))
    return found


def _use_project_config() -> None:
    os.environ.setdefault("SKYPILOT_PROJECT_CONFIG", str(SKY_CONFIG))


class LaunchError(FtError):
    """SkyPilot refused or failed a request; `reason` is its one-line cause (`NoCloudAccessError: …`).
    Exit 2 (bad input: no cloud access, an invalid task, no such job) or 75 when `retryable` (its API
    server or the network unreachable)."""

    def __init__(self, reason: str, retryable: bool = False):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable
        self.exit_code = EXIT_RETRYABLE if retryable else EXIT_BAD_INPUT
        self.label = "retryable" if retryable else "error"


# SkyPilot failures a retry may fix (its API server, the network); everything else is the input's
RETRYABLE_SKY_ERRORS = ("ApiServerConnectionError", "ServerTemporarilyUnavailableError", "NetworkError",
                        "ConnectionError", "ReadTimeout", "ConnectTimeout", "TimeoutError")


def sky_reason(error: BaseException) -> str:
    """SkyPilot's reason in one line: the exception's class and the first line of its message."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__


def _sky_call(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - every SkyPilot failure becomes one line and an exit code
        raise LaunchError(f"{what}: {sky_reason(e)}", type(e).__name__ in RETRYABLE_SKY_ERRORS) from e


def _job_id(result: Any) -> int | None:
    """The managed job id from `sky.jobs.launch`'s result: (job_ids, handle) or (job_id, handle)."""
    value = result[0] if isinstance(result, tuple | list) and result else result
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def launch(cfg: dict[str, Any], detach: bool = False) -> int | None:
    """Submit a managed job and wait until SkyPilot has accepted it (the request's result, so a
    refused launch, e.g. NoCloudAccessError, raises LaunchError); then follow its logs unless
    `detach`. Returns the managed job id."""
    _use_project_config()
    import sky

    task = _sky_call("invalid task", to_task, cfg, local_secrets(cfg))
    request_id = _sky_call("launch request failed", sky.jobs.launch, task, name=cfg["name"])
    getter = sky.get if detach else sky.stream_and_get
    result = _sky_call("launch failed", getter, request_id)
    job_id = _job_id(result)
    if job_id is None:
        raise LaunchError("launch failed: SkyPilot returned no managed job id")
    return job_id


def _not_up(error: BaseException) -> bool:
    return any(type(e).__name__ == "ClusterNotUpError" for e in (error, error.__cause__) if e is not None)


def status(all_users: bool = False) -> list[dict[str, Any]]:
    """Managed jobs; none (not an error) while the jobs controller has never been started."""
    _use_project_config()
    import sky

    try:
        records = sky.get(sky.jobs.queue(refresh=False, all_users=all_users))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001
        if _not_up(e):  # no managed job was ever launched: the controller does not exist yet
            return []
        raise LaunchError(f"cannot list managed jobs: {sky_reason(e)}",
                          type(e).__name__ in RETRYABLE_SKY_ERRORS) from e
    if isinstance(records, tuple):  # queue version 2 returns (records, total, ...)
        records = records[0]
    out = []
    for r in records or []:
        d = r.model_dump() if hasattr(r, "model_dump") else dict(r)
        out.append(d)
    return out


def find_job(run_id: str, all_users: bool = False) -> dict[str, Any] | None:
    """The newest managed job of a run (named ft-<run id>), or None."""
    rows = [r for r in status(all_users) if r.get("job_name") == job_name(run_id)]
    return max(rows, key=lambda r: r.get("job_id") or 0) if rows else None


def logs(run_id: str, follow: bool = True) -> int:
    """Stream a run's managed-job log; LaunchError when there is no such job. Returns SkyPilot's exit
    code of the job (0 succeeded, 100 failed, …; 0 while it still runs without --follow)."""
    _use_project_config()
    import sky

    job = find_job(run_id)
    if job is None:
        raise LaunchError(f"no managed job {job_name(run_id)} (`ft status` lists them; a local run has no "
                          "job log: its output went to the terminal)")
    code = _sky_call("cannot read the job log", sky.jobs.tail_logs, job_id=job["job_id"], follow=follow)
    return code if isinstance(code, int) else 0


def cancel(run_id: str) -> None:
    _use_project_config()
    import sky

    job = find_job(run_id)
    if job is None:
        raise LaunchError(f"no managed job {job_name(run_id)} (`ft status` lists them)")
    _sky_call("cancel failed", lambda: sky.get(sky.jobs.cancel(job_ids=[job["job_id"]])))


def fetch(run: str, store_uri: str, to: Path, checkpoints: bool = False) -> Path:
    """Download `runs/<id>/` (every stage's final output, metrics, eval, report) into `to/<id>`;
    intermediate checkpoints only when asked (they are the bulk and only matter for resuming)."""
    from trainer.errors import BadInput
    from trainer.run import Run

    ref = Run.from_ref(run, store_uri)
    store = ref.store
    objects = [(rel, size) for rel, size in store.list(ref.root)
               if checkpoints or "/checkpoints/" not in f"/{rel}"]
    if not objects:
        raise BadInput(f"nothing at {store.url(ref.root)}")
    from trainer.bundle import BundleError, safe_rel
    from trainer.spec import check_name

    dest = Path(to) / check_name(ref.run_id, "run id")
    root = dest.resolve()
    for rel, _ in objects:
        try:  # a listed key with `..` or a leading `/` would write outside `to`
            target = (dest / safe_rel(rel)).resolve()
        except BundleError as e:
            raise BadInput(f"{store.url(ref.root)}: {e}") from None
        if not target.is_relative_to(root):
            raise BadInput(f"{store.url(ref.root)}: refusing {rel!r}: it would leave {dest}")
        store.download_file(f"{ref.root}/{rel}", target)
    return dest
