"""`ft preflight CONFIG`, and the checks `ft launch` runs before it spends anything: the spec and its
data (the same validation as `ft validate`), the accelerator names against the catalogs, the store
reachable and writable from here (a tiny object written, read back and removed), the clouds `sky check`
enabled (its cached result; no provider is called), and the plan: GPU, cloud, spot, estimated hours and $.

Each check ends `ok`, `warn` or `fail`; a failure carries its exit code (2 bad input, 75 retryable).
SkyPilot is imported only for the enabled-clouds cache, and only when asked.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jobs import gpu_fit, pricing
from trainer.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRYABLE, describe
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


# ------------------------------------------------------------------------------------- run it
def run_preflight(config: Path | None, spec: JobSpec | None = None, spec_dir: Path | None = None,
                  cloud: bool = True, validate_data: bool = True,
                  enabled_clouds: Callable[[], set[str] | None] | None = None,
                  overrides: Sequence[str] = ()) -> Preflight:
    """Every check, in order; stops after the spec when the spec itself is unusable.
    `cloud=False` skips what talks to the outside (the store probe and the enabled clouds);
    `overrides` (`KEY=VALUE`) apply to the spec read from `config`."""
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
