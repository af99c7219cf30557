"""Validation of data files and job specs before a cent is spent.

Streams each JSONL file once in bounded memory (a few bytes of hash per row for duplicate and
overlap checks), checks every line against its kind's schema, and measures token lengths with the
job's real tokenizer and chat template in batches. Every finding names the file and line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer.textio import (
    ROLE_OF_KIND,
    Kind,
    RowError,
    RowShapes,
    canonical,
    check_row,
    iter_jsonl,
)

__all__ = ["ROLE_OF_KIND", "Kind", "FileReport", "Finding", "check_row", "validate_file", "test_prompt_digests"]

BATCH = 512
MAX_FINDINGS_PER_FILE = 200  # keep reports readable; counts stay exact


@dataclass
class Finding:
    file: str
    line: int | None
    severity: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


@dataclass
class FileReport:
    file: str
    kind: str
    rows: int = 0
    errors: int = 0
    warnings: int = 0
    duplicates: int = 0
    overlap: int = 0
    truncated: int = 0
    token_min: int | None = None
    token_max: int | None = None
    token_sum: int = 0
    token_counted: int = 0
    findings: list[Finding] = field(default_factory=list)

    def add(self, line: int | None, severity: Literal["error", "warning"], message: str) -> None:
        if severity == "error":
            self.errors += 1
        else:
            self.warnings += 1
        if len(self.findings) < MAX_FINDINGS_PER_FILE:
            self.findings.append(Finding(self.file, line, severity, message))

    def to_dict(self) -> dict[str, Any]:
        mean = self.token_sum / self.token_counted if self.token_counted else None
        return {"file": self.file, "kind": self.kind, "rows": self.rows, "errors": self.errors,
                "warnings": self.warnings, "duplicates": self.duplicates, "test_overlap": self.overlap,
                "truncated": self.truncated, "tokens": {"min": self.token_min, "max": self.token_max,
                                                       "mean": round(mean, 1) if mean else None},
                "findings": [f.__dict__ for f in self.findings]}


# ------------------------------------------------------------------------------- row schemas
# The reader and the row schema live in trainer.textio: the trainer checks a bundle's files with the very
# same rules before it trains, so what passes here trains there.
def _canon(value: Any) -> str:
    return canonical(value)


def _digest(value: Any) -> bytes:
    return hashlib.blake2b(_canon(value).encode(), digest_size=8).digest()


def prompt_text(row: dict) -> str:
    """The user's text of a row, for train/test overlap: the last user message."""
    value = row.get("messages") or row.get("prompt")
    if isinstance(value, str):
        return value.strip()
    users = [m.get("content", "") for m in value or [] if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1].strip() if users else ""


def conversation(row: dict, kind: Kind) -> list[dict] | str:
    """What the model will see for this row, for token counting (chosen side for DPO)."""
    if kind == "sft":
        return row["messages"]
    prompt = row["prompt"]
    reply = row.get("chosen") if kind == "dpo" else None
    if isinstance(prompt, str):
        return prompt + (reply if isinstance(reply, str) else "")
    if isinstance(reply, list):
        return prompt + reply
    if isinstance(reply, str):
        return prompt + [{"role": "assistant", "content": reply}]
    return prompt


# ------------------------------------------------------------------------------ streaming
def _lines(path: Path, report: FileReport) -> Iterator[tuple[int, Any]]:
    """Parsed rows (trainer.textio's strict reader); unreadable lines become findings."""
    for number, row in iter_jsonl(path, report.file):
        report.rows += 1
        if isinstance(row, RowError):
            report.add(number, "error", row.message)
        else:
            yield number, row


LONG_TEXT = 64 * 1024  # characters; a longer text is counted piece by piece


