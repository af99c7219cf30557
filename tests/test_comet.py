"""COMET's place: unbabel-comet cannot be installed beside transformers 5 (its releases pin
huggingface-hub<1), so it is in no extra; the translation scores say so instead of failing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import tomllib
from eval_fixtures import KO_EN

REPO = Path(__file__).resolve().parent.parent
REFS = Path(f"{KO_EN}.en").read_text(encoding="utf-8").splitlines()[:20]


def test_comet_missing_says_why(monkeypatch):
    from trainer import scores

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "comet" else real(name, *a))
    out = scores.translation_scores(REFS, REFS, sources=REFS, comet=True)
    assert out["comet"] is None and out["comet_note"] == scores.COMET_MISSING
    assert "huggingface-hub<1" in out["comet_note"] and "skipped" in out["comet_note"]
    assert out["bleu"] == 100.0  # the other scores are there


def test_comet_is_in_no_extra_that_installs_with_transformers_5():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(req.startswith("unbabel-comet") for reqs in extras.values() for req in reqs)
