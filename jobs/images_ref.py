"""The GPU image the job YAMLs run: one constant here, the content-hash tag from `images` when present."""

from __future__ import annotations

# What the YAMLs under jobs/ name. `ft launch` replaces it with the content-addressed tag of the
# image built from this checkout (`ft image tag gpu`), so a job never runs a stale image.
GPU_IMAGE = "ghcr.io/llm-finetuning/ft-gpu:latest"
REGISTRY = "ghcr.io/llm-finetuning"


def gpu_image() -> str:
    """`registry/ft-gpu:<content hash>` when images.tags is importable, else the placeholder."""
    try:
        from images.tags import image_ref
    except ImportError:
        return GPU_IMAGE
    try:
        return image_ref("gpu", registry=REGISTRY)
    except (OSError, KeyError, ValueError):  # a checkout without the Dockerfile or lock
        return GPU_IMAGE
