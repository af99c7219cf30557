"""Line splitting that keeps JSON rows and parallel corpora intact."""

from __future__ import annotations

import json

from trainer.textio import lines, load_test_rows


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
