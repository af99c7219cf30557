"""The artifact store: one small interface over local folders and `s3://bucket/prefix` (boto3; any
S3-compatible endpoint through AWS_ENDPOINT_URL). Bundles, checkpoints and artifacts all go through it.

A folder counts as present only once its completion marker (`_COMPLETE`) is written, and the marker
is always written last, so a copy cut off half-way never looks complete. Just before the marker goes
a manifest (`_MANIFEST.json`: sha256 and size of every file), so a reader takes exactly the files
the writer meant (objects a cut-off earlier upload left behind are not among them) and can prove
that what it downloaded is what was written.

A folder several machines write (a multi-node checkpoint: each node holds its own ranks' RNG states and
shards) is uploaded in parts: each writer sends its files and a part manifest (`_PARTS/<part>.json`),
then one writer, once every part is there, writes the folder's manifest (their union) and the marker.

Errors: `StoreUnavailable` (timeouts, closed connections, 5xx, throttling: worth a retry) and
`StoreError` (a missing bucket, denied access, a corrupt folder, a key escaping its folder: not).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
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

from trainer import settings
from trainer.errors import BadInput, Retryable

MARKER = "_COMPLETE"
MANIFEST = "_MANIFEST.json"
STORE_FILES = {MARKER, MANIFEST}  # the store's own bookkeeping: never part of a folder's content
PARTS = "_PARTS"  # part manifests of a folder written by several machines
SHA_META = "sha256"  # S3 object metadata key holding the content hash (idempotent uploads)
CHUNK = 8 * 1024 * 1024


class StoreUnavailable(Retryable):
    """The store could not be reached or did not answer in time (network, endpoint down, 5xx,
    throttling). Retryable: the trainer exits with EXIT_RETRYABLE so SkyPilot's job recovery starts
    it again."""

    label = "store unavailable"


class StoreError(BadInput):
    """The store answered, and the answer will not change on a retry: no such bucket, access
    denied, no credentials, a corrupt folder. Bad input (exit 2)."""

    label = "store error"


class IntegrityError(StoreError):
    """A folder in the store does not match its manifest (missing, resized or altered files)."""


class UnsafeKey(StoreError):
    """A key from a listing or a manifest that would land outside the folder it belongs to."""


class Exists(Exception):
    """`create_exclusive` found the key already there."""


def safe_relative(rel: str, where: str = "") -> str:
    """`rel` as a relative POSIX path that stays inside its folder (no `..`, no absolute path, no
    empty or `.` segment, no backslash), else UnsafeKey."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise UnsafeKey(f"{where or 'store'}: refusing key {rel!r}: it would leave its folder")
    return rel


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