class TokenCounter:
    """Batched token lengths with the job's tokenizer and chat template. A long text is counted in
    pieces (the tokenizer's ids for a 50 MB row would take gigabytes), stopping once it is past
    `stop_after` tokens: past max_length the exact count does not matter, only that it is truncated."""

    def __init__(self, tokenizer: Any, stop_after: int | None = None, generation_prompt: bool = False):
        self.tokenizer = tokenizer
        self.stop_after = stop_after
        self.generation_prompt = generation_prompt  # a GRPO prompt is counted as TRL feeds it: answer invited

    def _count(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _count_long(self, text: str) -> int:
        total = 0
        for start in range(0, len(text), LONG_TEXT):  # a piece boundary may split a token: ±1 per piece
            total += self._count([text[start:start + LONG_TEXT]])[0]
            if self.stop_after is not None and total > self.stop_after:
                break
        return total

    def lengths(self, items: list[list[dict] | str]) -> list[int]:
        texts = [x if isinstance(x, str) else self.tokenizer.apply_chat_template(
            x, tokenize=False, add_generation_prompt=self.generation_prompt) for x in items]
        short = [t for t in texts if len(t) <= LONG_TEXT]
        counted = iter(self._count(short) if short else [])
        return [next(counted) if len(t) <= LONG_TEXT else self._count_long(t) for t in texts]


class _Lengths:
    """Token lengths of a file's rows, counted in batches into its report; truncation is reported once
    per file (a long tail of rows is a setting, not many problems)."""

    def __init__(self, report: FileReport, tokenizer: Any, max_length: int | None, kind: Kind | None = None):
        self.report, self.max_length, self.kind = report, max_length, kind
        self.counter = TokenCounter(tokenizer, max_length, generation_prompt=kind == "grpo") \
            if tokenizer is not None else None
        self.pending: list[tuple[int, list[dict] | str]] = []
        self.truncated_lines: list[int] = []  # the first five

    def add(self, number: int, conversation: list[dict] | str) -> bool:
        """Queue one row; True when a batch was counted."""
        self.pending.append((number, conversation))
        if len(self.pending) < BATCH:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if not pending or self.counter is None:
            return
        r = self.report
        for (number, _), n in zip(pending, self.counter.lengths([c for _, c in pending]), strict=True):
            r.token_min = n if r.token_min is None else min(r.token_min, n)
            r.token_max = n if r.token_max is None else max(r.token_max, n)
            r.token_sum += n
            r.token_counted += 1
            if self.max_length and n > self.max_length:
                r.truncated += 1
                if len(self.truncated_lines) < 5:
                    self.truncated_lines.append(number)

    def finish(self) -> None:
        self.flush()
        r, shown = self.report, self.truncated_lines
        lines = f"lines {', '.join(map(str, shown))}{', …' if r.truncated > 5 else ''}"
        if r.truncated and self.kind == "grpo":
            # The trainer drops GRPO prompts over the stage's prompt budget (TRL does not truncate them);
            # when none is left it stops with exit 2 -- better said here, before any GPU is rented.
            if r.truncated == r.token_counted:
                r.add(shown[0], "error",
                      f"every GRPO prompt ({r.truncated}) is longer than the stage's prompt budget max_length "
                      f"{self.max_length} tokens; the GRPO stage would stop with nothing to train on "
                      f"(raise the GRPO stage's max_length)")
            else:
                share = 100 * r.truncated / max(r.token_counted, 1)
                r.add(shown[0], "warning",
                      f"{r.truncated} GRPO prompts ({share:.1f}%) are longer than the stage's prompt budget "
                      f"max_length {self.max_length} tokens and will be dropped ({lines})")
        elif r.truncated:
            share = 100 * r.truncated / max(r.token_counted, 1)
            r.add(shown[0], "warning",
                  f"{r.truncated} rows ({share:.1f}%) exceed max_length {self.max_length} tokens and would be "
                  f"truncated (lines {', '.join(map(str, shown))}{', …' if r.truncated > 5 else ''})")


def validate_file(path: Path, kind: Kind, *, tokenizer: Any = None, max_length: int | None = None,
                  answer_parser: Callable[[str], Any] | None = None, test_prompts: set[bytes] | None = None,
                  display: str | None = None, on_progress: Callable[[int], None] | None = None) -> FileReport:
    report = FileReport(display or str(path), kind)
    path = Path(path)
    if not path.is_file():
        report.add(None, "error", "file not found")
        return report
    lengths = _Lengths(report, tokenizer, max_length, kind)
    shapes = RowShapes()
    seen: dict[bytes, int] = {}
    done = 0
    with open(path, "rb") as probe:
        if probe.read(3) == b"\xef\xbb\xbf":
            report.add(1, "error", "starts with a UTF-8 byte-order mark; save without BOM")
    for number, row in _lines(path, report):
        problem = check_row(row, kind, answer_parser if kind in ("grpo", "test") else None) \
            or shapes.problem(number, row)
        if problem:
            report.add(number, "error", problem)
            continue
        digest = _digest(row)
        if digest in seen:
            report.duplicates += 1
            report.add(number, "warning", f"exact duplicate of line {seen[digest]}")
        else:
            seen[digest] = number
        if test_prompts is not None and kind != "test" and _digest(prompt_text(row)) in test_prompts:
            report.overlap += 1
            report.add(number, "error", "this prompt is also in the test set (test item leaks into train)")
        if lengths.add(number, conversation(row, kind)) and on_progress:
            on_progress(number - done)
            done = number
    lengths.finish()
    if report.rows == 0:
        report.add(None, "error", "no rows")
    return report


def test_prompt_digests(path: Path) -> set[bytes]:
    digests = set()
    scratch = FileReport(str(path), "test")
    if Path(path).is_file():
        for _, row in _lines(Path(path), scratch):
            if isinstance(row, dict) and ("prompt" in row or "messages" in row):
                digests.add(_digest(prompt_text(row)))
    return digests
