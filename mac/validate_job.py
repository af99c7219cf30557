"""`ft validate CONFIG`: the spec, then every data file it names, with the job's own tokenizer."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mac.validate import ROLE_OF_KIND, FileReport, Finding, Kind, test_prompt_digests, validate_file
from trainer.overrides import OverrideError
from trainer.spec import JobSpec, SpecError, load_spec


@dataclass
class JobReport:
    spec_file: str
    spec: JobSpec | None = None
    spec_findings: list[Finding] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.spec_findings) + sum(r.errors for r in self.files)

    @property
    def warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.spec_findings) + sum(r.warnings for r in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec_file, "errors": self.errors, "warnings": self.warnings,
                "spec_findings": [f.__dict__ for f in self.spec_findings],
                "files": [r.to_dict() for r in self.files]}


# Further spec checks that need more than the spec (jobs.cli adds the accelerator names against the
# cloud catalogs): each takes (spec, spec path) and returns findings.
SPEC_CHECKS: list[Callable[[JobSpec, Path], list[Finding]]] = []


def load_job_tokenizer(base: str) -> Any:
    """The job's tokenizer: the built-in GGUF's, a local folder's, or the Hub's (cached)."""
    from trainer import builtin_model

    if builtin_model.is_builtin(base):
        return builtin_model.load_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def answer_parser_for(task: str) -> Callable[[str], Any] | None:
    if task != "math":
        return None
    from trainer.answers import extract_answer

    return extract_answer


def validate_data(path: Path, kind: Kind, task: str = "math", tokenizer_name: str | None = None,
                  max_length: int | None = None, test_file: Path | None = None,
                  on_progress: Callable[[int], None] | None = None) -> FileReport:
    tokenizer = load_job_tokenizer(tokenizer_name) if tokenizer_name else None
    digests = test_prompt_digests(test_file) if test_file else None
    return validate_file(path, kind, tokenizer=tokenizer, max_length=max_length,
                         answer_parser=answer_parser_for(task), test_prompts=digests, on_progress=on_progress)


def _max_length_for(spec: JobSpec, kind: Kind) -> int | None:
    method = {"sft": "sft", "dpo": "dpo", "grpo": "grpo"}.get(kind)
    lengths = [s.max_length for s in spec.stages if s.method == method]
    if kind == "grpo":  # GRPO's max_length bounds the prompt; completions get max_completion_length
        lengths = [s.max_length for s in spec.stages if s.method == "grpo"]
    return min(lengths) if lengths else None


def validate_job(spec_path: Path, check_tokens: bool = True, on_progress: Callable[[int], None] | None = None,
                 overrides: Sequence[str] = ()) -> JobReport:
    """The spec (with `KEY=VALUE` overrides applied, see trainer.overrides), then every data file it names."""
    report = JobReport(str(spec_path))
    try:
        spec = load_spec(spec_path, overrides)
    except OverrideError:  # the command line is wrong, not the spec: a usage error for the caller
        raise
    except SpecError as e:
        report.spec_findings = [Finding(e.source, None, "error", f"{loc}: {msg}" if loc else msg)
                                for loc, msg in e.problems]
        return report
    report.spec = spec
    for check in SPEC_CHECKS:
        report.spec_findings += check(spec, Path(spec_path))
    base = Path(spec_path).parent
    tokenizer = None
    if check_tokens:
        try:
            tokenizer = load_job_tokenizer(spec.model.base)
        except Exception as e:  # offline with a Hub id not in the cache: lengths cannot be measured
            report.spec_findings.append(Finding(str(spec_path), None, "warning",
                                                f"model.base: tokenizer unavailable ({type(e).__name__}); "
                                                "token lengths not checked"))
    files = spec.data.files()
    digests = test_prompt_digests(base / files["test"]) if "test" in files else None
    parser = answer_parser_for(spec.data.task)
    for role, rel in files.items():
        kind = ROLE_OF_KIND[role]
        report.files.append(validate_file(
            base / rel, kind, tokenizer=tokenizer, max_length=_max_length_for(spec, kind),
            answer_parser=parser, test_prompts=None if role == "test" else digests,
            display=os.path.normpath(base / rel), on_progress=on_progress))
    return report
