"""`ft preflight CONFIG`, and the checks `ft launch` runs before it spends anything: the spec and its
data (the same validation as `ft validate`), the accelerator names against the catalogs, the store
reachable and writable from here (a tiny object written, read back and removed), the clouds `sky check`
enabled (its cached result; no provider is called), the job's image tag present in its registry (the
registry's HTTP API v2: a manifest HEAD, with the anonymous or docker-login token it asks for), and the
plan: GPU, cloud, spot, estimated hours and $.

Each check ends `ok`, `warn` or `fail`; a failure carries its exit code (2 bad input, 75 retryable).
SkyPilot is imported only for the enabled-clouds cache, and only when asked.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jobs import gpu_fit, pricing
from trainer import settings
from trainer.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRYABLE, BadInput, describe
from trainer.spec import JobSpec, store_uri_problem

if TYPE_CHECKING:
    from mac.validate_job import JobReport

Status = Literal["ok", "warn", "fail"]
PROBE_PREFIX = "_ft_preflight"


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    code: int = EXIT_OK  # for a failure: 2 or 75

    def as_dict(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail, "exit_code": self.code}


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)
    spec: JobSpec | None = None
    job: JobReport | None = None  # the validation of spec and data, when it ran: `ft launch` freezes from it
    offers: list[pricing.Offer] = field(default_factory=list)
    enabled: set[str] | None = None

    def add(self, name: str, status: Status, detail: str, code: int = EXIT_OK) -> Check:
        check = Check(name, status, detail, code if status == "fail" else EXIT_OK)
        self.checks.append(check)
        return check

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def exit_code(self) -> int:
        """2 when any input is wrong (fix it first), else 75 when only something retryable failed."""
        codes = {c.code for c in self.failed}
        return EXIT_BAD_INPUT if EXIT_BAD_INPUT in codes else (EXIT_RETRYABLE if codes else EXIT_OK)

    def as_dict(self) -> dict:
        return {"ok": not self.failed, "exit_code": self.exit_code, "checks": [c.as_dict() for c in self.checks],
                "plan": [o.json_row() for o in self.offers[:3]]}


# ------------------------------------------------------------------------------ accelerators
def accelerator_problem(value: str | None, clouds: list[str] | None = None) -> tuple[Status, str] | None:
    """Whether `NAME[:COUNT]` names a GPU the catalogs (or gpu_fit's table) know; with close names
    when not. `fail` when catalogs are cached and none has it; `warn` when no catalog is cached."""
    if not value:
        return None
    name = value.partition(":")[0]
    cached = [c for c in (clouds or pricing.CLOUDS) if pricing.catalog_path(c).exists()]
    names = pricing.accelerator_names(cached) if cached else set()
    known = {n.lower() for n in names | set(gpu_fit.GPU_MEMORY_GIB)}
    if name.lower() in known:
        return None
    close = gpu_fit.close_gpu_names(name, names)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if cached:
        return "fail", f"no GPU named {name!r} in the {', '.join(cached)} catalogs{hint}"
    return "warn", f"{name!r} is not a GPU this tool knows and no SkyPilot catalog is cached to check it{hint}"


def spec_findings(spec: JobSpec, spec_path: Path) -> list:
    """Extra `ft validate` findings that need the catalogs (registered on mac.validate_job by jobs.cli)."""
    from mac.validate import Finding

    found = accelerator_problem(spec.resources.accelerators, list(spec.resources.clouds))
    if found is None:
        return []
    status, text = found
    return [Finding(str(spec_path), None, "error" if status == "fail" else "warning",
                    f"resources.accelerators: {text}")]


# ------------------------------------------------------------------------------------- store
def check_store_writable(uri: str) -> tuple[Status, str, int]:
    """Write a tiny object, read it back and remove it. (status, detail, exit code)."""
    from trainer.store import open_store

    problem = store_uri_problem(uri)
    if problem:
        return "fail", f"store.uri {uri!r}: {problem}", EXIT_BAD_INPUT
    key = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
    try:
        store = open_store(uri)
        store.write_text(key, "ft preflight\n")
        if store.read_text(key) != "ft preflight\n":
            return "fail", f"{uri}: the object read back differs from the one written", EXIT_BAD_INPUT
        store.delete(key)
        if store.exists(key):
            return "fail", f"{uri}: the probe object {key} could not be removed", EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - classified: store errors, network, credentials
        found = describe(e)
        if found is None:
            return "fail", f"{uri}: {type(e).__name__}: {e}", EXIT_BAD_INPUT
        return "fail", found[1], found[0]
    return "ok", f"{store.uri} reachable and writable (wrote, read and removed {key})", EXIT_OK


# ------------------------------------------------------------------------------------- image
MANIFEST_TYPES = ", ".join(("application/vnd.oci.image.index.v1+json",
                            "application/vnd.docker.distribution.manifest.list.v2+json",
                            "application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"))
REGISTRY_TIMEOUT_S = 10.0
DOCKER_HUB = "registry-1.docker.io"
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def split_image_ref(ref: str) -> tuple[str, str, str]:
    """(registry host, repository, tag) of `[host[:port]/]repo[:tag]`, Docker's rules: the first part is a
    host when it has a dot or a port or is `localhost`; otherwise Docker Hub (`library/` for one part)."""
    name, tag = ref, "latest"
    last = ref.rpartition("/")[2]
    if ":" in last:
        name, _, tag = ref.rpartition(":")
    name = name.partition("@")[0]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    return DOCKER_HUB, name if "/" in name else f"library/{name}", tag


def _base_url(host: str) -> str:
    # Docker itself talks plain HTTP to a registry on this machine, TLS to every other one
    return f"{'http' if host.rsplit(':', 1)[0] in _LOOPBACK or host.startswith('[::1]') else 'https'}://{host}"


def _login(host: str) -> tuple[str, str] | None:
    """SkyPilot's docker login (SKYPILOT_DOCKER_USERNAME / _PASSWORD / _SERVER) when it is for `host`."""
    user = os.environ.get("SKYPILOT_DOCKER_USERNAME")
    password = settings.secrets_present().get("SKYPILOT_DOCKER_PASSWORD")
    server = (os.environ.get("SKYPILOT_DOCKER_SERVER") or "").split("://", 1)[-1].split("/", 1)[0]
    if user and password and (not server or server == host or (server == "docker.io" and host == DOCKER_HUB)):
        return user, password
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.strip().partition("=")
        if eq:
            params[key.lower()] = value.strip().strip('"')
    return scheme.lower(), params


def _open(request: urllib.request.Request, timeout: float):
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https or loopback http only


def _token(params: dict[str, str], login: tuple[str, str] | None, timeout: float) -> str | None:
    realm = params.get("realm")
    if not realm or not realm.startswith(("https://", "http://")):
        return None
    query = urllib.parse.urlencode({k: params[k] for k in ("service", "scope") if params.get(k)})
    request = urllib.request.Request(realm + ("&" if "?" in realm else "?") + query if query else realm)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with _open(request, timeout) as response:
            body = json.loads(response.read().decode("utf-8") or "{}")
    except (urllib.error.HTTPError, ValueError):
        return None
    return body.get("token") or body.get("access_token")


def registry_has(ref: str, timeout: float = REGISTRY_TIMEOUT_S) -> tuple[bool | None, str]:
    """Whether the registry holds `ref` (a manifest HEAD over its HTTP API v2): (True, how), (False, why)
    for a missing tag or repository, (None, why) when it cannot tell (unreachable, access refused)."""
    host, repo, tag = split_image_ref(ref)
    url = f"{_base_url(host)}/v2/{repo}/manifests/{urllib.parse.quote(tag, safe='')}"
    login = _login(host)
    authorization: str | None = None
    for _ in range(2):  # once as is, once with the token (or basic login) the registry asked for
        request = urllib.request.Request(url, method="HEAD", headers={"Accept": MANIFEST_TYPES})
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            with _open(request, timeout) as response:
                digest = response.headers.get("Docker-Content-Digest")
                return True, f"{ref} is in its registry" + (f" ({digest[:19]}…)" if digest else "")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False, f"{ref} is not in its registry ({host} has no {repo}:{tag})"
            if e.code == 401 and authorization is None:
                scheme, params = _challenge(e.headers.get("WWW-Authenticate", ""))
                token = _token(params, login, timeout) if scheme == "bearer" else None
                if token:
                    authorization = f"Bearer {token}"
                    continue
                if scheme == "basic" and login:
                    authorization = "Basic " + base64.b64encode(":".join(login).encode()).decode()
                    continue
            if e.code in (401, 403):
                how = "with SKYPILOT_DOCKER_USERNAME/PASSWORD" if login else "anonymously (a private image? set " \
                      "SKYPILOT_DOCKER_USERNAME, SKYPILOT_DOCKER_PASSWORD and SKYPILOT_DOCKER_SERVER)"
                return None, f"cannot tell whether {ref} exists: {host} refused to answer {how} (HTTP {e.code})"
            return None, f"cannot tell whether {ref} exists: {host} answered HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            return None, f"cannot tell whether {ref} exists: {host} unreachable ({reason})"
    return None, f"cannot tell whether {ref} exists: {host} refused the token it issued"


def push_hint(ref: str) -> str:
    registry = ref.rpartition(":")[0].rpartition("/")[0] or "REGISTRY"
    return f"build and push it first: ft image build gpu --registry {registry} --push"


def check_image(ref: str, timeout: float = REGISTRY_TIMEOUT_S) -> tuple[Status, str, int]:
    """The job's image in its registry: ok; missing → fail (bad input, with how to push it); cannot
    tell (offline, a registry that refuses to say) → warn with the reason. (status, detail, exit code)"""
    found, detail = registry_has(ref, timeout)
    if found:
        return "ok", detail, EXIT_OK
    if found is False:
        return "fail", f"{detail}: {push_hint(ref)}", EXIT_BAD_INPUT
    return "warn", detail, EXIT_OK


# ------------------------------------------------------------------------------------- run it
def run_preflight(config: Path | None, spec: JobSpec | None = None, spec_dir: Path | None = None,
                  cloud: bool = True, validate_data: bool = True,
                  enabled_clouds: Callable[[], set[str] | None] | None = None,
                  overrides: Sequence[str] = (), image: str | None = None) -> Preflight:
    """Every check, in order; stops after the spec when the spec itself is unusable.
    `cloud=False` skips what talks to the outside (the store probe, the enabled clouds, the image in
    its registry); `overrides` (`KEY=VALUE`) apply to the spec read from `config`; `image` is the job's
    image (default: the GPU image of this checkout, jobs.images_ref)."""
    report = Preflight()
    if config is not None and validate_data:
        from mac.validate_job import validate_job

        job = validate_job(config, overrides=overrides)
        report.job = job
        if job.spec is None:
            report.add("spec", "fail", "; ".join(str(f) for f in job.spec_findings) or "invalid spec", EXIT_BAD_INPUT)
            return report
        spec, spec_dir = job.spec, config.resolve().parent
        rows = sum(r.rows for r in job.files)
        errors = [f for f in job.spec_findings + [f for r in job.files for f in r.findings] if f.severity == "error"]
        if job.errors:
            first = str(errors[0]) if errors else ""
            report.add("spec and data", "fail", f"{job.errors} errors ({first}); see `ft validate {config}`",
                       EXIT_BAD_INPUT)
        else:
            report.add("spec and data", "warn" if job.warnings else "ok",
                       f"{len(job.files)} files, {rows} rows, {job.warnings} warnings")
    elif spec is None and config is not None:
        from trainer.spec import SpecError, load_spec

        try:
            spec, spec_dir = load_spec(config, overrides), config.resolve().parent
        except SpecError as e:
            report.add("spec", "fail", str(e).replace("\n ", ""), EXIT_BAD_INPUT)
            return report
    assert spec is not None
    report.spec = spec
    found = accelerator_problem(spec.resources.accelerators, list(spec.resources.clouds))
    if found:
        report.add("accelerators", found[0], f"resources.accelerators: {found[1]}", EXIT_BAD_INPUT)
    elif spec.resources.accelerators:
        report.add("accelerators", "ok", spec.resources.accelerators)

    if cloud and report.failed:  # bad input first: nothing leaves this machine until the spec and data pass
        cloud = False
        report.add("store and clouds", "warn", "not checked: fix the failed checks first")
    uri = spec.store.uri
    if not uri.startswith("s3://"):
        report.add("store", "fail", f"store.uri {uri} is a local folder: a cloud machine cannot reach it; "
                   "set store.uri (or FT_STORE) to s3://bucket/prefix", EXIT_BAD_INPUT)
    elif cloud:
        status, detail, code = check_store_writable(uri)
        report.add("store", status, detail, code)

    if cloud:
        enabled = (enabled_clouds or pricing.enabled_clouds)()
        report.enabled = enabled
        wanted = list(spec.resources.clouds)
        if enabled is None:
            report.add("clouds", "warn", "no cached `sky check` result: run `sky check` to see which of "
                       f"{', '.join(wanted)} have credentials")
        elif not enabled & set(wanted):
            report.add("clouds", "fail", f"none of the spec's clouds ({', '.join(wanted)}) is enabled "
                       f"(enabled: {', '.join(sorted(enabled)) or 'none'}); run `sky check`", EXIT_BAD_INPUT)
        else:
            report.add("clouds", "ok", f"enabled: {', '.join(c for c in wanted if c in enabled)}"
                       + (f"; not enabled: {', '.join(c for c in wanted if c not in enabled)}"
                          if set(wanted) - enabled else ""))
        try:
            if image is None:
                from jobs import images_ref

                image = images_ref.gpu_image()
            status, detail, code = check_image(image)
        except BadInput as e:  # a registry setting that is not one
            status, detail, code = "fail", str(e), EXIT_BAD_INPUT
        report.add("image", status, detail, code)

    try:
        job_cost = pricing.job_cost(spec, spec_dir)
    except gpu_fit.ModelSizeError as e:
        report.add("plan", "fail", str(e), EXIT_BAD_INPUT)
        return report
    clouds = list(spec.resources.clouds)
    if report.enabled is not None and report.enabled & set(clouds):
        clouds = [c for c in clouds if c in report.enabled]
    offers = pricing.candidates_for_spec(spec, spec_dir, clouds=clouds, job=job_cost)
    problem = pricing.budget_problem(offers, spec.resources.max_cost_usd)
    offers = pricing.within_budget(offers, spec.resources.max_cost_usd)
    report.offers = offers
    if problem:
        report.add("plan", "fail", problem, EXIT_BAD_INPUT)
    elif not offers:
        report.add("plan", "warn", "no priced offer in the cached catalogs (`ft gpus CONFIG` shows why); "
                   "SkyPilot's optimizer will choose among the job YAML's candidates")
    else:
        report.add("plan", "ok", plan_line(offers[0]))
    return report


def plan_line(o: pricing.Offer) -> str:
    nodes = f" × {o.nodes} nodes" if o.nodes > 1 else ""
    cost = f"${o.est_cost:,.2f}" if o.est_cost is not None else "$ unknown"
    hours = f"{o.est_hours:.1f} h" if o.est_hours is not None else "? h"
    price = f"${o.price_per_hour:.2f}/h" if o.price_per_hour is not None else "price unknown"
    return (f"{o.accelerator} × {o.count}{nodes} on {o.cloud} {o.region} "
            f"{'spot' if o.spot else 'on-demand'} ({o.instance_type}), about {hours} and {cost} at {price}")
