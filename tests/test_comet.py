"""COMET through trainer.scores: real comet models (comet's own classes, tiny random encoder, built in
tests/comet_fixtures.py) loaded from a Hugging Face cache offline and scored by comet's own `predict`, from
the layer `make setup` installs (images/locks/comet.txt, the same lock the training image installs); and the
one-line notes when the layer, the model or its encoder is missing."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eval_fixtures import KO_EN

from trainer import scores, settings

REPO = Path(__file__).resolve().parent.parent
REFS = Path(f"{KO_EN}.en").read_text(encoding="utf-8").splitlines()[:20]
LOCK = REPO / "images" / "locks" / "comet.txt"
# `make test` installs the layer first, so a missing one is a failed setup, not a reason to skip.
needs_layer = pytest.mark.usefixtures("comet_layer_installed")


@pytest.fixture(scope="module")
def comet_layer_installed() -> None:
    if not (settings.comet_lib() / "comet").is_dir():
        pytest.fail(f"COMET layer not installed at {settings.comet_lib()}: run `make setup`")


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Builds the tiny models into a fresh HF cache and scores through trainer.scores, in a child process (the
    cache path must be set before huggingface_hub loads; the layer joins sys.path only there)."""
    hub = tmp_path_factory.mktemp("hub")
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "FT_COMET_LIB": str(settings.comet_lib()), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "comet_fixtures.py"), str(hub)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@needs_layer
def test_a_real_comet_model_scores_every_segment_from_the_hf_cache(scored: dict[str, Any]) -> None:
    out = scored["first"]
    assert out["comet_note"] == "Unbabel/wmt22-comet-da"  # found offline under the real model's name
    segments = out["comet_segments"]
    assert len(segments) == out["n"] == 6 and all(isinstance(s, float) and math.isfinite(s) for s in segments)
    assert len(set(segments)) > 1  # the segments differ, so each was scored on its own text
    assert out["comet"] == pytest.approx(sum(segments) / len(segments), abs=1e-3)  # comet's system score: the mean
    assert out["bleu"] > 0  # and the other scores beside it


@needs_layer
def test_the_same_input_scores_the_same(scored: dict[str, Any]) -> None:
    assert scored["again"]["comet_segments"] == scored["first"]["comet_segments"]
    assert scored["again"]["comet"] == scored["first"]["comet"]


@needs_layer
def test_a_unified_model_scores_too(scored: dict[str, Any]) -> None:
    """UnifiedMetric (XCOMET, CometKiwi) joins segments with the tokenizer call transformers 5 dropped (shimmed)."""
    out = scored["unified"]
    assert out["comet_note"] == "ft-test/tiny-unified-comet"
    assert len(out["comet_segments"]) == 6 and all(math.isfinite(s) for s in out["comet_segments"])


@needs_layer
def test_an_encoder_missing_from_the_cache_is_one_clear_line(scored: dict[str, Any]) -> None:
    out = scored["no_encoder"]
    assert out["comet"] is None and out["comet_segments"] is None and out["bleu"] > 0
    note = out["comet_note"]
    assert "ft-test/gone" in note and "hf download ft-test/gone" in note and "COMET skipped" in note
    assert "Traceback" not in note and "\n" not in note


def test_a_model_missing_from_the_cache_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A stand-in layer: the cache is checked before comet is imported, so an eval without the model pays nothing.
    (tmp_path / "lib" / "comet").mkdir(parents=True)
    (tmp_path / "lib" / "comet" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    monkeypatch.setenv("FT_COMET_LIB", str(tmp_path / "lib"))
    monkeypatch.setenv("FT_COMET_MODEL", "ft-test/not-in-any-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = scores.translation_scores(REFS, REFS, sources=REFS)
    assert out["comet"] is None and out["bleu"] == 100.0
    assert out["comet_note"] == ("COMET model ft-test/not-in-any-cache is not in the Hugging Face cache and the Hub "
                                 "is off (HF_HUB_OFFLINE): fetch it once with `hf download ft-test/not-in-any-cache`"
                                 f"; {scores.COMET_SKIPPED}")
    assert "comet" not in sys.modules


def test_a_missing_layer_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FT_COMET_LIB", str(tmp_path / "nowhere"))
    out = scores.translation_scores(REFS, REFS, sources=REFS)
    assert out["comet"] is None and out["bleu"] == 100.0
    assert f"not installed at {tmp_path / 'nowhere'}" in out["comet_note"]
    assert "make setup" in out["comet_note"] and "images/locks/comet.txt" in out["comet_note"]
    assert scores.translation_scores(REFS, REFS)["comet_note"] == "no source sentences given"


def test_the_layer_lock_pins_every_line_and_the_image_and_setup_install_it() -> None:
    pins = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^\s]*", p) for p in pins), pins
    names = {p.split("==")[0].lower() for p in pins}
    assert {"unbabel-comet", "pytorch-lightning", "torchmetrics", "lightning-utilities", "entmax"} <= names
    assert not names & {"torch", "transformers", "huggingface-hub", "numpy"}  # those stay the environment's
    dockerfile = (REPO / "Dockerfile.gpu").read_text()
    assert "--no-deps --target /opt/venv/comet-lib -r /tmp/comet.txt" in dockerfile
    makefile = (REPO / "Makefile").read_text()
    assert "COMET_LIB := $(VENV)/comet-lib" in makefile  # <venv>/comet-lib: where settings.comet_lib() looks
    assert "--no-deps --target $(COMET_LIB) -r images/locks/comet.txt" in makefile


@needs_layer
def test_the_installed_layer_is_the_locked_one() -> None:
    from importlib import metadata

    from packaging.utils import canonicalize_name

    layer = [str(settings.comet_lib())]
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=layer)}
    pins = [line.split("==") for line in LOCK.read_text().splitlines() if line and line[0] != "#"]
    assert installed == {canonicalize_name(name): version for name, version in pins}
