"""A real webhook receiver on 127.0.0.1: checks every signature, fails attempts on request.

Both signatures are checked as a receiver would: X-Pledgewatch-Signature by hand, with the
secret's bytes; the Standard Webhooks headers by the ``standardwebhooks`` package's own
verifier, given the secret in the ``whsec_`` form the API showed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.clock import Clock


def clocked_datetime(clock: Clock) -> type[datetime]:
    """``datetime`` whose ``now()`` is ``clock``'s: patched into the verifier, it judges
    ``webhook-timestamp`` (at most five minutes off) by the test's clock."""

    class Clocked(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Self:
            return cls.fromtimestamp(clock.now().timestamp(), tz)

    return Clocked


def standard_check(secret: str, body: bytes, headers: dict[str, str]) -> str | None:
    """Why the Standard Webhooks verifier refuses this request (None: it verifies)."""
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError as error:
        return str(error) or type(error).__name__
    return None


def legacy_signature_ok(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    """X-Pledgewatch-Signature checked with the key a ``whsec_`` secret holds."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("x-pledgewatch-signature", ""))


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one attempt: a status, after a delay, maybe with a Location."""

    status: int = 200
    delay: float = 0.0
    location: str | None = None


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, and what it answered."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    document: dict[str, Any]
    signature_ok: bool  # X-Pledgewatch-Signature
    standard_error: str | None  # why the Standard Webhooks verifier refused it, if it did
    status: int

    @property
    def delivery_id(self) -> str:
        return self.headers["x-pledgewatch-delivery"]

    @property
    def standard_ok(self) -> bool:
        return self.standard_error is None

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Receiver:
    base: str = ""
    # The secret each path's subscription signs with, in whsec_ form.
    secrets: dict[str, str] = field(default_factory=dict)
    # Each delivery (by id) to a path gets these replies to its first attempts, then 200.
    failures: dict[str, list[Reply]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _attempts: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [item for item in self.received if item.path == path]

    def accepted(self, path: str) -> list[Received]:
        return [item for item in self.on(path) if item.accepted]

    def reply_for(self, path: str, delivery_id: str) -> Reply:
        with self.lock:
            attempt = self._attempts[delivery_id]
            self._attempts[delivery_id] += 1
        planned = self.failures.get(path, [])
        return planned[attempt] if attempt < len(planned) else Reply()


class _ManyClientsServer(ThreadingHTTPServer):
    # Two delivery runs open up to 16 connections at once; the default backlog of 5 would
    # drop some on a busy machine, and the test would see a timeout the service did not cause.
    request_queue_size = 64
    daemon_threads = True


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            secret = state.secrets.get(self.path)
            signature_ok = secret is not None and legacy_signature_ok(secret, body, headers)
            standard_error = (
                standard_check(secret, body, headers) if secret is not None else "no secret"
            )
            reply = state.reply_for(self.path, headers.get("x-pledgewatch-delivery", ""))
            with state.lock:
                state.received.append(
                    Received(
                        path=self.path,
                        headers=headers,
                        body=body,
                        document=json.loads(body),
                        signature_ok=signature_ok,
                        standard_error=standard_error,
                        status=reply.status,
                    )
                )
            if reply.delay:
                time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                if reply.location is not None:
                    self.send_header("Location", reply.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender gave up waiting (a timeout test): nothing to answer

        def log_message(self, format: str, *args: object) -> None:
            return

    server = _ManyClientsServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
