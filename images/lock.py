"""Write the pinned requirement locks of the images from the environment the tests ran in.

    python -m images.lock gpu|vllm      (run in the venv made by `make setup`)
    python -m images.lock gpu-vllm      (the training image's vLLM layer: images/vllm_lock.py)

The lock is the full dependency closure of the image's roots, read from the installed packages'
metadata, so the image gets exactly the versions this project was tested with. Local version labels
(`torch==2.13.0+cpu`) are dropped: the image installs the CUDA build of the same version.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# What each image needs at run time. The GPU image installs the project itself separately (from the
# source in the build context) and with --no-deps, so it is left out of its own lock.
ROOTS: dict[str, list[str]] = {
    "gpu": ["llm-finetuning[train]"],
    # The vLLM image brings its own torch and vLLM; our start step only needs the store's libraries.
    "vllm": ["boto3", "rich"],
}
SELF = "llm-finetuning"
HEADERS = {
    "gpu": [
        "Lock for Dockerfile.gpu: `llm-finetuning[train]` and every dependency, pinned (same set as the tested venv).",
        "torch is installed first from the CUDA index (its nvidia-* and triton pins come with it); this file is",
        "then installed with --no-deps, so nothing unpinned gets in. Regenerate: python -m images.lock gpu",
    ],
    "vllm": [
        "Lock for Dockerfile.vllm: the libraries of our start step (trainer.serve_pull → trainer.store), pinned.",
        "Installed with --no-deps into /opt/ft/lib, apart from vLLM's own packages, so vLLM's pins are untouched.",
        "Regenerate: python -m images.lock vllm",
    ],
}


def closure(roots: list[str]) -> dict[str, str]:
    """canonical name -> 'Name==version' for the roots and everything they require (markers evaluated here)."""
    seen: dict[str, set[str]] = {}
    pins: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        extras = set(req.extras)
        if key in seen and extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        dist = metadata.distribution(req.name)
        version = Version(dist.version)
        pins[key] = f"{dist.metadata['Name']}=={version.public}"
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ["", *sorted(extras)]):
                todo.append(sub)
    return pins


def lock_text(image: str) -> str:
    pins = closure(ROOTS[image])
    pins.pop(canonicalize_name(SELF), None)
    header = "".join(f"# {line}\n" for line in HEADERS[image])
    return header + "".join(pins[k] + "\n" for k in sorted(pins))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in (*ROOTS, "gpu-vllm"):
        print(f"usage: python -m images.lock {'|'.join(ROOTS)}|gpu-vllm", file=sys.stderr)
        return 2
    locks = Path(__file__).parent / "locks"
    path = locks / f"{argv[0]}.txt"
    if argv[0] == "gpu-vllm":  # resolved by pip over the tested lock (the index, not this venv)
        from images.vllm_lock import layer_text

        text = layer_text((locks / "gpu.txt").read_text(encoding="utf-8"))
    else:
        text = lock_text(argv[0])
    path.write_text(text, encoding="utf-8")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
