"""Content-addressed image tags: the tag is a hash of everything the image is built from (the
Dockerfile, its lock, the project's own files it copies in, and any build argument that differs from
the Dockerfile's defaults). The same inputs give the same tag on any machine, so a job YAML can name
the image before it is built, and a changed input can never reuse a stale image.

The file list of each image mirrors the Dockerfile's COPY lines (a test checks that every COPY source
is covered), and files are skipped exactly where `.dockerignore` skips them (caches, bytecode).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from trainer import settings
from trainer.errors import BadInput

REPO_ROOT = Path(__file__).resolve().parent.parent
TAG_LENGTH = 16
# Mirrors .dockerignore for the folders the images copy: never part of an image, never part of a tag.
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp")


@dataclass(frozen=True)
class ImageDef:
    kind: str
    repository: str  # image name without registry or tag
    dockerfile: str
    lock: str
    inputs: tuple[str, ...]  # files or folders (relative to the repo root) the Dockerfile copies in


IMAGES: dict[str, ImageDef] = {
    "gpu": ImageDef(
        kind="gpu",
        repository="ft-gpu",
        dockerfile="Dockerfile.gpu",
        lock="images/locks/gpu.txt",
        inputs=("images/locks/gpu-vllm.txt", "images/locks/comet.txt", "pyproject.toml", "README.md", "trainer",
                "images/flash_attn_url.py", "images/smoke_gpu.py"),
    ),
    "vllm": ImageDef(
        kind="vllm",
        repository="ft-vllm",
        dockerfile="Dockerfile.vllm",
        lock="images/locks/vllm.txt",
        # Only the three modules the start step imports: the serving image does not carry the trainer.
        inputs=("trainer/__init__.py", "trainer/store.py", "trainer/serve_pull.py", "images/vllm-entrypoint.sh"),
    ),
}


# The project's published images. FT_REGISTRY (or --registry) names another: the one `ft image build
# --push` pushed to, which cloud jobs (`ft launch`) and services (`ft serve up`) then pull from.
DEFAULT_REGISTRY = "ghcr.io/llm-finetuning"
# host[:port] then lowercase path components, as docker's reference grammar has them; no scheme, no tag.
_REGISTRY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?"
                       r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")


def check_registry(value: str, source: str = "--registry") -> str:
    """The registry prefix without a trailing slash; BadInput naming `source` when it is not one."""
    registry = value.strip().rstrip("/")
    if "://" in registry:
        raise BadInput(f"{source} {value!r}: a registry has no scheme (e.g. ghcr.io/me, not https://ghcr.io/me)")
    if not _REGISTRY.fullmatch(registry):
        raise BadInput(f"{source} {value!r}: expected a registry like ghcr.io/me, 123456789012.dkr.ecr.us-east-1."
                       "amazonaws.com or localhost:5000/team (lowercase path, no tag)")
    return registry


def resolve_registry(explicit: str | None = None) -> tuple[str, str]:
    """(registry, where it came from): `explicit` (--registry), else FT_REGISTRY (environment or .env),
    else the project's published images."""
    if explicit:
        return check_registry(explicit, "--registry"), "--registry"
    configured = settings.registry()
    if configured:
        return check_registry(configured, "FT_REGISTRY"), "FT_REGISTRY"
    return DEFAULT_REGISTRY, "default"


def registry_host(ref: str) -> str | None:
    """The registry host of an image reference (`ghcr.io` of ghcr.io/me/ft-gpu:t), None for Docker Hub's
    short names (me/ft-gpu, ft-gpu)."""
    first, sep, _ = ref.partition("/")
    return first if sep and ("." in first or ":" in first or first == "localhost") else None


def image_def(kind: str) -> ImageDef:
    try:
        return IMAGES[kind]
    except KeyError:
        raise BadInput(f"unknown image {kind!r}: choose one of {', '.join(IMAGES)}") from None


def _skipped(rel: Path) -> bool:
    return any(part in _SKIP_DIRS for part in rel.parts) or rel.name.endswith(_SKIP_SUFFIXES)


def input_files(kind: str, root: Path = REPO_ROOT) -> Iterator[tuple[str, Path]]:
    """(posix path relative to root, path) of every file that goes into the image's tag, sorted."""
    image = image_def(kind)
    found: dict[str, Path] = {}
    for entry in (image.dockerfile, image.lock, *image.inputs):
        path = root / entry
        if path.is_dir():
            for f in path.rglob("*"):
                rel = f.relative_to(root)
                if f.is_file() and not _skipped(rel):
                    found[rel.as_posix()] = f
        elif path.is_file():
            found[entry] = path
        else:
            raise FileNotFoundError(f"{kind} image input {entry} is missing under {root}")
    return iter(sorted(found.items()))


def _file_digest(path: Path) -> str:
    # CRLF → LF so a Windows checkout (core.autocrlf) gives the same tag as a Linux one.
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def content_hash(kind: str, root: Path = REPO_ROOT, build_args: Mapping[str, str] | None = None) -> str:
    h = hashlib.sha256(f"ft-image-v1\0{kind}\0".encode())
    for rel, path in input_files(kind, root):
        h.update(f"{rel}\0{_file_digest(path)}\n".encode())
    # Build arguments change what is built (a CPU base, another CUDA index), so they change the tag;
    # none given means the Dockerfile's own pinned defaults, already covered by hashing the file.
    for key in sorted(build_args or {}):
        h.update(f"arg\0{key}={(build_args or {})[key]}\n".encode())
    return h.hexdigest()


def image_tag(kind: str, root: Path = REPO_ROOT, build_args: Mapping[str, str] | None = None) -> str:
    """The tag alone, e.g. `3f2a9c…` (16 hex digits)."""
    return content_hash(kind, root, build_args)[:TAG_LENGTH]


def image_ref(
    kind: str,
    registry: str | None = None,
    root: Path = REPO_ROOT,
    build_args: Mapping[str, str] | None = None,
) -> str:
    """`[registry/]ft-gpu:<tag>`: the name job YAMLs use for the image."""
    repo = image_def(kind).repository
    if registry:
        repo = f"{registry.rstrip('/')}/{repo}"
    return f"{repo}:{image_tag(kind, root, build_args)}"
