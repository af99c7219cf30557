"""vLLM where the trainer is: the training image's vLLM layer pins a vLLM that the installed TRL supports
together with the image's torch and the tested transformers/TRL, and `auto` (GRPO's `use_vllm`,
evaluation's backend) means vLLM only when it is installed and a CUDA GPU is present. This machine has
neither vLLM nor a GPU, so `auto` must resolve to transformers here; vLLM's own generation is GPU-only."""

from __future__ import annotations

import itertools
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from images import vllm_lock
from trainer import generation
from trainer.errors import EXIT_BAD_INPUT, describe
from trainer.models import CapabilityError

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "images" / "locks"


def _pins(name: str) -> dict[str, str]:
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1]
            for line in (LOCKS / name).read_text().splitlines() if line and not line.startswith("#")}


def _dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", (ROOT / "Dockerfile.gpu").read_text(), re.M).group(1)


def _image_pins() -> dict[str, str]:
    """What the training image installs: gpu.txt, the vLLM layer over it, torch & co. from the Dockerfile."""
    pins = {**_pins("gpu.txt"), **_pins("gpu-vllm.txt")}
    pins.update(torch=_dockerfile_arg("TORCH_VERSION"), torchvision=_dockerfile_arg("TORCHVISION_VERSION"),
                torchaudio=_dockerfile_arg("TORCHAUDIO_VERSION"))
    return pins


# ----------------------------------------------------------------------------------------- the lock
def test_vllm_pin_is_in_the_range_the_installed_trl_supports() -> None:
    """TRL declares its vLLM range in its `vllm` extra (and warns outside it in is_vllm_available)."""
    trl_vllm = [Requirement(r) for r in metadata.requires("trl") or []
                if Requirement(r).name == "vllm" and 'extra == "vllm"' in r]
    assert trl_vllm, "the installed TRL names no vLLM range"
    vllm = _pins("gpu-vllm.txt")["vllm"]
    assert trl_vllm[0].specifier.contains(vllm), (vllm, str(trl_vllm[0].specifier))
    assert f"vllm=={vllm}" == vllm_lock.VLLM
    # TRL is not moved by the layer: the image's TRL is the one tested here, the one whose range that is.
    assert "trl" not in _pins("gpu-vllm.txt")
    assert _pins("gpu.txt")["trl"] == metadata.version("trl")


def test_the_image_meets_vllms_own_requirements() -> None:
    """The layer's header carries vLLM's requirements on torch & co. (from its metadata, at lock time):
    the image's pins of torch, torchvision, torchaudio, transformers, huggingface_hub, tokenizers, numpy
    all satisfy them, and the tested torch/transformers/TRL are the ones vLLM was resolved with."""
    header = next(line for line in (LOCKS / "gpu-vllm.txt").read_text().splitlines()
                  if line.startswith("# vllm ") and " requires: " in line)
    needs = [Requirement(r) for r in header.split(" requires: ", 1)[1].split("; ")]
    assert {canonicalize_name(r.name) for r in needs} >= {"torch", "transformers", "huggingface-hub"}
    image = _image_pins()
    for req in needs:
        have = image[canonicalize_name(req.name)]
        assert req.specifier.contains(have, prereleases=True), f"{req} but the image has {have}"
    assert image["torch"] == metadata.version("torch").split("+")[0] == _pins("gpu.txt")["torch"]
    assert image["transformers"] == metadata.version("transformers")


def test_layer_is_pinned_and_leaves_torchs_build_to_torchs_index() -> None:
    layer = _pins("gpu-vllm.txt")
    for line in (LOCKS / "gpu-vllm.txt").read_text().splitlines():
        assert line.startswith("#") or re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^\s]*", line), line
    assert not set(layer) & vllm_lock.WITH_TORCH
    tested = _pins("gpu.txt")
    # Only what vLLM adds, plus the few pins the module says it moves (and why).
    moved = {k for k in layer if k in tested}
    assert moved <= vllm_lock.RELEASED, moved - vllm_lock.RELEASED
    # vLLM's wheel links CUDA 13, so the image's torch is a CUDA 13 build on a CUDA 13 base.
    assert _dockerfile_arg("TORCH_INDEX_URL").endswith("/cu130")
    assert _dockerfile_arg("BASE").startswith("nvidia/cuda:13.")


def test_dockerfile_installs_the_layer_after_the_tested_lock_and_can_leave_it_out() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    assert text.index("-r /tmp/gpu.txt") < text.index("-r /tmp/gpu-vllm.txt") < text.index("&& pip check")
    assert 'if [ "${VLLM}" != "none" ]' in text
    assert "--build-arg VLLM=none" in (ROOT / "images" / "test_docker.sh").read_text()  # the CPU variant


# ------------------------------------------------------------------------------------- auto
def _expected(setting: str, installed: bool, cuda: bool) -> bool | type[Exception]:
    if setting == "off":
        return False
    if installed and cuda:
        return True
    return CapabilityError if setting == "on" else False


@pytest.mark.parametrize(("setting", "installed", "cuda"),
                         list(itertools.product(["auto", "on", "off"], [True, False], [True, False])))
def test_vllm_decision_exhaustive(setting: str, installed: bool, cuda: bool) -> None:
    expected = _expected(setting, installed, cuda)
    if expected is CapabilityError:
        with pytest.raises(CapabilityError) as info:
            generation.decide_vllm(setting, installed, cuda)  # type: ignore[arg-type]
        assert describe(info.value)[0] == EXIT_BAD_INPUT  # a clear refusal, exit 2, no traceback
        assert ("vLLM installed" in str(info.value)) == (not installed)
        assert ("a CUDA GPU" in str(info.value)) == (not cuda)
    else:
        assert generation.decide_vllm(setting, installed, cuda) is expected  # type: ignore[arg-type]


def test_auto_on_this_cpu_machine_is_no_vllm() -> None:
    """The real probe here: no vLLM, no CUDA. GRPO builds TRL's own generation, evaluation transformers."""
    import torch

    from trainer.recipes import grpo

    assert not torch.cuda.is_available()
    assert grpo.use_vllm is generation.use_vllm  # one decision for training and evaluation
    assert generation.use_vllm("auto") is False
    assert generation.pick_backend("auto") == "transformers"
    assert generation.pick_backend("transformers") == "transformers"
    with pytest.raises(CapabilityError):
        generation.use_vllm("on")
    with pytest.raises(CapabilityError):
        generation.pick_backend("vllm")


def test_auto_with_vllm_installed_but_no_gpu_is_still_no_vllm(tmp_path: Path, monkeypatch) -> None:
    """An installed vLLM on a machine without CUDA (a CPU box built from the image): still transformers.
    A package named vllm on the path stands in for the install (find_spec is the probe); no vLLM code runs."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert generation.vllm_installed()
    assert generation.use_vllm("auto") is False
    assert generation.pick_backend("auto") == "transformers"
    with pytest.raises(CapabilityError, match="a CUDA GPU"):
        generation.use_vllm("on")

