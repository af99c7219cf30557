"""Pushing a ~500 MB bundle to a local S3 server (moto_server over HTTP): `ft`'s store vs the anchor
`aws s3 sync`, then a no-change re-push with both. Aim: ≥ 1.0× on both.

    .venv/bin/python benchmarks/store.py [--mb 500]

The AWS CLI is installed on first use into outputs/bench/awscli (its pins conflict with ours).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AWSCLI_VENV = REPO / "outputs" / "bench" / "awscli"


def aws_cli() -> str:
    found = shutil.which("aws")
    if found:
        return found
    exe = AWSCLI_VENV / "bin" / "aws"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run([str(AWSCLI_VENV / "bin" / "pip"), "install", "-q", "awscli"], check=True)
    return str(exe)


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def make_bundle_like(root: Path, mb: int) -> Path:
    """A bundle-shaped folder: one adapter-sized weight file, a data folder of JSONL shards, small files."""
    (root / "data").mkdir(parents=True)
    big = max(1, mb - 100)
    with open(root / "prototype_adapter.safetensors", "wb") as f:
        for _ in range(big):
            f.write(os.urandom(1024 * 1024))
    for i in range(20):
        (root / "data" / f"shard-{i:02d}.jsonl").write_bytes(os.urandom(5 * 1024 * 1024))
    for i in range(30):
        (root / f"meta-{i}.json").write_text("{}" * 100)
    return root


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500)
    args = parser.parse_args()
    aws = aws_cli()
    proc, url = start_moto()
    env = {**os.environ, "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    try:
        import boto3

        from trainer.store import open_store

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            src = make_bundle_like(Path(tmp) / "bundle", args.mb)
            store = open_store("s3://bench/ours")
            ours = timed(lambda: store.upload_dir(src, "b", progress=False))
            ours_again = timed(lambda: store.upload_dir(src, "b", progress=False))

            def sync() -> None:
                subprocess.run([aws, "s3", "sync", "--only-show-errors", str(src), "s3://bench/aws/b",
                                "--endpoint-url", url], env=env, check=True)

            anchor = timed(sync)
            anchor_again = timed(sync)
        mb = args.mb
        print(f"{'push':<18} {'ours s':>8} {'aws s3 sync s':>14} {'ratio (anchor/ours)':>20}")
        print(f"{'first, ' + str(mb) + ' MB':<18} {ours:>8.2f} {anchor:>14.2f} {anchor / ours:>20.2f}")
        print(f"{'no-change re-push':<18} {ours_again:>8.2f} {anchor_again:>14.2f} {anchor_again / ours_again:>20.2f}")
        print(f"throughput: ours {mb / ours:.0f} MB/s, aws s3 sync {mb / anchor:.0f} MB/s")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
