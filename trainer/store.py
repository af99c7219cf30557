"""The artifact store: one small interface over local folders and `s3://bucket/prefix` (boto3; any
S3-compatible endpoint through AWS_ENDPOINT_URL). Bundles, checkpoints and artifacts all go through it.

A folder counts as present only once its completion marker (`_COMPLETE`) is written, and the marker
is always written last, so a copy cut off half-way never looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

MARKER = "_COMPLETE"
SHA_META = "sha256"  # S3 object metadata key holding the content hash (idempotent uploads)
CHUNK = 8 * 1024 * 1024


def cache_root() -> Path:
    """Where local copies live (bundles, runs, the built-in model): $FT_CACHE, else ~/.cache/ft."""
    return Path(os.environ.get("FT_CACHE", Path.home() / ".cache" / "ft"))


class StoreUnavailable(RuntimeError):
    """The store could not be reached (network, endpoint down). Retryable: the trainer exits with
    EXIT_RETRYABLE so SkyPilot's job recovery starts it again."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )


def _local_files(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.relative_to(root).as_posix(), path


class Store(ABC):
    """Keys are `/`-separated paths relative to the store's root."""

    uri: str

    @abstractmethod
    def upload_file(self, local: Path, key: str, sha256: str | None = None) -> bool:
        """Copy one file; returns False when an identical object was already there."""

    @abstractmethod
    def download_file(self, key: str, local: Path) -> None: ...

    @abstractmethod
    def write_text(self, key: str, text: str) -> None: ...

    @abstractmethod
    def read_text(self, key: str) -> str: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key relative to prefix, size) for every object under prefix."""

    @abstractmethod
    def delete(self, prefix: str) -> None: ...

    def url(self, key: str) -> str:
        return self.uri.rstrip("/") + "/" + key.strip("/")

    # Folders ---------------------------------------------------------------------------------
    def upload_dir(
        self,
        local: Path,
        key: str,
        hashes: dict[str, str] | None = None,
        progress: bool = True,
        workers: int = 8,
        mark_complete: bool = True,
    ) -> int:
        """Upload a folder; identical files are skipped. The marker goes last. Returns files sent."""
        files = [(rel, p) for rel, p in _local_files(Path(local)) if rel != MARKER]
        total = sum(p.stat().st_size for _, p in files)
        sent = 0
        with _progress(progress) as bar:
            task = bar.add_task(f"upload → {self.url(key)}", total=total)

            def one(item: tuple[str, Path]) -> bool:
                rel, path = item
                changed = self.upload_file(path, _join(key, rel), (hashes or {}).get(rel))
                bar.advance(task, path.stat().st_size)
                return changed

            with ThreadPoolExecutor(max_workers=workers) as pool:
                sent = sum(pool.map(one, files))
        if mark_complete:
            self.write_text(_join(key, MARKER), "")
        return sent

    def download_dir(self, key: str, local: Path, progress: bool = True, workers: int = 8) -> None:
        """Download a folder into `local` (written into a temporary sibling, then renamed)."""
        local = Path(local)
        objects = self.list(key)
        if not objects:
            raise FileNotFoundError(f"nothing at {self.url(key)}")
        tmp = local.with_name(local.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        total = sum(size for _, size in objects)
        with _progress(progress) as bar:
            task = bar.add_task(f"download ← {self.url(key)}", total=total)

            def one(item: tuple[str, int]) -> None:
                rel, size = item
                self.download_file(_join(key, rel), tmp / rel)
                bar.advance(task, size)

            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(one, objects))
        if local.exists():
            shutil.rmtree(local)
        tmp.rename(local)

    def is_complete(self, key: str) -> bool:
        return self.exists(_join(key, MARKER))

    def mark_complete(self, key: str) -> None:
        self.write_text(_join(key, MARKER), "")


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key.strip("/") if key.strip("/") else self.root

    def upload_file(self, local: Path, key: str, sha256: str | None = None) -> bool:
        dest = self._path(key)
        if dest.exists() and dest.stat().st_size == Path(local).stat().st_size:
            if sha256_file(dest) == (sha256 or sha256_file(Path(local))):
                return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)
        return True

    def download_file(self, key: str, local: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(self.url(key))
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)

    def write_text(self, key: str, text: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)

    def read_text(self, key: str) -> str:
        try:
            return self._path(key).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(self.url(key)) from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[tuple[str, int]]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return [(rel, p.stat().st_size) for rel, p in _local_files(base) if not rel.endswith(".tmp")]

    def delete(self, prefix: str) -> None:
        target = self._path(prefix)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


class S3Store(Store):
    def __init__(self, uri: str):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"store URI {uri!r} has no bucket (expected s3://bucket/prefix)")
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32,
                        connect_timeout=10, read_timeout=60)
        self.client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=config)
        self.transfer = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=8)

    def _key(self, key: str) -> str:
        return _join(self.prefix, key)

    def _call(self, fn, *args, **kwargs):
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        try:
            return fn(*args, **kwargs)
        except (EndpointConnectionError, ConnectionError) as e:
            raise StoreUnavailable(f"store {self.uri} unreachable: {e}") from e
        except NoCredentialsError as e:
            raise StoreUnavailable(f"store {self.uri}: no AWS credentials in the environment") from e
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(self.url(args[0] if args else "")) from None
            if code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
                raise StoreUnavailable(f"store {self.uri}: {code}") from e
            raise

    def _head(self, key: str) -> dict | None:
        try:
            return self._call(self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return None

    def upload_file(self, local: Path, key: str, sha256: str | None = None) -> bool:
        digest = sha256 or sha256_file(Path(local))
        head = self._head(key)
        if head and head.get("Metadata", {}).get(SHA_META) == digest:
            return False
        self._call(self.client.upload_file, str(local), self.bucket, self._key(key),
                   ExtraArgs={"Metadata": {SHA_META: digest}}, Config=self.transfer)
        return True

    def download_file(self, key: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        self._call(self.client.download_file, self.bucket, self._key(key), str(local), Config=self.transfer)

    def write_text(self, key: str, text: str) -> None:
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=text.encode())

    def read_text(self, key: str) -> str:
        try:
            obj = self._call(self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            raise FileNotFoundError(self.url(key)) from None
        return obj["Body"].read().decode("utf-8")

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def list(self, prefix: str) -> list[tuple[str, int]]:
        full = self._key(prefix)
        full = full + "/" if full else ""
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        for page in pages:
            for obj in page.get("Contents", []):
                out.append((obj["Key"][len(full):], obj["Size"]))
        return sorted(out)

    def delete(self, prefix: str) -> None:
        keys = [_join(self._key(prefix), rel) for rel, _ in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self._call(self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch})


def open_store(uri: str | Path) -> Store:
    uri = str(uri)
    if uri.startswith("s3://"):
        return S3Store(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported store URI {uri!r}: use a local folder or s3://bucket/prefix")
    return LocalStore(uri.removeprefix("file://"))


def split_uri(uri: str) -> tuple[Store, str]:
    """`s3://b/p/bundles/x` → (store at s3://b/p/bundles, 'x'): the parent as store, last part as key."""
    uri = uri.rstrip("/")
    parent, _, name = uri.rpartition("/")
    if uri.startswith("s3://") and parent == "s3:/":
        raise ValueError(f"{uri!r} names a bucket, not a folder in it")
    return open_store(parent or "."), name
