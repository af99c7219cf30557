"""One run, one writer: a lease object in the store (`runs/<id>/_LEASE`) that a trainer must hold
to train the run. A retried managed job can start while the old VM still lives; without the lease
both would train and upload checkpoints into the same prefixes.

The lease is created atomically (S3 conditional write `If-None-Match: *`, a hard link locally),
renewed by a heartbeat thread, and expires `ttl` seconds after its last renewal, so a holder that
died (kill -9, a preempted VM) blocks the run for at most `ttl`. A holder that finds its lease taken
over (it was stalled past its expiry) stops at once: someone else is training the run now.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from trainer import settings
from trainer.store import Exists, Store, StoreUnavailable


class LeaseHeld(StoreUnavailable):
    """Another live trainer holds the run: retryable (exit 75), the holder may die or finish."""

    label = "another trainer holds this run"


@dataclass
class RunLease:
    store: Store
    key: str  # e.g. runs/<id>/_LEASE
    ttl: float = field(default_factory=settings.lease_ttl_s)
    # by default long enough for a dead holder's lease to expire, not long enough to hide a live one
    wait: float = field(default_factory=settings.lease_wait_s)
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    on_lost: object = None  # callable run when the lease is found taken over
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _body(self) -> str:
        return json.dumps({"holder": self.holder, "expires_at": time.time() + self.ttl, "ttl": self.ttl})

    def _current(self) -> dict | None:
        try:
            data = json.loads(self.store.read_text(self.key))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"holder": "?", "expires_at": time.time() + self.ttl}  # being written: treat as held
        return data if isinstance(data, dict) else {"holder": "?", "expires_at": 0}

    def acquire(self) -> None:
        """Take the lease, waiting up to `wait` seconds for a live holder to go; else LeaseHeld."""
        deadline = time.time() + self.wait
        while True:
            try:
                self.store.create_exclusive(self.key, self._body())
                break
            except Exists:
                current = self._current()
                if current is None:
                    continue  # released between our write and our read
                if float(current.get("expires_at", 0)) < time.time():
                    # The holder stopped renewing (dead). Remove its lease and race for a new one:
                    # the exclusive create decides between takers.
                    self.store.delete(self.key)
                    continue
                if time.time() >= deadline:
                    left = float(current["expires_at"]) - time.time()
                    raise LeaseHeld(f"run is being trained by {current.get('holder', '?')} (its lease in "
                                    f"{self.store.url(self.key)} expires in {left:.0f} s unless renewed); "
                                    "not starting a second writer") from None
                time.sleep(min(2.0, max(0.1, self.ttl / 10)))
        self._thread = threading.Thread(target=self._heartbeat, name="run-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                current = self._current()
                if current is not None and current.get("holder") != self.holder:
                    if callable(self.on_lost):
                        self.on_lost(current.get("holder", "?"))
                    return
                self.store.write_text(self.key, self._body())
            except Exception:  # noqa: BLE001 - a store hiccup: the main thread meets it too; keep beating
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self._current()
            if current is not None and current.get("holder") == self.holder:
                self.store.delete(self.key)
        except Exception:  # noqa: BLE001 - an unreleased lease only expires; never fail a finished run on it
            pass

    def __enter__(self) -> RunLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
