"""Build (and push) the images through the docker SDK, with a progress display.

The image is tagged with its content hash (images.tags), so building twice from the same inputs gives
the same name. It is always tagged `ft-gpu:<tag>` (what `ft run --docker` runs) and, with a registry
(`--registry`, FT_REGISTRY), `REGISTRY/ft-gpu:<tag>` too: exactly the name `ft launch` puts in the job
YAML with that registry, which `--push` publishes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from images.tags import DEFAULT_REGISTRY, REPO_ROOT, content_hash, image_def, image_ref
from trainer.errors import BadInput, FtError

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


class BuildError(FtError, RuntimeError):
    """The daemon is unreachable or a build step failed: the work ran and said no (exit 1), with its message."""


def _client() -> Any:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env()
        client.ping()
    except DockerException as e:
        raise BuildError(f"cannot reach the docker daemon ({e}); is it running, and may you use it?") from None
    return client


def show_build(stream: Iterable[Mapping[str, Any]], console: Console, verbose: bool = True) -> str | None:
    """Render the daemon's build stream: a bar over the Dockerfile's steps, the output above it.
    Returns the image id; raises BuildError with the daemon's message when a step fails."""
    image_id: str | None = None
    tail: list[str] = []  # the last lines, shown with the error when a quiet build fails
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("build", total=None)
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                message = chunk.get("error") or chunk.get("errorDetail", {}).get("message", "build failed")
                if not verbose and tail:
                    console.print(escape("".join(tail[-30:])), style="dim", end="")
                raise BuildError(str(message).strip())
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            text = chunk.get("stream") or ""
            if not text:
                continue
            step = _STEP.match(text.strip())
            if step:
                n, total, instruction = int(step[1]), int(step[2]), step[3]
                bar.update(task, completed=n - 1, total=total, description=escape(instruction[:60]))
                console.print(f"[bold cyan]step {n}/{total}[/] {escape(instruction)}", highlight=False)
                continue
            tail = (tail + [text])[-200:]
            if verbose:
                console.print(escape(text.rstrip("\n")), style="dim", highlight=False)
        bar.update(task, completed=bar.tasks[0].total or 0)
    return image_id


def show_push(stream: Iterable[Mapping[str, Any]], console: Console) -> None:
    """Render the daemon's push stream: one bar per layer."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console,
                  transient=True) as bar:
        layers: dict[str, Any] = {}
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                raise BuildError(str(chunk.get("error") or chunk["errorDetail"].get("message", "push failed")))
            layer, status = chunk.get("id"), chunk.get("status", "")
            detail = chunk.get("progressDetail") or {}
            if layer and detail.get("total"):
                if layer not in layers:
                    layers[layer] = bar.add_task(f"{layer} {status.lower()}", total=detail["total"])
                bar.update(layers[layer], completed=detail.get("current", 0))
            elif layer and status in ("Pushed", "Layer already exists", "Mounted from"):
                if layer in layers:
                    bar.update(layers[layer], completed=bar.tasks[layers[layer]].total or 0)
                console.print(f"  {escape(layer)}: {escape(status)}", style="dim", highlight=False)
            elif status and not layer:
                console.print(escape(status), style="dim", highlight=False)


def build_image(
    kind: str,
    console: Console,
    build_args: Mapping[str, str] | None = None,
    push: bool = False,
    network_mode: str | None = None,
    nocache: bool = False,
    verbose: bool = True,
    root: Path = REPO_ROOT,
    registry: str | None = None,
) -> str:
    """Build `kind` from the repo at `root`, also tagged `registry/…` when given, and push that name when
    `push` (which needs the registry). Returns the registry's reference when given, else the local one."""
    if push and not registry:
        raise BadInput("--push needs a registry: --registry REGISTRY or FT_REGISTRY (e.g. ghcr.io/me; the "
                       f"default {DEFAULT_REGISTRY} holds the project's own images)")
    image = image_def(kind)
    args = dict(build_args or {})
    ref = image_ref(kind, root=root, build_args=args)
    client = _client()
    console.print(f"building [bold]{ref}[/] from {image.dockerfile}", highlight=False)
    stream = client.api.build(
        path=str(root), dockerfile=image.dockerfile, tag=ref, buildargs=args or None, rm=True, forcerm=True,
        decode=True, network_mode=network_mode, nocache=nocache,
        labels={"org.opencontainers.image.title": image.repository, "ft.content-hash": content_hash(kind, root, args)},
    )
    image_id = show_build(stream, console, verbose=verbose)
    console.print(f"[green]built[/] {ref} ({(image_id or '?')[:19]})", highlight=False)
    if not registry:
        return ref
    repository, tag = f"{registry.rstrip('/')}/{image.repository}", ref.rsplit(":", 1)[1]
    client.api.tag(ref, repository, tag)
    console.print(f"tagged [bold]{repository}:{tag}[/]", highlight=False)
    if not push:
        return f"{repository}:{tag}"
    console.print(f"pushing [bold]{repository}:{tag}[/]", highlight=False)
    show_push(client.api.push(repository, tag=tag, stream=True, decode=True), console)
    console.print(f"[green]pushed[/] {repository}:{tag}", highlight=False)
    return f"{repository}:{tag}"
