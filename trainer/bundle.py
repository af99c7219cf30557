"""Frozen job bundles: a folder holding the resolved spec, the data files, the prototype's results and a
manifest with every file's sha256. The bundle id is a hash over the files' paths and hashes only, so
the same inputs give the same id on any machine, at any time, from any path; provenance (tool
versions, git commit, time) sits in the manifest beside the hashed part.

Bundles are written atomically (a temporary sibling folder renamed into place) and never modified.
Verification trusts nothing a bundle says about itself: the folder name (or URI) carries the id, the
manifest must list it, and the recomputed hashes must give it; every listed path stays inside the
bundle, symlinks are refused, the spec inside must parse and name only listed data files, and each
data file is read with the validator's own rules before the trainer trains on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainer.errors import BadInput
from trainer.settings import cache_root
from trainer.spec import JobSpec, SpecError, load_yaml, parse_spec
from trainer.store import MARKER, STORE_FILES, open_store, sha256_file, split_uri
from trainer.textio import ROLE_OF_KIND, RowError, check_file

MANIFEST = "manifest.json"
SPEC_FILE = "spec.yaml"
FORMAT = 1
TRACKED_TOOLS = ["llm-finetuning", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                 "mlx", "mlx-lm", "skypilot"]


class BundleError(BadInput):
    """A bundle that must not be trained on; the trainer exits 2 on it."""


# `<job name>-<first 12 hex digits of the bundle id>`: the folder and the URI's last segment
FOLDER = re.compile(r"(?P<name>[a-z0-9][a-z0-9-]{0,62})-(?P<id>[0-9a-f]{12})")
_checked: set[tuple[str, str]] = set()  # (data file, sha256) already read with the validator's rules


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal[1]
    bundle_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    files: dict[str, FileEntry] = Field(min_length=1)
    provenance: dict[str, Any] = Field(default_factory=dict)


def safe_rel(rel: str) -> str:
    """`rel` when it is a plain relative path that stays inside its folder, else BundleError."""
    parts = PurePosixPath(rel).parts
    if (not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel or ":" in rel.split("/")[0]
            or any(p in ("", ".", "..") for p in rel.split("/")) or not parts):
        raise BundleError(f"refusing path {rel!r}: it would leave the bundle")
    return rel


def parse_manifest(text: str, where: str) -> Manifest:
    try:
        manifest = Manifest.model_validate(json.loads(text))
    except json.JSONDecodeError as e:
        raise BundleError(f"{where}: unreadable manifest (not JSON: {e.msg} at line {e.lineno})") from None
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise BundleError(f"{where}: malformed manifest: {loc}: {first['msg']}") from None
    except (ValueError, RecursionError) as e:
        raise BundleError(f"{where}: unreadable manifest ({e})") from None
    for rel in manifest.files:
        try:
            safe_rel(rel)
        except BundleError as e:
            raise BundleError(f"{where}: {e}") from None
    return manifest


@dataclass(frozen=True)
class Bundle:
    path: Path
    bundle_id: str
    manifest: dict

    @property
    def spec(self) -> JobSpec:
        return _read_spec(self.path)

    def data_path(self, role: str) -> Path | None:
        """The role's data file, after checking that the manifest lists it (so it is hashed and inside the
        bundle) and that every row passes the validator's rules: BundleError naming file:line if not."""
        spec = self.spec
        rel = getattr(spec.data, role)
        if not rel:
            return None
        entry = self.manifest["files"].get(rel)
        if entry is None:
            raise BundleError(f"{self.path / SPEC_FILE}: data.{role}: {rel!r} is not a file of this bundle")
        path = self.path / safe_rel(rel)
        if (str(path), entry["sha256"]) not in _checked:
            try:
                check_file(path, ROLE_OF_KIND[role], spec.data.task, display=f"{self.path.name}/{rel}")
            except RowError as e:
                raise BundleError(f"bundle data the trainer cannot train on: {e}") from None
            _checked.add((str(path), entry["sha256"]))
        return path

    @property
    def prototype_adapter(self) -> Path | None:
        p = self.path / "prototype" / "adapter"
        return p if (p / "adapter_config.json").exists() else None

    @property
    def prototype_metrics(self) -> dict | None:
        p = self.path / "prototype" / "metrics.json"
        return json.loads(p.read_text()) if p.exists() else None


