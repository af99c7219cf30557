"""`ft image tag|build`: the content-addressed tag of an image, and building it with the docker SDK.
(`ft run BUNDLE --docker` lives in jobs.run_cli and calls images.docker_run.)

Errors are raised (BadInput: exit 2; a failed build: exit 1) and printed by `ft`'s error boundary."""

from __future__ import annotations

import typer
from rich.console import Console

from trainer.errors import BadInput

console = Console()

image_app = typer.Typer(help="The GPU and vLLM images: content-addressed tags, build, push.", no_args_is_help=True)

KIND_HELP = "gpu (training, Dockerfile.gpu) or vllm (serving, Dockerfile.vllm)"
BUILD_ARG_HELP = "KEY=VALUE build argument (repeatable); changes the tag, e.g. BASE=… for a CPU variant"


def _build_args(pairs: list[str] | None) -> dict[str, str]:
    args: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--build-arg {pair!r}: expected KEY=VALUE")
        args[key] = value
    return args


@image_app.command("tag")
def tag(
    kind: str = typer.Argument(..., help=KIND_HELP),
    registry: str | None = typer.Option(None, "--registry", help="prefix, e.g. ghcr.io/me"),
    build_arg: list[str] | None = typer.Option(None, "--build-arg", help=BUILD_ARG_HELP),
) -> None:
    """Print the image's name and content-hash tag (same inputs → same tag), e.g. ft-gpu:3f2a9c…"""
    from images.tags import check_registry, image_ref

    try:
        print(image_ref(kind, registry=registry and check_registry(registry), build_args=_build_args(build_arg)))
    except (ValueError, FileNotFoundError) as e:  # an unknown kind, a missing Dockerfile or lock
        raise BadInput(str(e)) from None


@image_app.command("build")
def build(
    kind: str = typer.Argument(..., help=KIND_HELP),
    registry: str | None = typer.Option(None, "--registry", help="also tag REGISTRY/ft-KIND:TAG, e.g. ghcr.io/me "
                                        "(default: $FT_REGISTRY): the name ft launch and ft serve up pull"),
    push: bool = typer.Option(False, "--push", help="push REGISTRY/ft-KIND:TAG after the build"),
    build_arg: list[str] | None = typer.Option(None, "--build-arg", help=BUILD_ARG_HELP),
    network: str | None = typer.Option(None, "--network", help="network for RUN steps, e.g. host"),
    no_cache: bool = typer.Option(False, "--no-cache", help="rebuild every layer"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="show the steps only, not their output"),
) -> None:
    """Build the image with the docker SDK and tag it with its content hash.

    Tagged ft-KIND:TAG (what ft run --docker runs) and, with --registry or FT_REGISTRY, REGISTRY/ft-KIND:TAG,
    the very name ft launch (GPU image) and ft serve up (vLLM image) use with that registry; --push publishes it.
    """
    from images.build import build_image
    from images.tags import image_def, resolve_registry

    try:
        image_def(kind)
    except (ValueError, FileNotFoundError) as e:
        raise BadInput(str(e)) from None
    prefix, source = resolve_registry(registry)  # BadInput naming --registry or FT_REGISTRY
    ref = build_image(kind, console, build_args=_build_args(build_arg), push=push, network_mode=network,
                      nocache=no_cache, verbose=not quiet,
                      registry=None if source == "default" else prefix)  # BuildError: exit 1, docker's reason
    print(ref)


def register(app: typer.Typer) -> None:
    app.add_typer(image_app, name="image")


if __name__ == "__main__":
    image_app()  # `python -m images.cli build gpu …` (images/test_docker.sh): without the rest of `ft`
