"""COMET from a layer of its own. Every unbabel-comet release (2.2.7 the newest) pins huggingface-hub<1,
transformers<5, numpy<2 and torchmetrics<0.11, so pip cannot install it beside transformers 5; its code runs
on our versions all the same (checked: comet 2.2.7 on transformers 5.17, huggingface_hub 1.16, numpy 2.4,
torchmetrics 1.9, pytorch-lightning 2.6) once the two transformers-5 changes it trips on are shimmed below.
So `images/locks/comet.txt` is installed with --no-deps into its own folder (`settings.comet_lib()`), and that
folder joins sys.path only here, when COMET is scored: the environment and its `pip check` stay as tested.

The model comes from the Hugging Face cache (downloaded there first unless the Hub is off). A missing piece --
the layer, the checkpoint, the encoder config and tokenizer it names -- is a `CometUnavailable` saying what to
fetch, checked before comet is imported so an evaluation without COMET pays nothing for it.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from trainer import settings
from trainer.errors import FtError, first_line

LOCK = "images/locks/comet.txt"


class CometUnavailable(FtError):
    """COMET cannot be scored here; the message names the missing piece and how to get it."""


def layer() -> Path:
    lib = settings.comet_lib()
    if not (lib / "comet" / "__init__.py").is_file():
        raise CometUnavailable(f"the COMET layer is not installed at {lib} (`make setup`, or "
                               f"`pip install --no-deps --target {lib} -r {LOCK}`; FT_COMET_LIB moves it)")
    return lib


def checkpoint(name: str) -> Path:
    """`checkpoints/model.ckpt` of COMET model `name`: a Hub repo from the HF cache (fetched first when the Hub
    is on, as every other model), or a local folder laid out the same way."""
    if Path(name).is_dir():
        folder = Path(name)
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(name, local_files_only=True))
        except LocalEntryNotFoundError:
            if settings.offline():
                raise CometUnavailable(f"COMET model {name} is not in the Hugging Face cache and the Hub is off "
                                       f"(HF_HUB_OFFLINE): fetch it once with `hf download {name}`") from None
            try:
                folder = Path(snapshot_download(name))
            except Exception as e:  # noqa: BLE001 -- no network, no such repo, gated: say so, don't fail eval
                raise CometUnavailable(f"COMET model {name} could not be downloaded: {first_line(e)}") from None
    ckpt = folder / "checkpoints" / "model.ckpt"
    if not ckpt.is_file() or not (folder / "hparams.yaml").is_file():
        raise CometUnavailable(f"{folder} is not a COMET model (no hparams.yaml + checkpoints/model.ckpt)")
    return ckpt


def require_encoder(name: str, ckpt: Path) -> None:
    """Offline, the encoder named in hparams.yaml (its config and tokenizer; the weights are in the
    checkpoint) must be in the cache too: say so before loading rather than deep inside transformers."""
    import yaml

    try:
        hparams = yaml.safe_load(ckpt.parents[1].joinpath("hparams.yaml").read_text()) or {}
    except yaml.YAMLError:  # comet reads it with its own loader and will say what is wrong
        return
    encoder = str(hparams.get("pretrained_model") or "")
    if not encoder or not settings.offline() or Path(encoder).is_dir():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(encoder, "config.json"), str):
        raise CometUnavailable(f"the encoder of COMET model {name}, {encoder}, is not in the Hugging "
                               f"Face cache and the Hub is off: `hf download {encoder} config.json tokenizer.json "
                               "tokenizer_config.json` (its weights come with the COMET checkpoint)")


def score(name: str, sources: list[str], hyps: list[str], refs: list[str],
          batch_size: int = 16) -> tuple[float, list[float]]:
    """(system score, one score per segment) of COMET model `name`, as comet's own `predict` computes them."""
    from trainer.models import has_cuda

    model = _load(name)
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs, strict=True)]
    with warnings.catch_warnings():  # Lightning's own deprecation chatter about torch, nothing about COMET
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # num_workers=0: tokenising in the evaluating process, not in forks of one that may hold a model on the GPU.
        result = model.predict(data, batch_size=batch_size, gpus=1 if has_cuda() else 0, progress_bar=False,
                               num_workers=0)
    return float(result.system_score), [float(s) for s in result.scores]


@functools.lru_cache(maxsize=1)
def _load(name: str) -> Any:
    """COMET model `name`, loaded once per process: an evaluation scores every stage with the same model
    (2.3 GB for wmt22-comet-da). A failure is not cached, so a later call tries again."""
    lib = layer()
    ckpt = checkpoint(name)
    require_encoder(name, ckpt)
    comet = import_comet(lib)
    try:
        model = comet.load_from_checkpoint(str(ckpt), local_files_only=settings.offline())
    except OSError as e:  # transformers could not find the encoder's config or tokenizer
        raise CometUnavailable(f"COMET model {name} did not load: {first_line(e)}") from None
    _fit_tokenizer(model)
    return model


def import_comet(lib: Path) -> Any:
    if str(lib) not in sys.path:
        sys.path.append(str(lib))  # last: the layer can never shadow a package of the environment
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard:  # comet's __init__ calls logging.basicConfig(level=INFO), which would turn on every library's INFO log
        root.addHandler(guard)
    try:
        import comet
        from comet.encoders.xlmr import XLMREncoder
    finally:
        if guard:
            root.removeHandler(guard)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # "GPU available: …" and tips per predict
    XLMREncoder.forward = _xlmr_forward  # also MiniLM, RemBERT, XLM-R XL: they inherit it
    return comet


def _xlmr_forward(self: Any, input_ids: Any, attention_mask: Any, **kwargs: Any) -> dict[str, Any]:
    """comet's XLMREncoder.forward unpacks `model(..., return_dict=False)` into three values, but transformers 5
    leaves the absent pooler out of that tuple ("not enough values to unpack (expected 3, got 2)"). The same
    outputs, taken by name."""
    out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
    last = out.last_hidden_state
    return {"sentemb": last[:, 0, :], "wordemb": last, "all_layers": out.hidden_states,
            "attention_mask": attention_mask}


def _fit_tokenizer(model: Any) -> None:
    """Unified models (XCOMET, CometKiwi) join segments with `tokenizer.build_inputs_with_special_tokens`, which
    transformers 5 tokenizers no longer have: the same layout (XLM-R: <s> a </s></s> b </s>; BERT: one </s>)."""
    encoder = model.encoder
    tok = encoder.tokenizer
    if hasattr(tok, "build_inputs_with_special_tokens"):
        return
    separators = int(encoder.size_separator)

    def build(ids_0: list[int], ids_1: list[int] | None = None) -> list[int]:
        cls, sep = [tok.cls_token_id], [tok.sep_token_id]
        return cls + ids_0 + sep if ids_1 is None else cls + ids_0 + sep * separators + ids_1 + sep

    tok.build_inputs_with_special_tokens = build
