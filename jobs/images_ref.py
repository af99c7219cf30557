"""Which images cloud jobs and services run, from which registry, and the docker login that pulls them.

The registry is one setting: `--registry` on `ft launch` / `ft serve up` / `ft image build`, else
`FT_REGISTRY` (environment or `.env`, read by trainer.settings), else the project's published images
(images.tags.DEFAULT_REGISTRY). The tag is the content hash of the image built from this checkout
(`ft image tag gpu`), so a job never runs a stale image.

A private registry needs SkyPilot's docker login variables: SKYPILOT_DOCKER_USERNAME,
SKYPILOT_DOCKER_PASSWORD and SKYPILOT_DOCKER_SERVER, all three or none (SkyPilot refuses a partial
set), passed as SkyPilot secrets (never `envs:`, never printed; the password is in
trainer.settings.SECRET_NAMES, so every message masks it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from images.tags import DEFAULT_REGISTRY, image_def, image_ref, registry_host, resolve_registry
from trainer.errors import BadInput

# What the YAMLs under jobs/ and sky/serve.yaml name before `ft launch` / `ft serve up` fill in the tag.
GPU_IMAGE = f"{DEFAULT_REGISTRY}/ft-gpu:latest"
VLLM_IMAGE = f"{DEFAULT_REGISTRY}/ft-vllm:latest"
REGISTRY = DEFAULT_REGISTRY
# SkyPilot 0.14's names (sky.skylet.constants.DOCKER_LOGIN_ENV_VARS; a test checks they agree).
DOCKER_USERNAME, DOCKER_PASSWORD, DOCKER_SERVER = ("SKYPILOT_DOCKER_USERNAME", "SKYPILOT_DOCKER_PASSWORD",
                                                   "SKYPILOT_DOCKER_SERVER")
DOCKER_LOGIN = (DOCKER_USERNAME, DOCKER_PASSWORD, DOCKER_SERVER)


def image(kind: str, registry: str | None = None) -> str:
    """`<registry>/ft-<kind>:<content hash>`; the registry from `registry`, FT_REGISTRY or the default.
    A checkout without the Dockerfile or lock gets `:latest`."""
    prefix, _ = resolve_registry(registry)
    repository = image_def(kind).repository  # BadInput for an unknown kind
    try:
        return image_ref(kind, registry=prefix)
    except OSError:  # a checkout without the Dockerfile or lock
        return f"{prefix}/{repository}:latest"


def gpu_image(registry: str | None = None) -> str:
    return image("gpu", registry)


def vllm_image(registry: str | None = None) -> str:
    return image("vllm", registry)


def registry_source(registry: str | None = None) -> str:
    """Where the registry comes from, for --dry-run: `--registry`, `FT_REGISTRY` or `default`."""
    return resolve_registry(registry)[1]


def docker_login(image_ref_: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """SkyPilot's docker login variables from this environment: all three, or none (an empty dict).
    BadInput (names only, never values) for a partial set, or a server that is not the image's registry
    (SkyPilot would put the server in front of the image's own host and pull a name that does not exist)."""
    env = os.environ if environ is None else environ
    found = {name: env[name] for name in DOCKER_LOGIN if env.get(name)}
    if not found:
        return {}
    missing = [name for name in DOCKER_LOGIN if name not in found]
    if missing:
        raise BadInput(f"docker login for a private registry needs {', '.join(DOCKER_LOGIN)} together; "
                       f"{', '.join(missing)} not set (SkyPilot refuses a partial set)")
    server = found[DOCKER_SERVER].split("://", 1)[-1].rstrip("/")
    host = registry_host(image_ref_) if image_ref_ else None
    if host and host != server.split("/", 1)[0]:
        raise BadInput(f"{DOCKER_SERVER}={server} but the image {image_ref_} is on {host}: set --registry / "
                       f"FT_REGISTRY to a repository on {server}, or the server to {host}")
    return found
