"""The store over a local folder and over real S3 protocol (moto_server on 127.0.0.1, real boto3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.store import (
    MANIFEST,
    MARKER,
    IntegrityError,
    LocalStore,
    StoreError,
    StoreUnavailable,
    UnsafeKey,
    open_store,
    sha256_file,
)


def make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # crosses no multipart threshold
    (root / "sub" / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # multipart (8 MiB parts)
    return root


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(tmp_path / "store")
    s3_uri = request.getfixturevalue("s3_env")
    return open_store(f"{s3_uri}/prefix/deeper")


def test_upload_download_roundtrip_with_marker_last(store, tmp_path):
    src = make_tree(tmp_path / "src")
    assert not store.is_complete("runs/x")
    sent = store.upload_dir(src, "runs/x", progress=False)
    assert sent == 3 and store.is_complete("runs/x")
    listed = dict(store.list("runs/x"))
    assert set(listed) == {"a.txt", "sub/b.bin", "sub/big.bin", MARKER, MANIFEST}
    store.download_dir("runs/x", tmp_path / "back", progress=False)
    for rel in ("a.txt", "sub/b.bin", "sub/big.bin"):
        assert sha256_file(tmp_path / "back" / rel) == sha256_file(src / rel)


def test_reupload_of_same_content_sends_nothing(store, tmp_path):
    src = make_tree(tmp_path / "src")
    store.upload_dir(src, "k", progress=False)
    assert store.upload_dir(src, "k", progress=False) == 0
    (src / "a.txt").write_text("changed")
    assert store.upload_dir(src, "k", progress=False) == 1
    assert store.read_text("k/a.txt") == "changed"


def test_text_exists_delete(store):
    store.write_text("runs/r/run.json", '{"a": 1}')
    assert store.exists("runs/r/run.json") and store.read_text("runs/r/run.json") == '{"a": 1}'
    with pytest.raises(FileNotFoundError):
        store.read_text("runs/r/missing.json")
    store.delete("runs/r")
    assert store.list("runs/r") == []


def test_failed_upload_leaves_no_marker(tmp_path, monkeypatch):
    """A copy cut off half-way never looks complete: the marker is written only after every file.
    (The failure is injected into the store's file upload: it stands for a dropped connection.)"""
    src = make_tree(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    calls = []

    def flaky(local, key, sha256=None):
        calls.append(key)
        if key.endswith("big.bin"):
            raise StoreUnavailable("connection reset")
        return LocalStore.upload_file(store, local, key, sha256)

    monkeypatch.setattr(store, "upload_file", flaky)
    with pytest.raises(StoreUnavailable):
        store.upload_dir(src, "ckpt", progress=False, workers=1)
    assert calls and not store.is_complete("ckpt")


def test_unreachable_s3_is_retryable(monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StoreUnavailable, match="unreachable"):
        open_store("s3://nowhere/p").exists("x")


def test_bad_uris():
    with pytest.raises(ValueError, match="unsupported store URI"):
        open_store("gs://bucket/x")
    with pytest.raises(ValueError, match="no bucket"):
        open_store("s3:///x")


def test_reupload_over_a_cut_off_copy_ends_with_exactly_the_manifest(store, tmp_path):
    """A cut-off upload left a stale object (and no marker) in the prefix; the re-upload removes it,
    and the manifest, written before the marker, lists exactly the folder's files."""
    import json

    src = make_tree(tmp_path / "src")
    stale = tmp_path / "stale.txt"
    stale.write_text("from an earlier, cut-off upload")
    store.upload_file(stale, "ckpt/optimizer.pt.old")
    store.upload_file(src / "a.txt", "ckpt/a.txt")
    assert not store.is_complete("ckpt")
    store.upload_dir(src, "ckpt", progress=False)
    assert set(dict(store.list("ckpt"))) == {"a.txt", "sub/b.bin", "sub/big.bin", MARKER, MANIFEST}
    manifest = json.loads(store.read_text(f"ckpt/{MANIFEST}"))["files"]
    assert manifest == {rel: {"sha256": sha256_file(src / rel), "size": (src / rel).stat().st_size}
                        for rel in ("a.txt", "sub/b.bin", "sub/big.bin")}
    # a re-push repairs what differs: an object changed behind our back is sent again
    store.upload_file(stale, "ckpt/a.txt")
    assert store.upload_dir(src, "ckpt", progress=False) == 1 and store.read_text("ckpt/a.txt") == "alpha"
    assert store.upload_dir(src, "ckpt", progress=False) == 0
    same_size = tmp_path / "same-size.txt"
    same_size.write_text("alphX")  # same size, other content: the listing alone cannot tell
    store.upload_file(same_size, "ckpt/a.txt")
    assert store.upload_dir(src, "ckpt", progress=False) == 1 and store.read_text("ckpt/a.txt") == "alpha"


def test_download_takes_only_manifest_files_and_checks_their_hashes(store, tmp_path):
    src = make_tree(tmp_path / "src")
    store.upload_dir(src, "k", progress=False)
    extra = tmp_path / "extra"
    extra.write_text("not part of the folder")
    store.upload_file(extra, "k/sub/extra.txt")  # e.g. left by another writer: every reader ignores it
    store.download_dir("k", tmp_path / "back", progress=False, require_manifest=True)
    assert {p.relative_to(tmp_path / "back").as_posix() for p in (tmp_path / "back").rglob("*") if p.is_file()} \
        == {"a.txt", "sub/b.bin", "sub/big.bin"}
    bad = tmp_path / "bad"
    bad.write_text("alphx")  # same size, other content
    store.upload_file(bad, "k/a.txt")
    with pytest.raises(IntegrityError, match="a.txt: content differs"):
        store.download_dir("k", tmp_path / "back2", progress=False)
    assert not (tmp_path / "back2").exists() and not list(tmp_path.glob(".back2.*"))  # nothing half-written
    store.delete("k/sub/b.bin")
    with pytest.raises(IntegrityError, match="missing or resized: sub/b.bin"):
        store.download_dir("k", tmp_path / "back3", progress=False)


def test_two_downloads_into_one_cache_folder_both_succeed(store, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    src = make_tree(tmp_path / "src")
    store.upload_dir(src, "k", progress=False)
    dest = tmp_path / "cache" / "k"
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: store.download_dir("k", dest, progress=False), range(2)))
    assert sha256_file(dest / "sub/big.bin") == sha256_file(src / "sub/big.bin")


def test_listed_keys_that_escape_the_folder_are_refused(s3_env, tmp_path):
    """An S3 listing may hold keys with `..` segments; downloading must not follow them out."""
    import boto3

    store = open_store(f"{s3_env}/p")
    bucket = s3_env.removeprefix("s3://")
    boto3.client("s3").put_object(Bucket=bucket, Key="p/k/../../../../escaped.txt", Body=b"x")
    with pytest.raises(UnsafeKey, match="escaped.txt"):
        store.download_dir("k", tmp_path / "deep" / "dest", progress=False)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_exclusive_create_has_one_winner(store):
    from concurrent.futures import ThreadPoolExecutor

    from trainer.store import Exists

    def attempt(i: int) -> bool:
        try:
            store.create_exclusive("runs/r/_LEASE", f"holder {i}")
            return True
        except Exists:
            return False

    if isinstance(store, LocalStore):  # a hard link: atomic, so eight racing threads have one winner
        with ThreadPoolExecutor(8) as pool:
            wins = list(pool.map(attempt, range(8)))
    else:  # S3's If-None-Match is atomic on AWS; moto_server checks then writes, so race it only in turn
        wins = [attempt(i) for i in range(8)]
    assert wins.count(True) == 1
    assert store.read_text("runs/r/_LEASE") == f"holder {wins.index(True)}"


def test_run_lease_one_holder_expiry_and_release(store):
    from trainer.lease import LeaseHeld, RunLease

    first = RunLease(store, "runs/r/_LEASE", ttl=30, holder="a")
    first.acquire()
    with pytest.raises(LeaseHeld, match="being trained by a"):
        RunLease(store, "runs/r/_LEASE", ttl=30, wait=0, holder="b").acquire()
    first._stop.set()  # dies without releasing; its lease is made to have expired
    import json
    import time

    store.write_text("runs/r/_LEASE", json.dumps({"holder": "a", "expires_at": time.time() - 1}))
    second = RunLease(store, "runs/r/_LEASE", ttl=30, wait=0, holder="b")
    second.acquire()
    assert json.loads(store.read_text("runs/r/_LEASE"))["holder"] == "b"
    second.release()
    assert not store.exists("runs/r/_LEASE")


class _ErrorEndpoint:
    """An HTTP endpoint that answers every S3 request with one fixed error, as S3 does under load."""

    def __init__(self, status: int, code: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>m</Message>'
                "</Error>").encode()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("status,code,expected", [
    (503, "SlowDown", StoreUnavailable), (500, "InternalError", StoreUnavailable),
    (503, "ServiceUnavailable", StoreUnavailable), (400, "RequestTimeout", StoreUnavailable),
    (404, "NoSuchBucket", StoreError), (403, "AccessDenied", StoreError),
    (403, "InvalidAccessKeyId", StoreError)])
def test_s3_answers_are_classified_retryable_or_not(status, code, expected, monkeypatch, tmp_path):
    """Real boto3 against an endpoint answering with S3's own error documents: throttling, timeouts
    and 5xx are retryable (exit 75); a missing bucket or denied access is not (exit 2)."""
    endpoint = _ErrorEndpoint(status, code)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = open_store("s3://b/p")
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    calls = [lambda: store.write_text("k", "v"), lambda: store.list("k")]
    if status != 400:  # a HEAD answer has no body, so a 400's code cannot be told: not classified
        calls.append(lambda: store.upload_file(f, "k2", sha256="0" * 64))
    for call in calls:
        with pytest.raises(expected):
            call()
    endpoint.server.shutdown()
