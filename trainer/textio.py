"""Reading line-oriented text and JSONL safely: the one JSONL reader (`read_jsonl`, streaming
`iter_jsonl`) and the one row schema, shared by the validator, the trainer and the workstation.

`str.splitlines()` also splits on U+2028, U+2029, U+0085 and other separators that JSON strings written
with `ensure_ascii=False` (and Korean news text) may contain, which would cut a JSONL row in two or
shift a parallel corpus by a line; `lines` splits on `\n` only."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from trainer.errors import BadInput


def lines(text: str) -> list[str]:
    """Lines split on `\\n` only (a trailing `\\r` dropped), without the empty piece after a final newline."""
    out = text.split("\n")
    if out and out[-1] == "":
        out.pop()
    return [line[:-1] if line.endswith("\r") else line for line in out]


def read_lines(path: str | Path) -> list[str]:
    return lines(Path(path).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------ JSONL rows
# One reader and one row schema for the validator (`ft validate`, `ft bundle`) and the trainer (a bundle's
# data is checked with these before any step), so a row the validator passes is one the trainer trains on.
Kind = Literal["sft", "dpo", "grpo", "test"]
ROLE_OF_KIND: dict[str, Kind] = {"sft_train": "sft", "sft_valid": "sft", "dpo_train": "dpo", "dpo_valid": "dpo",
                                 "grpo_train": "grpo", "test": "test"}
ROLES = {"system", "user", "assistant"}
MAX_ROW_BYTES = 128 * 1024 * 1024  # one row past this is refused unread, so memory stays bounded
_READ_CHUNK = 1024 * 1024
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# invisible: control (Cc), format (Cf: zero-width space/joiners, BOM, bidi marks), separators (Z*)
_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}


class RowError(BadInput):
    """A JSONL line that cannot be used; `line` is 1-based."""

    def __init__(self, file: str, line: int, message: str):
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message}")


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace, control or zero-width characters."""
    # all() stops at the first visible character, so a long normal text costs nothing
    return all(ch.isspace() or unicodedata.category(ch) in _INVISIBLE for ch in text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:  # Python keeps the last, Arrow refuses the row: neither is what was meant
            raise ValueError(f"duplicate key {key!r}")
        row[key] = value
    return row


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _surrogate_in(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return any(_surrogate_in(k) or _surrogate_in(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_surrogate_in(v) for v in value)
    return False


def parse_row(raw: bytes | str) -> Any:
    """One JSONL line as strict JSON: ValueError for bad UTF-8, syntax, duplicate keys, NaN/Infinity,
    over-long integers, nesting too deep for the parser and lone surrogate escapes."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not valid UTF-8 (byte {e.start})") from None
    else:
        text = raw
    try:
        row = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None
    except ValueError as e:  # duplicate key, NaN, an integer over Python's 4300-digit limit
        raise ValueError(f"not valid JSON: {e}") from None
    raw_bytes = raw if isinstance(raw, bytes) else text.encode("utf-8", "surrogatepass")
    if _SURROGATE_ESCAPE.search(raw_bytes) and _surrogate_in(row):  # a pair is fine; a lone half is no text
        raise ValueError("not valid JSON text: a lone surrogate escape (e.g. \\ud800)")
    return row


def iter_jsonl(path: str | Path, display: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, row or RowError) for every non-blank line, streaming; a line longer than
    MAX_ROW_BYTES is skipped unread (a RowError) instead of being held in memory."""
    name = display or str(path)
    with open(path, "rb") as f:
        number = 0
        while True:
            raw = f.readline(MAX_ROW_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
                while (rest := f.readline(_READ_CHUNK)) and not rest.endswith(b"\n"):
                    pass
                yield number, RowError(name, number, f"longer than {MAX_ROW_BYTES // 2**20} MiB")
                continue
            if not raw.strip():
                continue
            try:
                yield number, parse_row(raw)
            except ValueError as e:
                yield number, RowError(name, number, str(e))


def read_jsonl(source: str | Path, *, text: str | None = None, tolerate_cut_last_line: bool = False) -> list[Any]:
    """Every row of a JSONL file, or of `text` read from `source` (a store object): the one JSONL reader.

    Strict by default, for data a person gave us: every line by `parse_row`'s rules, and the first bad
    line a RowError naming source:line. `tolerate_cut_last_line` is for the files the trainer appends to
    itself (metrics.jsonl), which a kill mid-write leaves with half a last line: that line is dropped (a
    bad line before it is still an error), and rows are read as Python's json writes them (NaN for a
    diverged loss)."""
    name = str(source)
    if tolerate_cut_last_line:
        return _rows_written_by_us(name, Path(source).read_bytes().decode("utf-8", "replace") if text is None
                                   else text)
    numbered = iter_jsonl(source, name) if text is None else (
        (number, _parsed(name, number, line)) for number, line in enumerate(lines(text), 1) if line.strip())
    rows = []
    for _, row in numbered:
        if isinstance(row, RowError):
            raise row
        rows.append(row)
    return rows


def _parsed(name: str, number: int, line: str) -> Any:
    try:
        return parse_row(line)
    except ValueError as e:
        return RowError(name, number, str(e))


def _rows_written_by_us(name: str, text: str) -> list[Any]:
    numbered = [(number, line) for number, line in enumerate(lines(text), 1) if line.strip()]
    rows = []
    for i, (number, line) in enumerate(numbered):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(numbered) - 1:
                break  # cut off by a kill mid-write; everything before it is whole
            raise RowError(name, number, f"not valid JSON: {e.msg} (column {e.colno})") from None
    return rows


def load_test_rows(path: str | Path) -> list[dict[str, Any]]:
    """Test rows as `{"messages": [...], "answer": str}`. Accepts the bundle format (`prompt`: a message
    list or a string) and raw GSM8K rows (`question`); RowError naming file:line otherwise."""
    rows = []
    for number, row in iter_jsonl(path):
        if isinstance(row, RowError):
            raise row
        prompt = row.get("prompt", row.get("question")) if isinstance(row, dict) else None
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or "answer" not in row:
            raise RowError(str(path), number, "each test row needs `prompt` (or `question`) and `answer`")
        rows.append({"messages": prompt, "answer": row["answer"]})
    return rows


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
        if not isinstance(content, str) or is_blank(content):
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


def _text_or_messages(row: dict, key: str, last_role: str, allow_text: bool = True) -> str | None:
    if key not in row:
        return f"missing key '{key}'"
    value = row[key]
    if isinstance(value, str):
        if not allow_text:
            return f"{key}: expected a list of messages (the trainer applies the chat template to it), not a string"
        return None if not is_blank(value) else f"{key}: empty"
    return _messages(value, key, last_role)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def check_row(row: Any, kind: Kind, answer_parser: Callable[[str], Any] | None = None) -> str | None:
    """The problem with one row of a `kind` file, or None when the trainer can train on it."""
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
        if not problem and len({isinstance(row[k], str) for k in ("prompt", "chosen", "rejected")}) > 1:
            # TRL reads a pair as plain text or as conversation, never half and half
            problem = "prompt, chosen and rejected must all be strings or all be message lists"
        if not problem and canonical(row["chosen"]) == canonical(row["rejected"]):
            problem = "chosen and rejected are identical"
    else:
        allowed = {"prompt", "answer"}
        problem = _text_or_messages(row, "prompt", "user", allow_text=kind == "test")
        if not problem:
            answer = row.get("answer")
            if not isinstance(answer, str) or is_blank(answer):
                problem = "answer: missing or empty"
            elif answer_parser is not None and answer_parser(answer) is None:
                problem = f"answer: the reward cannot parse a final answer from {answer[-40:]!r}"
    if problem:
        return problem
    extra = set(row) - allowed
    return f"unknown keys {sorted(extra)}" if extra else None


class RowShapes:
    """Every row of one file must have the first row's shape: the trainer loads a file as one Arrow
    table, and a column cannot be text in one row and a list in another. One per file."""

    def __init__(self) -> None:
        self.first: tuple[int, str] | None = None  # (line, shape) of the first row

    @staticmethod
    def shape(row: dict) -> str:
        return ",".join(f"{k}:{'text' if isinstance(v, str) else 'messages'}" for k, v in sorted(row.items()))

    def problem(self, line: int, row: dict) -> str | None:
        """Why this (schema-valid) row does not fit the file's table, or None."""
        this = self.shape(row)
        if self.first is None:
            self.first = (line, this)
            return None
        if this == self.first[1]:
            return None
        return (f"rows differ in shape ({this} here, {self.first[1]} at line {self.first[0]}); the trainer reads "
                "a file as one table, so every row needs the same keys and the same text/message-list types")


def answer_parser_for(task: str, kind: Kind) -> Callable[[str], Any] | None:
    """The reward's answer parser where a row's answer must parse (math prompts), else None."""
    if task != "math" or kind not in ("grpo", "test"):
        return None
    from trainer.answers import extract_answer

    return extract_answer


def check_file(path: str | Path, kind: Kind, task: str, display: str | None = None) -> int:
    """Every row of a data file, with the validator's rules: RowError naming file:line at the first
    problem, else the number of rows. The trainer calls this before it trains on a bundle's file."""
    parser = answer_parser_for(task, kind)
    name = display or str(path)
    shapes = RowShapes()
    rows = 0
    for number, row in iter_jsonl(path, name):
        if isinstance(row, RowError):
            raise row
        problem = check_row(row, kind, parser) or shapes.problem(number, row)
        if problem:
            raise RowError(name, number, problem)
        rows += 1
    if rows == 0:
        raise RowError(name, 1, "no rows")
    return rows

