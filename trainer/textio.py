"""Reading line-oriented text and JSONL safely. `str.splitlines()` also splits on U+2028, U+2029, U+0085
and other separators that JSON strings written with `ensure_ascii=False` (and Korean news text) may
contain, which would cut a JSONL row in two or shift a parallel corpus by a line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def lines(text: str) -> list[str]:
    """Lines split on `\\n` only (a trailing `\\r` dropped), without the empty piece after a final newline."""
    out = text.split("\n")
    if out and out[-1] == "":
        out.pop()
    return [line[:-1] if line.endswith("\r") else line for line in out]


def read_lines(path: str | Path) -> list[str]:
    return lines(Path(path).read_text(encoding="utf-8"))


def load_test_rows(path: str | Path) -> list[dict[str, Any]]:
    """Test rows as `{"messages": [...], "answer": str}`. Accepts the bundle format (`prompt`: a message
    list or a string) and raw GSM8K rows (`question`)."""
    rows = []
    for line in read_lines(path):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt = row.get("prompt", row.get("question"))
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or "answer" not in row:
            raise ValueError(f"{path}: each test row needs `prompt` (or `question`) and `answer`")
        rows.append({"messages": prompt, "answer": row["answer"]})
    return rows
