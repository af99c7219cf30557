"""Validation throughput: `ft validate`'s full checks vs the anchor `datasets.load_dataset("json")` +
batched chat-template tokenization of the same rows, from GSM8K size up to a million rows; peak memory
of both. Aim: ≥ 0.8× the anchor's rows/s while doing every check, with flat memory.

    .venv/bin/python benchmarks/validate.py [--sizes 7473,100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gsm8k_source, measure  # noqa: E402

OURS = """
import time
from pathlib import Path
def main(path, tokenizer):
    from mac.validate import validate_file
    from mac.validate_job import load_job_tokenizer
    tok = load_job_tokenizer(tokenizer)  # loaded outside the timing, as in the anchor
    t = time.perf_counter()
    report = validate_file(Path(path), "sft", tokenizer=tok, max_length=2048)
    return {"seconds": time.perf_counter() - t, "rows": report.rows, "errors": report.errors}
"""

ANCHOR = """
import time
def main(path, tokenizer):
    from datasets import load_dataset
    from mac.validate_job import load_job_tokenizer
    tok = load_job_tokenizer(tokenizer)
    t = time.perf_counter()
    ds = load_dataset("json", data_files=path, split="train", cache_dir=path + ".hf-cache")
    def encode(batch):
        texts = [tok.apply_chat_template(m, tokenize=False) for m in batch["messages"]]
        return {"n": [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]}
    ds = ds.map(encode, batched=True, batch_size=512, remove_columns=ds.column_names)
    return {"seconds": time.perf_counter() - t, "rows": len(ds)}
"""


def make_file(rows: int, out: Path) -> Path:
    """`rows` SFT rows from real GSM8K, repeated with a numbered suffix so none is an exact duplicate."""
    from mac.data_prep import prepare_math

    prepared = out / "prepared"
    prepare_math(str(gsm8k_source()), prepared, full=True)
    base = [json.loads(line) for line in (prepared / "sft_train.jsonl").open()]
    path = out / f"sft_{rows}.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            row = base[i % len(base)]
            if i >= len(base):
                row = {"messages": row["messages"][:-1] + [
                    {"role": "assistant", "content": row["messages"][-1]["content"] + f" (copy {i})"}]}
            f.write(json.dumps(row) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="7473,100000")
    parser.add_argument("--tokenizer", default="builtin:smollm2-135m")
    args = parser.parse_args()
    print(f"{'rows':>9} {'ours rows/s':>12} {'anchor rows/s':>14} {'ratio':>6} {'ours MB':>8} {'anchor MB':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in map(int, args.sizes.split(",")):
            path = make_file(size, Path(tmp))
            ours = measure(OURS, str(path), args.tokenizer)
            anchor = measure(ANCHOR, str(path), args.tokenizer)
            assert ours["rows"] == anchor["rows"] == size and ours["errors"] == 0
            a, b = size / ours["seconds"], size / anchor["seconds"]
            print(f"{size:>9} {a:>12.0f} {b:>14.0f} {a / b:>6.2f} {ours['peak_rss_mb']:>8.0f} "
                  f"{anchor['peak_rss_mb']:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