def bundle_id_of(files: dict[str, dict]) -> str:
    canonical = json.dumps({rel: files[rel]["sha256"] for rel in sorted(files)}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class _SpecDumper(yaml.SafeDumper):
    """Quotes the strings trainer.spec's loader would read back as numbers (`1e5`: YAML 1.2 floats)."""


_NUMBERLIKE = re.compile(r"[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+")
_SpecDumper.add_representer(str, lambda d, v: d.represent_scalar(
    "tag:yaml.org,2002:str", v, style='"' if _NUMBERLIKE.fullmatch(v) else None))


def _read_spec(root: Path) -> JobSpec:
    path = root / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: unreadable spec ({e})") from None
    return parse_spec(load_yaml(text, str(path)), str(path), text)


def _hash_tree(root: Path) -> dict[str, dict]:
    """{rel: {sha256, size}} of every regular file; BundleError for a symlink or anything else that is
    not a plain file or folder (a link's target is outside what the manifest can vouch for)."""
    files = {}
    for folder, dirs, names in os.walk(root):
        for name in sorted(dirs + names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{root}: {rel} is a symlink; a bundle holds plain files only")
            if stat.S_ISREG(mode) and rel != MANIFEST and rel not in STORE_FILES:
                files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
            elif not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                raise BundleError(f"{root}: {rel} is not a plain file")
    return dict(sorted(files.items()))


def _provenance() -> dict:
    versions = {}
    for tool in TRACKED_TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            pass
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"versions": versions, "git_commit": commit,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_bundle(spec: JobSpec, spec_dir: Path, out_dir: Path, prototype_dir: Path | None = None) -> Bundle:
    """Freeze `spec` (data paths relative to `spec_dir`) into `out_dir/<name>-<id12>`; atomic."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out_dir))
    try:
        resolved = spec.resolved()
        for role, rel in spec.data.files().items():
            src = (spec_dir / rel).resolve()
            dest = Path("data") / f"{role}{''.join(src.suffixes) or '.jsonl'}"
            (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / dest)
            resolved["data"][role] = dest.as_posix()
        if prototype_dir and (prototype_dir / "peft_adapter" / "adapter_config.json").exists():
            shutil.copytree(prototype_dir / "peft_adapter", tmp / "prototype" / "adapter")
            if (prototype_dir / "metrics.json").exists():
                shutil.copyfile(prototype_dir / "metrics.json", tmp / "prototype" / "metrics.json")
        (tmp / SPEC_FILE).write_text(yaml.dump(resolved, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True),
                                     encoding="utf-8")
        files = _hash_tree(tmp)
        bundle_id = bundle_id_of(files)
        manifest = {"format": FORMAT, "bundle_id": bundle_id, "name": spec.name, "files": files,
                    "provenance": _provenance()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a container's non-root user must read the bundle
        final = out_dir / f"{spec.name}-{bundle_id[:12]}"
        if final.exists():
            existing = verify_bundle(final)  # same id = same content; keep the first copy
            shutil.rmtree(tmp)
            return existing
        os.replace(tmp, final)
        return Bundle(final, bundle_id, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_bundle(path: Path, folder_name: str | None = None) -> Bundle:
    """Recompute every hash; BundleError naming each changed, missing or extra file, and any mismatch
    between the id in the folder name (or `folder_name`, for a download not yet in place), the manifest's
    id and the recomputed one. The spec inside must parse and point only at files of the bundle."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    try:
        text = (path / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{path}: no {MANIFEST}; not a bundle") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path / MANIFEST}: unreadable manifest ({e})") from None
    if (path / MANIFEST).is_symlink():
        raise BundleError(f"{path / MANIFEST} is a symlink; a bundle holds plain files only")
    manifest = parse_manifest(text, str(path / MANIFEST))
    expected = {rel: entry.model_dump() for rel, entry in manifest.files.items()}
    actual = _hash_tree(path)
    problems = []
    folder = FOLDER.fullmatch(folder_name or path.name)
    if folder is None:
        problems.append(f"folder: {folder_name or path.name!r} is not <name>-<id12>, so nothing names the bundle "
                        "it should be")
    elif (folder["name"], folder["id"]) != (manifest.name, manifest.bundle_id[:12]):
        problems.append(f"folder: {folder.group(0)!r} names bundle {folder['id']}, the manifest says "
                        f"{manifest.name}-{manifest.bundle_id[:12]}")
    for rel in sorted(set(expected) | set(actual)):
        if rel not in actual:
            problems.append(f"missing: {rel}")
        elif rel not in expected:
            problems.append(f"extra: {rel}")
        elif actual[rel]["sha256"] != expected[rel]["sha256"]:
            problems.append(f"changed: {rel} (sha256 {actual[rel]['sha256'][:12]}…, manifest says "
                            f"{expected[rel]['sha256'][:12]}…)")
        elif actual[rel]["size"] != expected[rel]["size"]:
            problems.append(f"changed: {rel} (size {actual[rel]['size']}, manifest says {expected[rel]['size']})")
    if bundle_id_of(expected) != manifest.bundle_id:
        problems.append("manifest: bundle_id does not match the listed files")
    if SPEC_FILE not in expected:
        problems.append(f"missing: {SPEC_FILE} (not listed in the manifest)")
    if problems:
        raise BundleError(f"bundle {path} failed verification:\n  " + "\n  ".join(problems))
    try:
        spec = _read_spec(path)
    except SpecError as e:
        raise BundleError(f"bundle {path}: its {SPEC_FILE} is not a valid spec:\n  {e}") from None
    if spec.name != manifest.name:
        problems.append(f"{SPEC_FILE}: name {spec.name!r}, the manifest says {manifest.name!r}")
    for role, rel in spec.data.files().items():
        if rel not in expected or not rel.startswith("data/"):
            problems.append(f"{SPEC_FILE}: data.{role}: {rel!r} is not a data file of this bundle (it would be "
                            "trained on unhashed)")
    if problems:
        raise BundleError(f"bundle {path} failed verification:\n  " + "\n  ".join(problems))
    return Bundle(path, manifest.bundle_id, manifest.model_dump())


def bundle_key(bundle: Bundle) -> str:
    return f"bundles/{bundle.path.name}"


def push_bundle(bundle: Bundle, store_uri: str, progress: bool = True) -> str:
    """Upload to `<store>/bundles/<name>-<id12>`. A complete identical copy costs one check per file and
    is left alone; whatever differs (a changed, missing or extra object) is repaired."""
    store = open_store(store_uri)
    key = bundle_key(bundle)
    hashes = {rel: f["sha256"] for rel, f in bundle.manifest["files"].items()}
    store.upload_dir(bundle.path, key, hashes=hashes, progress=progress)
    return store.url(key)


def remote_problems(store: Any, key: str, manifest: Manifest) -> list[str]:
    """What the store's listing under a bundle prefix says against its manifest: missing or resized
    objects, extra (stale or planted) ones, and keys that would leave the folder."""
    listing = dict(store.list(key))
    problems = []
    for rel, size in sorted(listing.items()):
        if rel in STORE_FILES or rel == MANIFEST:
            continue
        try:
            safe_rel(rel)
        except BundleError as e:
            problems.append(f"unsafe object: {e}")
            continue
        if rel not in manifest.files:
            problems.append(f"extra object: {rel} ({size} bytes, not in the manifest)")
        elif size != manifest.files[rel].size:
            problems.append(f"changed object: {rel} (size {size}, manifest says {manifest.files[rel].size})")
    problems += [f"missing object: {rel}" for rel in sorted(set(manifest.files) - set(listing))]
    return problems


def _download(store: Any, key: str, manifest: Manifest, into: Path) -> None:
    """Exactly the manifest's files (each path checked to stay inside `into`), in parallel."""
    root = into.resolve()

    def one(rel: str) -> None:
        dest = (into / safe_rel(rel)).resolve()
        if not dest.is_relative_to(root):
            raise BundleError(f"refusing path {rel!r}: it would leave the bundle")
        store.download_file(f"{key}/{rel}", dest)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, sorted(manifest.files)))


