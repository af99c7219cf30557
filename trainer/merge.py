"""Merge a LoRA adapter into its base: one safetensors model + tokenizer that transformers and vLLM
load without PEFT. All stages' adapters are relative to the original base (later stages keep
training the same adapter), so merging a stage needs only that stage's folder and `model.base`."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainer.run import Run, is_adapter
from trainer.store import MARKER, open_store

MERGE_INFO = "merge_info.json"


def merge_adapter(base: str, adapter_dir: Path, out_dir: Path, dtype: str = "auto") -> Path:
    """Load base + adapter, fold the LoRA deltas into the weights, save safetensors + tokenizer.

    Where and in which precision is trainer.models.decide_placement's decision (the one training and
    evaluation use): on a GPU the merge runs there in the model's dtype (`auto`: bf16 on Ampere or newer,
    fp16 before), loaded straight onto it -- a 7B model takes ~15 GB of GPU memory instead of ~30 GB of
    host RAM in fp32; without a GPU it runs on the CPU in fp32. Merging in the precision the model will be
    served in avoids a second rounding step later."""
    from trainer.models import load_model_for_inference, load_tokenizer, placement

    adapter_dir = Path(adapter_dir)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    where = placement(dtype)
    if is_adapter(adapter_dir):
        model = load_model_for_inference(base, adapter_dir, dtype=dtype)
        merged = model.merge_and_unload()
        kind = "lora-merged"
    else:  # full fine-tune: the stage folder already is the whole model
        merged = load_model_for_inference(base, adapter_dir, dtype=dtype)
        kind = "full"
    merged.save_pretrained(tmp, safe_serialization=True)
    tok_source = str(adapter_dir) if (adapter_dir / "tokenizer_config.json").exists() else base
    load_tokenizer(tok_source).save_pretrained(tmp)
    info: dict[str, Any] = {"base_model": base, "adapter": str(adapter_dir), "kind": kind,
                            "dtype": str(getattr(merged, "dtype", dtype)).removeprefix("torch."),
                            "merged_on": where.device}
    (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def merge_run(run: Run, stage: str | None, out: str | None = None) -> str:
    """Merge a run's stage (default: its last finished stage) into `out`: a local folder, a store URI
    (`s3://…`), or by default the run's own store at `runs/<id>/<stage>/merged/` (uploaded with the
    completion marker last, so a half-written upload never counts). Returns where it went."""
    spec = run.spec
    stage = stage or run.last_done_stage()
    adapter = run.model_dir(stage)
    # The store keeps training in the spec's dtype; on the CPU `auto` is fp32 anyway.
    dtype = spec.model.dtype
    if out is None or "://" in out:  # into a store (s3://, or file:// for a store folder): upload, marker last
        with tempfile.TemporaryDirectory(prefix="ft-merge-") as tmp:
            folder = merge_adapter(spec.model.base, adapter, Path(tmp) / "merged", dtype=dtype)
            _stamp(folder, run, stage)
            if out is None:
                run.store.upload_dir(folder, run.merged(stage), progress=False)
                return run.url(run.merged(stage))
            store_uri, _, key = out.rstrip("/").rpartition("/")
            open_store(store_uri).upload_dir(folder, key)
        return out
    folder = merge_adapter(spec.model.base, adapter, Path(out), dtype=dtype)
    _stamp(folder, run, stage)
    (folder / MARKER).write_text("")
    return str(folder)


def _stamp(folder: Path, run: Run, stage: str) -> None:
    info = json.loads((folder / MERGE_INFO).read_text())
    info.update({"run_id": run.run_id, "stage": stage, "store": run.store_uri})
    (folder / MERGE_INFO).write_text(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer merge RUN [--stage S] [--store URI] [--out DEST]`: the cloud job step
    (jobs/merge.yaml) and the same on any machine. One error boundary: a user error is one line and its
    exit code (2 bad input, 75 retryable), never a traceback."""
    import argparse
    import sys

    from trainer import settings
    from trainer.errors import describe, mask_secrets

    parser = argparse.ArgumentParser(prog="python -m trainer merge",
                                     description="Merge a run's stage adapter into its base, into the store.")
    parser.add_argument("run", help="s3://…/runs/<id>, <store>/runs/<id>, or a run id in --store")
    parser.add_argument("--stage", default="", help="default: the run's last finished stage")
    parser.add_argument("--store", default="", help="store of a bare run id (default: $FT_STORE)")
    parser.add_argument("--out", default="", help="default: runs/<id>/<stage>/merged/ in the run's store")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:  # "" is "not given": a job YAML's empty env
        run = Run.from_ref(args.run, args.store or settings.store() or settings.DEFAULT_STORE)
        print(merge_run(run, args.stage or None, args.out or None))
    except Exception as e:  # noqa: BLE001 -- classified; a bug keeps its traceback
        found = describe(e)
        if found is None:
            raise
        print(mask_secrets(f"[exit {found[0]}] {found[1]}"), file=sys.stderr)
        return found[0]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
