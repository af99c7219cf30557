"""Generation, the one place a model writes text: greedy, batched completions with transformers (CPU,
Mac, CI) or vLLM's offline engine (GPU, the adapter as a LoRA request), token streaming for `ft chat`,
and mlx-lm on a Mac (prototype evaluation, `ft chat --mlx`). Heavy libraries are imported inside the
functions, so the serving image's puller can use the rank table without torch."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

Backend = Literal["auto", "transformers", "vllm"]
Messages = list[dict[str, str]]

# vLLM accepts only these `max_lora_rank` values.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(r: int) -> int:
    """The adapter's rank rounded up to a `max_lora_rank` vLLM accepts."""
    for allowed in VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    from trainer.errors import BadInput

    raise BadInput(f"LoRA rank {r} exceeds vLLM's largest supported max_lora_rank ({VLLM_LORA_RANKS[-1]})")


VllmSetting = Literal["auto", "on", "off"]


def decide_vllm(setting: VllmSetting, installed: bool, cuda: bool) -> bool:
    """The one vLLM decision, a pure function of the setting and the machine, for GRPO's `use_vllm` and
    evaluation's backend alike: `auto` is vLLM when it is installed and a CUDA GPU is present (the training
    image carries vLLM, so that is every cloud job; a laptop or CI machine gets transformers); `on`
    without both is refused (exit 2) rather than silently slower; `off` never."""
    available = installed and cuda
    if setting == "on" and not available:
        from trainer.models import CapabilityError

        missing = " and ".join(w for w, ok in (("vLLM installed", installed), ("a CUDA GPU", cuda)) if not ok)
        raise CapabilityError(f"vLLM was asked for (use_vllm: on / --backend vllm) but this machine lacks "
                              f"{missing} (the training image, ft-gpu, on a GPU machine has both); use auto or off")
    return setting == "on" or (setting == "auto" and available)


def vllm_installed() -> bool:
    # find_spec, not import: importing vLLM takes seconds and initialises CUDA; it is imported where used.
    return importlib.util.find_spec("vllm") is not None


def use_vllm(setting: VllmSetting = "auto") -> bool:
    """decide_vllm for this machine (torch is only imported when vLLM is there to use)."""
    installed = vllm_installed()
    if not installed:
        return decide_vllm(setting, False, False)
    import torch

    return decide_vllm(setting, True, torch.cuda.is_available())


def pick_backend(backend: Backend = "auto") -> Literal["transformers", "vllm"]:
    """Evaluation's generation backend: `auto` as GRPO's `use_vllm: auto` (decide_vllm)."""
    if backend == "transformers":
        return "transformers"
    return "vllm" if use_vllm("on" if backend == "vllm" else "auto") else "transformers"


def chat_text(tokenizer: Any, messages: Messages) -> str:
    """The prompt as the model was trained to see it: its chat template with the answer invited."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # A base model without a chat template: plain text turns, answer invited at the end.
    return "\n\n".join(m["content"] for m in messages) + "\n"


def load_model(base: str, model_dir: Path | None = None, dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) for transformers generation: `base`, with a stage's adapter or full weights
    from `model_dir`; the tokenizer the stage was trained with when its folder carries one. A LoRA
    adapter is merged into the weights first, in memory, as `ft merge` does: the same function without
    two extra matmuls at every linear layer (8 GSM8K prompts x 128 greedy tokens on SmolLM2-135M with an
    all-linear r=8 adapter, CPU: 18.7 s unmerged, 12.9 s merged). In fp32 on a CPU the merged weights
    differ from base + delta by fp32 rounding only; on a GPU the merge is in the load dtype (bf16/fp16)."""
    from trainer.models import load_model_for_inference, load_tokenizer
    from trainer.run import is_adapter

    model = load_model_for_inference(base, model_dir, dtype=dtype)
    if model_dir is not None and is_adapter(model_dir):
        model = model.merge_and_unload()
    has_tokenizer = model_dir is not None and (Path(model_dir) / "tokenizer_config.json").exists()
    return model, load_tokenizer(str(model_dir) if has_tokenizer else base)


def generate_transformers(model: Any, tokenizer: Any, prompts: list[Messages], max_new_tokens: int,
                          batch_size: int = 8) -> list[str]:
    """Greedy completions, batched with left padding (so every prompt ends where generation starts)."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [chat_text(tokenizer, m) for m in prompts]
    outputs: list[str] = []
    device = next(model.parameters()).device
    for i in range(0, len(texts), batch_size):
        # The chat template already holds the special tokens; adding BOS again would shift the model.
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return [o.strip() for o in outputs]


def generate_vllm(base_path: str, model_dir: Path | None, prompts: list[Messages],
                  max_new_tokens: int) -> list[str]:  # pragma: no cover -- needs a GPU and vLLM
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from trainer.run import is_adapter

    lora = None
    kwargs: dict[str, Any] = {}
    if model_dir is not None and is_adapter(model_dir):
        rank = json.loads((Path(model_dir) / "adapter_config.json").read_text())["r"]
        kwargs = {"enable_lora": True, "max_lora_rank": vllm_lora_rank(rank)}
        lora = LoRARequest("adapter", 1, str(model_dir))
    elif model_dir is not None:
        base_path = str(model_dir)  # full fine-tune: the stage folder is the whole model
    llm = LLM(model=base_path, dtype="auto", **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    results = llm.chat(prompts, params, lora_request=lora, use_tqdm=False)
    return [r.outputs[0].text.strip() for r in results]


def generate_mlx(model: Any, tokenizer: Any, prompts: list[Messages], max_tokens: int,
                 on_each: Callable[[], None] | None = None) -> list[str]:
    """Greedy completions with mlx-lm, one prompt at a time; `on_each` after each (a progress bar)."""
    from mlx_lm import generate

    outs = []
    for messages in prompts:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        outs.append(generate(model, tokenizer, prompt, max_tokens=max_tokens, verbose=False))
        if on_each is not None:
            on_each()
    return outs


def stream_transformers(model: Any, tokenizer: Any, messages: Messages, max_new_tokens: int = 256) -> Iterator[str]:
    """Greedy generation in a thread, text pieces yielded as the streamer decodes them."""
    from transformers import TextIteratorStreamer

    enc = tokenizer(chat_text(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**enc, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    thread = threading.Thread(target=model.generate, kwargs=kwargs, daemon=True)
    thread.start()
    yield from streamer
    thread.join()


_MLX: dict[tuple[str, str | None], Any] = {}


def stream_mlx(model_path: str, adapter: Path | None, messages: Messages,
               max_new_tokens: int = 256) -> Iterator[str]:  # pragma: no cover -- exercised on a Mac
    from mlx_lm import load, stream_generate

    key = (model_path, str(adapter) if adapter else None)
    if key not in _MLX:  # a chat loads once, not once per turn
        _MLX[key] = load(model_path, adapter_path=str(adapter) if adapter else None)
    model, tokenizer = _MLX[key]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    for response in stream_generate(model, tokenizer, prompt, max_tokens=max_new_tokens):
        yield response.text
