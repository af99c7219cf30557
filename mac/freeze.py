"""The one bundle freeze, used by `ft bundle create`, `ft launch` and `ft demo`: validate the spec and
every data file it names (with any `KEY=VALUE` overrides), include the prototype's adapter and
metrics when the prototype ran, write the content-addressed bundle, and optionally push it.

Nothing is written when validation finds an error, so bad data never reaches a bundle or a cloud.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mac.validate_job import JobReport, validate_job
from trainer import settings
from trainer.bundle import Bundle, push_bundle, write_bundle
from trainer.errors import EXIT_FAILED, FtError

DEFAULT_BUNDLES = Path("outputs/bundles")


class FreezeRefused(FtError):
    """Validation found errors: no bundle written. Exit 1, as `ft validate` on the same spec; `report`
    holds every finding for the caller to print."""

    exit_code = EXIT_FAILED

    def __init__(self, config: Path, report: JobReport):
        super().__init__(f"{config}: {report.errors} validation errors; no bundle written")
        self.report = report


@dataclass(frozen=True)
class Frozen:
    bundle: Bundle
    report: JobReport
    prototype_dir: Path
    uri: str | None  # where it was pushed, if it was


def prototype_dir_for(name: str, given: Path | None = None) -> Path:
    """Where `ft prototype` left this job's results: `given`, else $FT_MLX_OUTPUTS/<name>."""
    return given or settings.mlx_outputs() / name


def freeze(config: Path, overrides: Sequence[str] = (), out: Path = DEFAULT_BUNDLES, push: str | None = None,
           prototype_dir: Path | None = None, report: JobReport | None = None, progress: bool = True,
           on_progress: Callable[[int], None] | None = None) -> Frozen:
    """Validate (unless the caller already has this spec's clean `report`), bundle, push when asked.
    FreezeRefused when the spec or data has errors; BundleError / store errors from writing or pushing."""
    config = Path(config)
    if report is None:
        report = validate_job(config, overrides=overrides, on_progress=on_progress)
    if report.errors or report.spec is None:
        raise FreezeRefused(config, report)
    spec = report.spec
    proto = prototype_dir_for(spec.name, prototype_dir)
    bundle = write_bundle(spec, config.parent, Path(out), prototype_dir=proto)
    uri = push_bundle(bundle, push, progress=progress) if push else None
    return Frozen(bundle, report, proto, uri)