def _bookkeeping(rel: str) -> bool:
    return rel in STORE_FILES or rel.startswith(f"{PARTS}/")


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

    @abstractmethod
    def holds(self, key: str, sha256: str) -> bool:
        """Whether the object at `key` has this content."""

    @abstractmethod
    def create_exclusive(self, key: str, text: str) -> None:
        """Write `key` only if it does not exist yet (atomically), else raise Exists."""

    def url(self, key: str) -> str:
        return self.uri.rstrip("/") + "/" + key.strip("/")

    # Folders ---------------------------------------------------------------------------------
    def manifest(self, key: str) -> dict[str, dict] | None:
        """The folder's manifest {rel: {"sha256", "size"}}, or None when it has none."""
        try:
            data = json.loads(self.read_text(_join(key, MANIFEST)))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IntegrityError(f"{self.url(_join(key, MANIFEST))}: not a manifest ({e})") from None
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
                for v in files.values()):
            raise IntegrityError(f"{self.url(_join(key, MANIFEST))}: not a manifest (no files with sha256 and size)")
        for rel in files:
            safe_relative(rel, self.url(key))
        return files

    def upload_dir(
        self,
        local: Path,
        key: str,
        hashes: dict[str, str] | None = None,
        progress: bool = True,
        workers: int = 8,
        mark_complete: bool = True,
        on_file: Callable[[str], None] | None = None,
    ) -> int:
        """Upload a folder so that the store ends with exactly its files under the marker: identical
        files are skipped, objects not in the folder (left by a cut-off earlier upload) are removed,
        then the manifest and, last, the marker are written. Returns the number of files sent.
        `on_file(rel)` is called after each file (progress hooks, fault injection)."""
        files = [(rel, p) for rel, p in _local_files(Path(local)) if rel not in STORE_FILES]
        digests = {rel: (hashes or {}).get(rel) or sha256_file(p) for rel, p in files}
        wanted = {rel: {"sha256": digests[rel], "size": p.stat().st_size} for rel, p in files}
        remote = dict(self.list(key))
        exact = set(remote) - STORE_FILES == set(wanted) and all(remote[r] == m["size"] for r, m in wanted.items())
        if mark_complete and exact and MARKER in remote and self.manifest(key) == wanted and all(
                self.holds(_join(key, rel), meta["sha256"]) for rel, meta in wanted.items()):
            return 0  # already there, exactly (each object's content checked, not just its size)
        if MARKER in remote:  # from here until the new marker, the folder must not look complete
            self.delete(_join(key, MARKER))
        total = sum(p.stat().st_size for _, p in files)
        with _progress(progress) as bar:
            task = bar.add_task(f"upload → {self.url(key)}", total=total)
            sent = self._send(files, key, digests, workers, on_file, lambda size: bar.advance(task, size))
        for rel in sorted(set(remote) - set(wanted) - STORE_FILES):
            self.delete(_join(key, rel))
        if mark_complete:
            self.write_text(_join(key, MANIFEST), json.dumps({"files": wanted}, indent=1, sort_keys=True))
            self.write_text(_join(key, MARKER), "")
        return sent

    def _send(self, files: list[tuple[str, Path]], key: str, digests: dict[str, str], workers: int,
              on_file: Callable[[str], None] | None, advance: Callable[[int], None] | None = None) -> int:
        """Send `files` under `key` in parallel (identical objects skipped); the number sent."""
        def one(item: tuple[str, Path]) -> bool:
            rel, path = item
            changed = self.upload_file(path, _join(key, rel), digests[rel])
            if advance:
                advance(path.stat().st_size)
            if on_file:
                on_file(rel)
            return changed

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return sum(pool.map(one, files))

    def upload_part(self, local: Path, key: str, part: str, workers: int = 8,
                    on_file: Callable[[str], None] | None = None) -> int:
        """One writer's share of a folder: its files, then its part manifest. The folder is complete
        only after `finish_parts`. Returns the number of files sent."""
        files = [(rel, p) for rel, p in _local_files(Path(local)) if not _bookkeeping(rel)]
        digests = {rel: sha256_file(p) for rel, p in files}
        sent = self._send(files, key, digests, workers, on_file)
        wanted = {rel: {"sha256": digests[rel], "size": p.stat().st_size} for rel, p in files}
        self.write_text(_join(key, PARTS, f"{part}.json"), json.dumps({"files": wanted}, sort_keys=True))
        return sent

    def finish_parts(self, key: str, parts: list[str]) -> None:
        """Seal a folder written in `parts`: its manifest is the union of theirs (a file two writers
        both hold is taken from the first part, as a single writer would have written it), objects
        no part names are removed, and the marker goes last."""
        union: dict[str, dict] = {}
        for part in parts:
            try:
                files = json.loads(self.read_text(_join(key, PARTS, f"{part}.json")))["files"]
            except FileNotFoundError:
                raise IntegrityError(f"{self.url(key)}: part {part} was never uploaded") from None
            for rel, meta in files.items():
                union.setdefault(safe_relative(rel, self.url(key)), meta)
        for rel in sorted(set(dict(self.list(key))) - set(union)):
            if not _bookkeeping(rel):
                self.delete(_join(key, rel))
        self.write_text(_join(key, MANIFEST), json.dumps({"files": union}, indent=1, sort_keys=True))
        self.write_text(_join(key, MARKER), "")

    def unmark(self, key: str) -> None:
        """The folder no longer looks complete (before it is written again)."""
        if self.exists(_join(key, MARKER)):
            self.delete(_join(key, MARKER))

    def download_dir(self, key: str, local: Path, progress: bool = True, workers: int = 8,
                     require_manifest: bool = False) -> None:
        """Download a folder into `local`: exactly the manifest's files (when it has one), each checked
        against its sha256, into a temporary folder of this call's own that is renamed into place at
        the end, so a cut-off or concurrent download never leaves a half folder at `local`. Raises
        IntegrityError when the folder does not match its manifest."""
        local = Path(local)
        objects = dict(self.list(key))
        if not objects:
            raise FileNotFoundError(f"nothing at {self.url(key)}")
        manifest = self.manifest(key) if MANIFEST in objects else None
        if manifest is None and require_manifest:
            raise IntegrityError(f"{self.url(key)}: no manifest")
        if manifest is not None:
            missing = sorted(rel for rel, meta in manifest.items() if objects.get(rel) != meta["size"])
            if missing:
                raise IntegrityError(f"{self.url(key)}: missing or resized: {', '.join(missing[:5])}")
            wanted = {rel: meta["size"] for rel, meta in manifest.items()}
        else:
            wanted = {safe_relative(rel, self.url(key)): size for rel, size in objects.items()
                      if not _bookkeeping(rel)}
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", suffix=".partial", dir=local.parent))
        try:
            with _progress(progress) as bar:
                task = bar.add_task(f"download ← {self.url(key)}", total=sum(wanted.values()))

                def one(item: tuple[str, int]) -> None:
                    rel, size = item
                    self.download_file(_join(key, rel), tmp / rel)
                    if manifest is not None and sha256_file(tmp / rel) != manifest[rel]["sha256"]:
                        raise IntegrityError(f"{self.url(_join(key, rel))}: content differs from the manifest")
                    bar.advance(task, size)

                with ThreadPoolExecutor(max_workers=workers) as pool:
                    list(pool.map(one, sorted(wanted.items())))
            if local.exists():
                shutil.rmtree(local)
            try:
                tmp.rename(local)
            except OSError:
                if not local.is_dir():  # another process renamed its copy into place first: use it
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def is_complete(self, key: str) -> bool:
        return self.exists(_join(key, MARKER))


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key.strip("/") if key.strip("/") else self.root

    def holds(self, key: str, sha256: str) -> bool:
        path = self._path(key)
        return path.is_file() and sha256_file(path) == sha256

    def create_exclusive(self, key: str, text: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(tmp, dest)  # atomic, and fails when dest exists: a reader never sees half a file
        except FileExistsError:
            raise Exists(self.url(key)) from None
        finally:
            tmp.unlink()

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


# S3 error codes that a retry can outlive; any other 4xx is an answer that will not change.
RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                   "ServiceUnavailable", "InternalError", "ExpiredToken", "RequestLimitExceeded", "BadGateway"}
FINAL_CODES = {"NoSuchBucket": "no such bucket", "AccessDenied": "access denied",
               "InvalidAccessKeyId": "the AWS access key is not valid",
               "SignatureDoesNotMatch": "the AWS secret key does not match", "AllAccessDisabled": "access disabled"}


