"""Line splitting that keeps JSON rows and parallel corpora intact."""

from __future__ import annotations

import json
import math

import pytest

from trainer.errors import BadInput
from trainer.textio import RowError, RowShapes, lines, load_test_rows, read_jsonl


def test_unicode_line_separators_do_not_split_rows(tmp_path):
    row = {"prompt": [{"role": "user", "content": "first\u2028second\x85third"}], "answer": "#### 3"}
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\r\n" + json.dumps(row, ensure_ascii=False) + "\n")
    assert len(path.read_text().splitlines()) > 2  # what str.splitlines would do
    rows = load_test_rows(path)
    assert len(rows) == 2 and rows[0]["messages"][0]["content"] == "first\u2028second\x85third"


def test_lines_keeps_empty_lines_but_not_the_final_newline():
    assert lines("a\n\nb\n") == ["a", "", "b"]
    assert lines("a\r\nb") == ["a", "b"]
    assert lines("") == []


def test_read_jsonl_is_strict_for_data_and_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2, "a": 3}\n')
    with pytest.raises(RowError, match=r"data.jsonl:3: not valid JSON: duplicate key 'a'") as caught:
        read_jsonl(path)
    assert caught.value.line == 3 and isinstance(caught.value, BadInput)
    assert read_jsonl("store://x/rows.jsonl", text='{"a": 1}\r\n{"b": "\u2028"}\n') == [{"a": 1}, {"b": "\u2028"}]
    with pytest.raises(RowError, match=r"store://x/rows.jsonl:2: not valid JSON: NaN is not JSON"):
        read_jsonl("store://x/rows.jsonl", text='{"a": 1}\n{"loss": NaN}\n')


def test_read_jsonl_drops_only_a_last_line_cut_by_a_kill_in_our_own_files(tmp_path):
    metrics = '{"step": 1, "loss": NaN}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo'
    rows = read_jsonl("metrics.jsonl", text=metrics, tolerate_cut_last_line=True)
    assert [r["step"] for r in rows] == [1, 2] and math.isnan(rows[0]["loss"])
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(RowError, match=r"metrics.jsonl:2: not valid JSON"):
        read_jsonl(path, tolerate_cut_last_line=True)
    path.write_bytes(b'{"step": 1}\n{"step": 2, "note": "\xe2\x80')  # cut inside a UTF-8 character
    assert read_jsonl(path, tolerate_cut_last_line=True) == [{"step": 1}]


def test_load_test_rows_names_the_line_of_a_row_without_an_answer(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"prompt": "2+2?", "answer": "#### 4"}\n\n{"prompt": "3+3?"}\n')
    with pytest.raises(RowError, match=r"test.jsonl:3: each test row needs"):
        load_test_rows(path)


def test_every_row_of_a_file_has_the_first_rows_shape():
    shapes = RowShapes()
    assert shapes.problem(1, {"prompt": "p", "answer": "a"}) is None
    assert shapes.problem(2, {"answer": "b", "prompt": "q"}) is None
    problem = shapes.problem(5, {"prompt": [{"role": "user", "content": "q"}], "answer": "a"})
    assert problem is not None and "answer:text,prompt:messages here, answer:text,prompt:text at line 1" in problem
