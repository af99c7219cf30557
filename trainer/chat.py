"""`ft chat`: talk to a model in the terminal, tokens streamed as they are generated, with the
model's own chat template. transformers everywhere; mlx-lm on a Mac (`--mlx`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_WORDS = {"/exit", "/quit", "exit", "quit"}


Reply = Callable[[list[dict[str, str]]], Iterator[str]]


def model_reply(base: str, model_dir: Path | None, mlx: bool = False, max_new_tokens: int = 256) -> Reply:
    """A function from the conversation so far to the streamed answer of `base` (+ a stage's folder)."""
    from trainer import generation

    if mlx:
        return lambda messages: generation.stream_mlx(base, model_dir, messages, max_new_tokens)
    model, tokenizer = generation.load_model(base, model_dir)
    return lambda messages: generation.stream_transformers(model, tokenizer, messages, max_new_tokens)


def chat_loop(
    reply: Reply,
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
