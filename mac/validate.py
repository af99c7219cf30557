"""Validation of data files and job specs before a cent is spent.

Streams each JSONL file once in bounded memory (a few bytes of hash per row for duplicate and
overlap checks), checks every line against its kind's schema, and measures token lengths with the
job's real tokenizer and chat template in batches. Every finding names the file and line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["sft", "dpo", "grpo", "test"]
ROLE_OF_KIND: dict[str, Kind] = {"sft_train": "sft", "sft_valid": "sft", "dpo_train": "dpo", "dpo_valid": "dpo",
                                 "grpo_train": "grpo", "test": "test"}
ROLES = {"system", "user", "assistant"}
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
def _messages(value: Any, where: str, last_role: str | None) -> str | None:
    """Problem with a ChatML message list, or None."""
    if not isinstance(value, list) or not value:
        return f"{where}: expected a non-empty list of messages"
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            return f"{where}[{i}]: expected an object with 'role' and 'content'"
        extra = set(m) - {"role", "content"}
        if extra:
            return f"{where}[{i}]: unknown keys {sorted(extra)}"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return f"{where}[{i}].role: {role!r} is not one of system, user, assistant"
        if not isinstance(content, str) or not content.strip():
            return f"{where}[{i}].content: empty or not a string"
        if role == "system" and i != 0:
            return f"{where}[{i}]: a system message may only come first"
    turns = [m["role"] for m in value if m["role"] != "system"]
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if last_role == "assistant-only":
            expected = "assistant"
        if role != expected:
            return f"{where}: roles out of order (expected {expected} at turn {i + 1}, got {role})"
    if last_role and last_role != "assistant-only" and turns and turns[-1] != last_role:
        return f"{where}: the last message must be from the {last_role}"
    if not turns:
        return f"{where}: no user or assistant message"
    return None


def _text_or_messages(row: dict, key: str, last_role: str) -> str | None:
    if key not in row:
        return f"missing key '{key}'"
    value = row[key]
    if isinstance(value, str):
        return None if value.strip() else f"{key}: empty"
    return _messages(value, key, last_role)


def check_row(row: Any, kind: Kind, answer_parser: Callable[[str], Any] | None) -> str | None:
    if not isinstance(row, dict):
        return "expected a JSON object per line"
    if kind == "sft":
        allowed = {"messages"}
        problem = _messages(row.get("messages"), "messages", "assistant") if "messages" in row \
            else "missing key 'messages'"
    elif kind == "dpo":
        allowed = {"prompt", "chosen", "rejected"}
        problem = (_text_or_messages(row, "prompt", "user") or _text_or_messages(row, "chosen", "assistant-only")
                   or _text_or_messages(row, "rejected", "assistant-only"))
        if not problem and _canon(row["chosen"]) == _canon(row["rejected"]):
            problem = "chosen and rejected are identical"
    else:
        allowed = {"prompt", "answer"}
        problem = _text_or_messages(row, "prompt", "user")
        if not problem:
            answer = row.get("answer")
            if not isinstance(answer, str) or not answer.strip():
                problem = "answer: missing or empty"
            elif answer_parser is not None and answer_parser(answer) is None:
                problem = f"answer: the reward cannot parse a final answer from {answer[-40:]!r}"
    if problem:
        return problem
    extra = set(row) - allowed
    return f"unknown keys {sorted(extra)}" if extra else None


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


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
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.rows += 1
                report.add(number, "error", f"not valid UTF-8 (byte {e.start})")
                continue
            if not text.strip():
                continue
            report.rows += 1
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as e:
                report.add(number, "error", f"not valid JSON: {e.msg} (column {e.colno})")


class TokenCounter:
    """Batched token lengths with the job's tokenizer and chat template."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def lengths(self, items: list[list[dict] | str]) -> list[int]:
        texts = [x if isinstance(x, str) else self.tokenizer.apply_chat_template(x, tokenize=False) for x in items]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]


def validate_file(path: Path, kind: Kind, *, tokenizer: Any = None, max_length: int | None = None,
                  answer_parser: Callable[[str], Any] | None = None, test_prompts: set[bytes] | None = None,
                  display: str | None = None, on_progress: Callable[[int], None] | None = None) -> FileReport:
    report = FileReport(display or str(path), kind)
    path = Path(path)
    if not path.is_file():
        report.add(None, "error", "file not found")
        return report
    counter = TokenCounter(tokenizer) if tokenizer is not None else None
    seen: dict[bytes, int] = {}
    truncated_lines: list[int] = []
    pending: list[tuple[int, list[dict] | str]] = []

    def flush() -> None:
        if not pending or counter is None:
            pending.clear()
            return
        for (number, _), n in zip(pending, counter.lengths([c for _, c in pending]), strict=True):
            report.token_min = n if report.token_min is None else min(report.token_min, n)
            report.token_max = n if report.token_max is None else max(report.token_max, n)
            report.token_sum += n
            report.token_counted += 1
            if max_length and n > max_length:
                report.truncated += 1
                if len(truncated_lines) < 5:
                    truncated_lines.append(number)
        pending.clear()

    done = 0
    with open(path, "rb") as probe:
        if probe.read(3) == b"\xef\xbb\xbf":
            report.add(1, "error", "starts with a UTF-8 byte-order mark; save without BOM")
    for number, row in _lines(path, report):
        problem = check_row(row, kind, answer_parser if kind in ("grpo", "test") else None)
        if problem:
            report.add(number, "error", problem)
            continue
        digest = _digest(row)
        if digest in seen:
            report.duplicates += 1
            report.add(number, "warning", f"exact duplicate of line {seen[digest]}")
        else:
            seen[digest] = number
        if test_prompts is not None and kind != "test":
            if _digest(prompt_text(row)) in test_prompts:
                report.overlap += 1
                report.add(number, "error", "this prompt is also in the test set (test item leaks into train)")
        pending.append((number, conversation(row, kind)))
        if len(pending) >= BATCH:
            flush()
            if on_progress:
                on_progress(number - done)
                done = number
    flush()
    if report.truncated:  # one finding per file: a long tail of rows is a setting, not many problems
        share = 100 * report.truncated / max(report.token_counted, 1)
        report.add(truncated_lines[0], "warning",
                   f"{report.truncated} rows ({share:.1f}%) exceed max_length {max_length} tokens and would be "
                   f"truncated (lines {', '.join(map(str, truncated_lines))}{', …' if report.truncated > 5 else ''})")
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
