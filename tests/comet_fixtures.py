"""Real COMET models, tiny: comet's own RegressionMetric (the class of Unbabel/wmt22-comet-da) and
UnifiedMetric (XCOMET, CometKiwi) on a 2-layer XLM-R-shaped encoder with random weights and a tokenizer built
here, written into a Hugging Face cache exactly as `hf download` lays it out (refs/main → snapshots/<rev>/), so
`trainer.scores` finds them offline the way it finds the real ones.

    python tests/comet_fixtures.py HUB_CACHE     builds the cache, scores through trainer.scores, prints JSON

Run in a child process: the cache path must be set before huggingface_hub is imported, and comet's layer
joins sys.path only there. Needs the COMET layer (`make setup`)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KO_EN = REPO / "data" / "samples" / "ko-en" / "korean-english-park.dev"
ENCODER = "xlm-roberta-large"  # the name wmt22-comet-da's hparams.yaml gives its encoder
REGRESSION = "Unbabel/wmt22-comet-da"
UNIFIED = "ft-test/tiny-unified-comet"
NO_ENCODER = "ft-test/comet-without-its-encoder"
N = 6


def texts() -> tuple[list[str], list[str]]:
    src = Path(f"{KO_EN}.ko").read_text(encoding="utf-8").splitlines()[:N]
    ref = Path(f"{KO_EN}.en").read_text(encoding="utf-8").splitlines()[:N]
    return src, ref


def snapshot(hub: Path, repo: str) -> Path:
    """An HF cache entry for `repo`: refs/main naming a revision, the files under snapshots/<revision>/."""
    rev = hashlib.sha1(repo.encode()).hexdigest()
    entry = hub / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(rev)
    folder = entry / "snapshots" / rev
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_encoder(hub: Path) -> None:
    """XLM-R's shape at toy size: a Unigram vocabulary of the sample's words and characters."""
    from transformers import XLMRobertaConfig, XLMRobertaTokenizer

    src, ref = texts()
    words = sorted({w for line in ref for w in line.split()})
    chars = sorted({c for line in src + ref for c in line if not c.isspace()})
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{w}", -2.0) for w in words] + [("▁", -3.0)] + [(c, -6.0) for c in chars] + [("<mask>", 0.0)]
    folder = snapshot(hub, ENCODER)
    tok = XLMRobertaTokenizer(vocab=vocab)
    tok.save_pretrained(folder)
    XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                     eos_token_id=2).save_pretrained(folder)


def save_comet(model: Any, identifier: str, folder: Path) -> None:
    """What comet's load_from_checkpoint reads: hparams.yaml (the class) and a Lightning checkpoint."""
    import pytorch_lightning
    import torch
    import yaml

    hparams = {**dict(model.hparams), "class_identifier": identifier, "load_pretrained_weights": False}
    (folder / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    (folder / "checkpoints").mkdir(exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": pytorch_lightning.__version__}, folder / "checkpoints" / "model.ckpt")


def build_models(hub: Path) -> None:
    import torch
    from comet.models import RegressionMetric, UnifiedMetric

    common = {"pretrained_model": ENCODER, "load_pretrained_weights": False, "local_files_only": True,
              "nr_frozen_epochs": 0.0, "hidden_sizes": [16], "layer_transformation": "sparsemax"}
    torch.manual_seed(0)
    regression = RegressionMetric(layer="mix", pool="avg", **common)
    save_comet(regression, "regression_metric", snapshot(hub, REGRESSION))
    torch.manual_seed(1)
    unified = UnifiedMetric(sent_layer="mix", word_layer=2, input_segments=["mt", "src", "ref"], **common)
    save_comet(unified, "unified_metric", snapshot(hub, UNIFIED))
    # The same checkpoint naming an encoder that is not in the cache.
    lost = snapshot(hub, NO_ENCODER)
    save_comet(regression, "regression_metric", lost)
    text = (lost / "hparams.yaml").read_text().replace(f"pretrained_model: {ENCODER}", "pretrained_model: ft-test/gone")
    (lost / "hparams.yaml").write_text(text)


def main(hub: Path) -> dict[str, Any]:
    from trainer import comet_layer, scores

    build_encoder(hub)
    comet_layer.import_comet(comet_layer.layer())
    build_models(hub)
    src, ref = texts()
    hyps = [ref[0], ref[1][: len(ref[1]) // 2], "nothing like it", ref[3].upper(), ref[2], ""]
    out: dict[str, Any] = {}
    for key, model in (("first", REGRESSION), ("again", REGRESSION), ("unified", UNIFIED), ("no_encoder", NO_ENCODER)):
        os.environ["FT_COMET_MODEL"] = model
        out[key] = scores.translation_scores(hyps, ref, sources=src)
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))))