def classify_s3_error(uri: str, error: BaseException) -> Exception | None:
    """The store error a boto3/botocore exception stands for (None: not a store failure)."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return StoreError(f"store {uri}: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                          "or an AWS profile)")
    if isinstance(error, ClientError):
        err = error.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in FINAL_CODES or code == "403" or status == 403:
            return StoreError(f"store {uri}: {FINAL_CODES.get(code, 'access denied')} ({code or status})")
        if code in RETRYABLE_CODES or status >= 500 or status == 429 or code.isdigit() and int(code) >= 500:
            return StoreUnavailable(f"store {uri}: {code or status} (retryable)")
        return StoreError(f"store {uri}: {code or status}: {err.get('Message', '')}".rstrip(": "))
    if isinstance(error, S3UploadFailedError):  # boto3 wraps the ClientError's text in its message
        text = str(error)
        for code, reason in FINAL_CODES.items():
            if code in text:
                return StoreError(f"store {uri}: {reason} ({code})")
        return StoreUnavailable(f"store {uri}: upload failed: {text.splitlines()[0][:300]}")
    if isinstance(error, (ConnectionError, HTTPClientError, RetriesExceededError)):
        return StoreUnavailable(f"store {uri} unreachable or not answering: {error}")
    if isinstance(error, BotoCoreError):
        return StoreUnavailable(f"store {uri}: {error}")
    return None


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
        # A stalled endpoint must end in a retryable error within minutes, not hang the job:
        # FT_STORE_TIMEOUT_S bounds each request, AWS_MAX_ATTEMPTS the retries.
        timeout = settings.store_timeout_s()
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or 5)
        config = Config(retries={"max_attempts": attempts, "mode": "standard"}, max_pool_connections=32,
                        connect_timeout=min(10.0, timeout), read_timeout=timeout)
        self.client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=config)
        self.transfer = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=8,
                                       num_download_attempts=attempts)

    def _key(self, key: str) -> str:
        return _join(self.prefix, key)

    def _call(self, fn, *args, **kwargs):
        from botocore.exceptions import ClientError

        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code", "") in ("404", "NoSuchKey",
                                                                                                "NotFound"):
                full = kwargs.get("Key") or (args[1] if len(args) > 1 else "")
                raise FileNotFoundError(self.url(full[len(self.prefix):] if full.startswith(self.prefix) else full)) \
                    from None
            mapped = classify_s3_error(self.uri, e)
            if mapped is None:
                raise
            raise mapped from e

    def _head(self, key: str) -> dict | None:
        try:
            return self._call(self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return None

    def holds(self, key: str, sha256: str) -> bool:
        head = self._head(key)  # the sha256 we stored as metadata with the object
        return bool(head) and head.get("Metadata", {}).get(SHA_META) == sha256

    def upload_file(self, local: Path, key: str, sha256: str | None = None) -> bool:
        digest = sha256 or sha256_file(Path(local))
        head = self._head(key)
        if head and head.get("Metadata", {}).get(SHA_META) == digest and head.get("ContentLength") == \
                Path(local).stat().st_size:
            return False
        self._call(self.client.upload_file, str(local), self.bucket, self._key(key),
                   ExtraArgs={"Metadata": {SHA_META: digest}}, Config=self.transfer)
        return True

    def download_file(self, key: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        self._call(self.client.download_file, self.bucket, self._key(key), str(local), Config=self.transfer)

    def write_text(self, key: str, text: str) -> None:
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=text.encode())

    def create_exclusive(self, key: str, text: str) -> None:
        from botocore.exceptions import ClientError

        try:  # S3 conditional write: fails with 412 when the key exists
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=text.encode(), IfNoneMatch="*")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise Exists(self.url(key)) from None
            raise classify_s3_error(self.uri, e) or e from e
        except Exception as e:
            mapped = classify_s3_error(self.uri, e)
            if mapped is None:
                raise
            raise mapped from e

    def read_text(self, key: str) -> str:
        obj = self._call(self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return self._call(lambda: obj["Body"].read()).decode("utf-8")

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
        if not keys and self._head(prefix) is not None:  # a single object
            keys = [self._key(prefix)]
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
