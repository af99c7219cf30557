"""The GPU image's last build step: import every library the trainer uses and check that the binary
pieces fit together, so a broken image fails its build instead of its first paid GPU hour.

Runs without a GPU (image builders have none): imports only, no kernels. Standard library otherwise.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import subprocess
import sys

MODULES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "bitsandbytes",
           "lm_eval", "sacrebleu", "boto3", "trainer.spec", "trainer.store", "trainer.bundle"]


def main() -> int:
    for name in MODULES:
        importlib.import_module(name)
    import torch

    cuda = torch.version.cuda
    abi = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    print(f"torch {torch.__version__} (CUDA {cuda or 'none'}, cxx11abi {abi})")
    try:
        flash = md.version("flash-attn")
    except md.PackageNotFoundError:
        flash = None
    if flash:
        # The wheel's local version names what it was compiled against; a mismatch fails at import
        # with undefined symbols, or worse, at the first attention call. Check both.
        local = flash.partition("+")[2]
        torch_mm = ".".join(torch.__version__.split(".")[:2])
        want = f"cu{(cuda or '?').split('.')[0]}torch{torch_mm}cxx11abi{str(abi).upper()}"
        if local and local != want:
            print(f"flash-attn {flash} was built for {local}, this torch needs {want}", file=sys.stderr)
            return 1
        importlib.import_module("flash_attn")
        print(f"flash-attn {flash}")
    elif cuda:
        print("flash-attn not installed: attention falls back to sdpa", file=sys.stderr)
    try:  # vLLM: GRPO's colocated generation and evaluation's engine (trainer.generation.decide_vllm)
        vllm = md.version("vllm")
    except md.PackageNotFoundError:
        vllm = None
    if vllm:
        # Its wheel is compiled against one torch and one CUDA major: a mismatch fails here, not mid-job.
        importlib.import_module("vllm")
        print(f"vllm {vllm}")
    elif cuda:
        print("vllm not installed: GRPO and evaluation generate with transformers", file=sys.stderr)
    # COMET's layer lives outside the venv (trainer/comet_layer.py): it must import on this image's libraries.
    from trainer import comet_layer

    comet = comet_layer.import_comet(comet_layer.layer())
    print(f"comet {comet.__version__} from {comet_layer.layer()}")
    # The entrypoint itself must start.
    subprocess.run([sys.executable, "-m", "trainer", "--help"], check=True, stdout=subprocess.DEVNULL)
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
