"""`ft` reads a `.env` when present; variables already in the environment win."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from jobs.cli import app


def test_dotenv_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "from-environment")
    (tmp_path / ".env").write_text("HF_TOKEN=hf_abcdefghijklmnopqrstuvwx\nWANDB_PROJECT=from-dotenv\n")
    result = CliRunner().invoke(app, ["bundle", "create", "missing.yaml"])
    assert result.exit_code == 2
    assert os.environ["HF_TOKEN"] == "hf_abcdefghijklmnopqrstuvwx"
    assert os.environ["WANDB_PROJECT"] == "from-environment"
    monkeypatch.delenv("HF_TOKEN")
