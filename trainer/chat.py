"""`ft chat`: talk to a model in the terminal, tokens streamed as they are generated, with the
model's own chat template. transformers everywhere; mlx-lm on a Mac (`--mlx`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXIT_WORDS = {"/exit", "/quit", "exit", "quit"}


def stream_transformers(model: Any, tokenizer: Any, messages: list[dict[str, str]],
                        max_new_tokens: int = 256) -> Iterator[str]:
    """Greedy generation in a thread, text pieces yielded as the streamer decodes them."""
    from transformers import TextIteratorStreamer

    from trainer.evaluate import _chat_text

    enc = tokenizer(_chat_text(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**enc, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    thread = threading.Thread(target=model.generate, kwargs=kwargs, daemon=True)
    thread.start()
    yield from streamer
    thread.join()


def stream_mlx(model_path: str, adapter: Path | None, messages: list[dict[str, str]],
               max_new_tokens: int = 256) -> Iterator[str]:  # pragma: no cover -- exercised on a Mac
    from mlx_lm import load, stream_generate

    model, tokenizer = _mlx_cache(model_path, adapter, load)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    for response in stream_generate(model, tokenizer, prompt, max_tokens=max_new_tokens):
        yield response.text


_MLX: dict[tuple[str, str | None], Any] = {}


def _mlx_cache(model_path: str, adapter: Path | None, load: Callable[..., Any]) -> Any:
    key = (model_path, str(adapter) if adapter else None)
    if key not in _MLX:
        _MLX[key] = load(model_path, adapter_path=str(adapter) if adapter else None)
    return _MLX[key]


def chat_loop(
    reply: Callable[[list[dict[str, str]]], Iterator[str]],
    read: Callable[[], str],
    write: Callable[[str], None],
    system: str | None = None,
) -> list[dict[str, str]]:
    """Read a line, stream the reply, keep the conversation; `/reset` clears it, `/exit` ends.
    Returns the conversation (for tests and transcripts)."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = read()
        except (EOFError, KeyboardInterrupt):
            break
        text = line.strip()
        if not text:
            continue
        if text in EXIT_WORDS:
            break
        if text == "/reset":
            history = history[:1] if system else []
            write("(conversation cleared)\n")
            continue
        history.append({"role": "user", "content": text})
        pieces = []
        for piece in reply(history):
            pieces.append(piece)
            write(piece)
        write("\n")
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
    return history
