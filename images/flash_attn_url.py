"""The official prebuilt flash-attn wheel for the torch installed here (run inside the image build).

    python flash_attn_url.py VERSION     → prints the wheel's URL

flash-attn ships no wheels on PyPI (source only; compiling it takes an hour and a GPU toolchain), but
each GitHub release carries wheels named after what they were compiled against:
    flash_attn-{ver}+cu{CUDA major}torch{torch major.minor}cxx11abi{TRUE|FALSE}-cp{py}-cp{py}-linux_x86_64.whl
A wheel that differs in any of these from the installed torch fails at import with undefined symbols,
so the name is computed from torch itself rather than typed by hand. Standard library + torch only.
"""

from __future__ import annotations

import platform
import sys

RELEASES = "https://github.com/Dao-AILab/flash-attention/releases/download"


def wheel_name(version: str, cuda: str, torch_version: str, cxx11_abi: bool, python: tuple[int, int],
               machine: str = "x86_64") -> str:
    cuda_major = cuda.split(".")[0]
    torch_mm = ".".join(torch_version.split("+")[0].split(".")[:2])
    py = f"cp{python[0]}{python[1]}"
    return (f"flash_attn-{version}+cu{cuda_major}torch{torch_mm}cxx11abi{str(cxx11_abi).upper()}"
            f"-{py}-{py}-linux_{machine}.whl")


def wheel_url(version: str, cuda: str, torch_version: str, cxx11_abi: bool, python: tuple[int, int],
              machine: str = "x86_64") -> str:
    return f"{RELEASES}/v{version}/{wheel_name(version, cuda, torch_version, cxx11_abi, python, machine)}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python flash_attn_url.py FLASH_ATTN_VERSION", file=sys.stderr)
        return 2
    import torch

    if not torch.version.cuda:
        print(f"torch {torch.__version__} is not a CUDA build: no flash-attn wheel fits it", file=sys.stderr)
        return 2
    print(wheel_url(argv[0], torch.version.cuda, torch.__version__, bool(torch._C._GLIBCXX_USE_CXX11_ABI),
                    sys.version_info[:2], platform.machine()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
