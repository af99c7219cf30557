"""The serving image's start step: pull a trained model from the store into a local folder for vLLM.

    python -m trainer.serve_pull SOURCE_URI DEST

SOURCE_URI is a folder in the store (`s3://bucket/prefix/runs/<run>/<stage>/merged`, a local path, or
`file://…`) holding a merged model or a PEFT adapter. It is pulled only when its `_COMPLETE` marker is
there (a run still uploading, or one cut off half-way, is never served), and not pulled again when DEST
already holds a complete copy of the same SOURCE_URI (a restarted replica keeps its volume). Prints what
DEST holds.

Exit codes follow the trainer's: 0 ok, 2 bad input (nothing complete there), 75 store unreachable
(retryable). Kept free of heavy imports: the serving image carries only boto3 and rich for this.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRYABLE, BadInput
from trainer.store import MARKER, StoreUnavailable, split_uri

SOURCE = "_SOURCE"  # which store folder a local copy came from: a changed MODEL_URI pulls afresh


class PullError(BadInput):
    pass


def describe(dest: Path) -> str:
    """`adapter r=<rank> base=<base>` for a PEFT adapter folder, `model` for full weights."""
    cfg = dest / "adapter_config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        return f"adapter r={data.get('r')} base={data.get('base_model_name_or_path')}"
    if (dest / "config.json").is_file():
        return "model"
    raise PullError(f"{dest} holds neither a model (config.json) nor a PEFT adapter (adapter_config.json)")


def vllm_lora_rank(adapter: Path) -> int:
    """The --max-lora-rank vLLM needs for this adapter (its `r`, rounded up to a rank vLLM allows)."""
    from trainer.generation import vllm_lora_rank as round_up

    return round_up(int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"]))


def pull(source_uri: str, dest: Path, progress: bool = True) -> Path:
    dest = Path(dest)
    if (dest / MARKER).exists() and _source_of(dest) == source_uri:
        return dest  # a complete copy of the same artifact from an earlier start of this replica
    store, key = split_uri(source_uri.removeprefix("file://"))
    if not store.is_complete(key):
        raise PullError(f"{source_uri}: no complete artifact there (no {MARKER} marker): wrong path, or the run "
                        "has not finished uploading it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    store.download_dir(key, dest, progress=progress)  # into a temporary sibling, renamed at the end
    (dest / MARKER).unlink(missing_ok=True)
    (dest / SOURCE).write_text(source_uri + "\n", encoding="utf-8")
    (dest / MARKER).touch()  # last: only a finished copy of a known source is ever reused
    return dest


def _source_of(dest: Path) -> str | None:
    try:
        return (dest / SOURCE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--lora-rank":
        print(vllm_lora_rank(Path(argv[1])))
        return EXIT_OK
    if len(argv) != 2 or argv[0].startswith("-"):
        print("usage: python -m trainer.serve_pull SOURCE_URI DEST\n"
              "       python -m trainer.serve_pull --lora-rank ADAPTER_DIR", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        dest = pull(argv[0], Path(argv[1]), progress=sys.stderr.isatty())
        print(f"{dest}: {describe(dest)}")
    except StoreUnavailable as e:
        print(f"serve_pull: {e}", file=sys.stderr)
        return EXIT_RETRYABLE
    except (PullError, FileNotFoundError, ValueError) as e:
        print(f"serve_pull: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
