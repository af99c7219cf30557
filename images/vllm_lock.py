"""The vLLM layer of the training image: `images/locks/gpu-vllm.txt`, resolved by pip over the tested lock.

    python -m images.lock gpu-vllm      (after `python -m images.lock gpu`; needs the package index)

vLLM goes into the training image so GRPO can generate with it colocated (`use_vllm: auto`, as TRL
documents) and evaluation can use its engine. It cannot come from the venv the tests ran in: vLLM is
CUDA-only, and it moves a few tested pins (vLLM 0.31 needs huggingface_hub>=1.31, which needs click>=8.4.2,
while the venv keeps SkyPilot's click<8.2; mistral-common needs numpy<2.4). So pip's resolver is asked for
the tested pins plus vLLM, with only those pins released, and the layer is what it adds or changes.
torch, torchvision and torchaudio (vLLM pins all three exactly) and triton come from torch's CUDA index in
the image's first step, built together, so they are named here and left out of the layer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The newest vLLM that TRL 1.16 supports (trl's `vllm` extra and trl.import_utils.is_vllm_available:
# 0.22.0 to 0.31.0) and that pins our torch 2.13.0 (0.30 and 0.31 do). Its wheel links libcudart.so.13,
# so the image's torch is a CUDA 13 build (Dockerfile.gpu).
VLLM = "vllm==0.31.0"
# Tested pins vLLM moves (see above); the resolver picks these.
RELEASED = {"huggingface-hub", "click", "numpy", "setuptools"}  # setuptools: vLLM wants <81 on 3.12
# What vLLM requires only on the image's Python (3.12, Ubuntu 24.04) but not on the 3.11 that resolves here.
IMAGE_PYTHON_ONLY = ["setuptools>=77.0.3,<81.0.0", "six>=1.16.0"]
# Installed from torch's CUDA index with torch (their versions must match its build), not from the layer.
WITH_TORCH = {"torch", "torchvision", "torchaudio", "triton", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc"}
# vLLM's own requirements on these go into the header, where tests/test_vllm_image.py checks them.
CHECKED = {"torch", "torchvision", "torchaudio", "transformers", "huggingface-hub", "tokenizers", "numpy"}
HEADER = [
    "vLLM layer of Dockerfile.gpu: what vLLM adds to or changes in images/locks/gpu.txt, pinned (pip's resolver",
    "over the tested pins + {vllm}; images/vllm_lock.py says why each moved pin moves). Installed with --no-deps",
    "after gpu.txt; torch, torchvision, torchaudio, triton come from torch's CUDA index. Regenerate:",
    "python -m images.lock gpu-vllm",
]


def resolve(requirements: list[str]) -> dict[str, tuple[str, str, list[str]]]:
    """canonical name -> (Name, version, requires_dist) as pip would install them (a dry run, no install)."""
    with tempfile.TemporaryDirectory() as tmp:
        req_file, report = Path(tmp) / "req.txt", Path(tmp) / "report.json"
        req_file.write_text("\n".join(requirements) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), "-r", str(req_file)], check=True)
        data = json.loads(report.read_text())
    out = {}
    for item in data["install"]:
        meta = item["metadata"]
        version = meta["version"].split("+")[0]  # torch's local label (+cpu here) is not the image's build
        out[canonicalize_name(meta["name"])] = (meta["name"], version, meta.get("requires_dist") or [])
    return out


def layer_text(tested_lock: str) -> str:
    tested = {canonicalize_name(line.split("==")[0]): line for line in tested_lock.splitlines()
              if line and not line.startswith("#")}
    roots = [line for key, line in tested.items() if key not in RELEASED] + [VLLM, *IMAGE_PYTHON_ONLY]
    resolved = resolve(roots)
    name, version, requires = resolved["vllm"]
    vllm_needs = sorted(r for r in requires
                        if "extra ==" not in r and canonicalize_name(Requirement(r).name) in CHECKED)
    lines = [f"{n}=={v}" for key, (n, v, _) in sorted(resolved.items())
             if key not in WITH_TORCH and tested.get(key) != f"{n}=={v}"]
    header = [*(h.format(vllm=VLLM) for h in HEADER), f"{name} {version} requires: " + "; ".join(vllm_needs)]
    return "".join(f"# {h}\n" for h in header) + "".join(line + "\n" for line in lines)
