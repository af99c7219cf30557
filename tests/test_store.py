"""The store over a local folder and over real S3 protocol (moto_server on 127.0.0.1, real boto3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.store import MARKER, LocalStore, StoreUnavailable, open_store, sha256_file


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
    assert set(listed) == {"a.txt", "sub/b.bin", "sub/big.bin", MARKER}
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
