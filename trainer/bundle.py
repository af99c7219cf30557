"""Frozen job bundles: a folder holding the resolved spec, the data files, the prototype's results and a
manifest with every file's sha256. The bundle id is a hash over the files' paths and hashes only, so
the same inputs give the same id on any machine, at any time, from any path; provenance (tool
versions, git commit, time) sits in the manifest beside the hashed part.

Bundles are written atomically (a temporary sibling folder renamed into place) and never modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from trainer.spec import JobSpec, parse_spec
from trainer.store import MARKER, cache_root, open_store, sha256_file, split_uri

MANIFEST = "manifest.json"
SPEC_FILE = "spec.yaml"
FORMAT = 1
TRACKED_TOOLS = ["llm-finetuning", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                 "mlx", "mlx-lm", "skypilot"]


class BundleError(ValueError):
    pass


@dataclass(frozen=True)
class Bundle:
    path: Path
    bundle_id: str
    manifest: dict

    @property
    def spec(self) -> JobSpec:
        text = (self.path / SPEC_FILE).read_text(encoding="utf-8")
        return parse_spec(yaml.safe_load(text), str(self.path / SPEC_FILE), text)

    def data_path(self, role: str) -> Path | None:
        rel = getattr(self.spec.data, role)
        return self.path / rel if rel else None

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


def _hash_tree(root: Path) -> dict[str, dict]:
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in (MANIFEST, MARKER):
            files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


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
        (tmp / SPEC_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8")
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


def verify_bundle(path: Path) -> Bundle:
    """Recompute every hash; raise BundleError naming each changed, missing or extra file."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        expected: dict[str, dict] = manifest["files"]
    except FileNotFoundError:
        raise BundleError(f"{path}: no {MANIFEST}; not a bundle") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BundleError(f"{path / MANIFEST}: unreadable manifest ({e})") from None
    actual = _hash_tree(path)
    problems = []
    for rel in sorted(set(expected) | set(actual)):
        if rel not in actual:
            problems.append(f"missing: {rel}")
        elif rel not in expected:
            problems.append(f"extra: {rel}")
        elif actual[rel]["sha256"] != expected[rel]["sha256"]:
            problems.append(f"changed: {rel} (sha256 {actual[rel]['sha256'][:12]}…, manifest says "
                            f"{expected[rel]['sha256'][:12]}…)")
    if not problems and bundle_id_of(expected) != manifest.get("bundle_id"):
        problems.append("manifest: bundle_id does not match the listed files")
    if problems:
        raise BundleError(f"bundle {path} failed verification:\n  " + "\n  ".join(problems))
    return Bundle(path, manifest["bundle_id"], manifest)


def bundle_key(bundle: Bundle) -> str:
    return f"bundles/{bundle.path.name}"


def push_bundle(bundle: Bundle, store_uri: str, progress: bool = True) -> str:
    """Upload to `<store>/bundles/<name>-<id12>`; skipped when a complete copy with the same id is there."""
    store = open_store(store_uri)
    key = bundle_key(bundle)
    if store.is_complete(key):
        try:
            if json.loads(store.read_text(f"{key}/{MANIFEST}")).get("bundle_id") == bundle.bundle_id:
                return store.url(key)
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    hashes = {rel: f["sha256"] for rel, f in bundle.manifest["files"].items()}
    store.upload_dir(bundle.path, key, hashes=hashes, progress=progress)
    return store.url(key)


def fetch_bundle(uri: str, cache_dir: Path | None = None, progress: bool = True) -> Bundle:
    """A local bundle folder is verified in place; a store URI is downloaded to the cache, then verified."""
    if "://" not in uri or uri.startswith("file://"):
        return verify_bundle(Path(uri.removeprefix("file://")))
    store, name = split_uri(uri)
    if not store.is_complete(name):
        raise BundleError(f"{uri}: no complete bundle there (no {MARKER} marker)")
    cache = Path(cache_dir or cache_root()) / "bundles" / name
    if cache.exists():
        try:
            return verify_bundle(cache)
        except BundleError:
            shutil.rmtree(cache)
    store.download_dir(name, cache, progress=progress)
    (cache / MARKER).unlink(missing_ok=True)
    return verify_bundle(cache)