def fetch_bundle(uri: str, cache_dir: Path | None = None, progress: bool = True, use_cache: bool = True) -> Bundle:
    """A local bundle folder is verified in place. A store URI is checked against its remote listing, then
    downloaded into a temporary folder of this call's own, verified there and renamed into the cache, so
    two processes fetching the same bundle never share a half-written folder (the one that renames second
    uses the first one's copy). A verified cached copy with the same id is used as is unless `use_cache`
    is False (`ft bundle verify` always reads the remote objects)."""
    del progress  # downloads are per-file and parallel; the trainer prints the stage progress
    if "://" not in uri or uri.startswith("file://"):
        return verify_bundle(Path(uri.removeprefix("file://")))
    store, key = split_uri(uri)
    key = key.rstrip("/")
    name = key.rsplit("/", 1)[-1]
    if FOLDER.fullmatch(name) is None:
        raise BundleError(f"{uri}: the last segment must be <name>-<id12> (the id the bundle must have)")
    if not store.is_complete(key):
        raise BundleError(f"{uri}: no complete bundle there (no {MARKER} marker)")
    try:
        text = store.read_text(f"{key}/{MANIFEST}")
    except FileNotFoundError:
        raise BundleError(f"{uri}: no {MANIFEST}; not a bundle") from None
    manifest = parse_manifest(text, f"{uri}/{MANIFEST}")
    if (manifest.name, manifest.bundle_id[:12]) != (FOLDER.fullmatch(name)["name"], FOLDER.fullmatch(name)["id"]):
        raise BundleError(f"{uri}: the URI names bundle {name}, its manifest says "
                          f"{manifest.name}-{manifest.bundle_id[:12]}")
    problems = remote_problems(store, key, manifest)
    if problems:
        raise BundleError(f"bundle {uri} failed verification:\n  " + "\n  ".join(problems))
    cache = Path(cache_dir or cache_root()) / "bundles" / name
    if use_cache and cache.is_dir():
        try:
            cached = verify_bundle(cache)
            if cached.bundle_id == manifest.bundle_id:
                return cached
        except BundleError:
            pass  # a damaged copy: replaced below
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=cache.parent))
    try:
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
        try:
            _download(store, key, manifest, tmp)
        except FileNotFoundError as e:
            raise BundleError(f"{uri}: an object vanished while downloading ({e})") from None
        verify_bundle(tmp, folder_name=name)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a container's non-root user must read the bundle
        try:
            os.rename(tmp, cache)
        except OSError:  # a copy is already in place: another process's download, or a damaged old one
            try:
                winner = verify_bundle(cache)
                if winner.bundle_id == manifest.bundle_id:
                    return winner
            except BundleError:
                pass
            shutil.rmtree(cache, ignore_errors=True)
            os.rename(tmp, cache)
        return Bundle(cache, manifest.bundle_id, manifest.model_dump())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
