"""`KEY=VALUE` overrides of spec fields on the command line, as axolotl, TRL and torchtune users expect:
`ft bundle create configs/demo.yaml stages.0.max_steps=3 finetune.lora.r=16`.

A key is a dotted path through the spec: field names, and list indices as numbers (`stages.0`). Each
step is checked against the spec's own models, so a misspelt or missing field is refused naming the
path before anything runs (`finetune.lora.rr`, `stages.9`); a section the YAML leaves to its defaults
(`finetune.lora`) may be set field by field. A value is read as YAML by the spec's own loader, so
`2e-5` is a number and `on` a string exactly as in the file, and `[a, b]` a list. Types and bounds
are then checked by the very model that checks the file: the overridden spec is the spec.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Union

from pydantic import BaseModel

from trainer.spec import JobSpec, SpecError, load_yaml

Path = tuple[str | int, ...]
_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


class OverrideError(SpecError):
    """A command-line override that names no field or does not parse: a usage error (exit 2), raised before
    the spec is checked, unlike a value the spec model refuses, which is a finding like any other."""


class _Refused(Exception):
    """One override that cannot apply: why, in words (wrapped into an OverrideError naming the override)."""


def parse_override(text: str, source: str = "<override>") -> tuple[Path, Any]:
    """`a.b.0.c=VALUE` → (("a", "b", 0, "c"), VALUE parsed as the spec's YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise OverrideError(source, [(f"override {text!r}", "expected KEY=VALUE, e.g. stages.0.max_steps=3")])
    parts = key.split(".")
    bad = [p for p in parts if not _PART.fullmatch(p)]
    if bad:
        raise OverrideError(source, [(f"override {text!r}", f"{key!r} is not a dotted path of field names and list "
                                  "indices (e.g. finetune.lora.r or stages.0.learning_rate)")])
    try:
        value = load_yaml(raw, "value") if raw.strip() else None
    except SpecError as e:
        raise OverrideError(source, [(f"override {text!r}", f"value: {e.problems[0][1]}")]) from None
    return tuple(int(p) if p.isdigit() else p for p in parts), value


def format_path(path: Path) -> str:
    return ".".join(str(p) for p in path)


# ------------------------------------------------------------------------------ the spec's shape
def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _options(annotation: Any) -> list[Any]:
    """The non-None alternatives of a (possibly Optional / union) annotation."""
    annotation = _strip(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [_strip(a) for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _models(annotation: Any) -> list[type[BaseModel]]:
    return [a for a in _options(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def _list_item(annotation: Any) -> Any | None:
    for a in _options(annotation):
        if typing.get_origin(a) is list:
            return typing.get_args(a)[0] if typing.get_args(a) else Any
    return None


def _fields_for(models: list[type[BaseModel]], node: dict) -> dict[str, Any]:
    """Field name → annotation for a mapping of one of `models`; a stage is told apart by its `method`."""
    chosen = [m for m in models if node.get("method") is not None and
              m.model_fields.get("method") is not None and m.model_fields["method"].default == node["method"]]
    fields: dict[str, Any] = {}
    for m in chosen or models:
        for name, info in m.model_fields.items():
            fields.setdefault(name, info.annotation)
    return fields


# ------------------------------------------------------------------------------------ applying
def _step_into_mapping(node: dict, part: str | int, annotation: Any, where: Path) -> Any:
    models = _models(annotation)
    if not models:
        return Any  # a free-form mapping: any key
    if isinstance(part, int):
        raise _Refused(f"{format_path(where) or 'the spec'} is a section, not a list: use a field name, not {part}")
    fields = _fields_for(models, node)
    if part not in fields:
        close = difflib.get_close_matches(part, list(fields), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; fields: {', '.join(fields)}"
        section = format_path(where) or "the spec"
        raise _Refused(f"{section} has no field {part!r}{hint}")
    return fields[part]


def _step_into_list(node: list, part: str | int, where: Path) -> None:
    name = format_path(where)
    if not isinstance(part, int):
        raise _Refused(f"{name} is a list: use an index (0-{len(node) - 1}), not {part!r}" if node else
                       f"{name} is an empty list")
    if part >= len(node):
        have = f"indices 0-{len(node) - 1}" if node else "no items"
        raise _Refused(f"{name}.{part}: no such item ({name} has {have})")


def _child(node: dict, part: str, annotation: Any, where: Path) -> Any:
    """The mapping or list under `node[part]`, creating an empty section the YAML left to its defaults."""
    child = node.get(part)
    if child is None and _models(annotation):
        node[part] = child = {}
    if isinstance(child, dict | list):
        return child
    what = "is not set: nothing below it to set" if child is None else f"is a value ({child!r}), not a section"
    raise _Refused(f"{format_path(where)} {what}")


def apply_path(data: dict, path: Path, value: Any) -> None:
    """Set `value` at `path` in the spec mapping `data`, checking each step against the spec's models."""
    node: Any = data
    annotation: Any = JobSpec
    for depth, part in enumerate(path):
        where = path[:depth]
        last = depth == len(path) - 1
        if isinstance(node, list):
            _step_into_list(node, part, where)
            annotation = _list_item(annotation) or Any
        elif isinstance(node, dict):
            annotation = _step_into_mapping(node, part, annotation, where)
        if last:
            node[part] = copy.deepcopy(value)
        elif isinstance(node, list):
            node = node[part]  # type: ignore[index]
            if not isinstance(node, dict | list):
                raise _Refused(f"{format_path(path[:depth + 1])} is a value ({node!r}), not a section")
        else:
            node = _child(node, part, annotation, path[:depth + 1])  # type: ignore[arg-type]


def apply_overrides(data: Any, overrides: Sequence[str], source: str) -> tuple[Any, dict[Path, str]]:
    """A copy of the spec mapping with every override applied in order, and {path: override} so that
    errors in an overridden field name the override instead of a line of the file."""
    if not overrides or not isinstance(data, dict):
        return data, {}
    data = copy.deepcopy(data)
    origins: dict[Path, str] = {}
    for text in overrides:
        path, value = parse_override(text, source)
        try:
            apply_path(data, path, value)
        except _Refused as e:
            raise OverrideError(source, [(f"override {text}", str(e))]) from None
        origins[path] = f"override {text}"
    return data, origins
