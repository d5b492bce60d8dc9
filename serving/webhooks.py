"""Signed webhooks: each stored firing POSTed to the ESP's URL, for those who would rather be
called than poll `GET /triggers`.

Configured by the environment (off unless the URL is set):

- `SENDWISE_WEBHOOK_URL`: where firings go (http or https); redirects are not followed.
- `SENDWISE_WEBHOOK_SECRET`: the shared secret the signature is made with (required with the
  URL: an unsigned webhook would let anyone who finds the URL trigger emails).

One firing per request, in firing order: the body is exactly one element of `GET /triggers`'
`triggers` (`trigger_id`, `trigger`, `customer_id`, `subject`, `fired_at`, `decision`), as
JSON. One per request keeps a retry and its idempotency key about one firing, and a receiver
that fails on one never makes the sender re-send others it took. Headers:

- `X-Sendwise-Trigger-Id`: the firing's `trigger_id`, the idempotency key.
- `X-Sendwise-Signature: t=<unix seconds>,v1=<hex>`: HMAC-SHA256 with the secret over
  `<t>.<raw body>` (Stripe's scheme). A receiver splits the header on `,` and `=`, computes
  the HMAC over its `t`, a `.` and the body bytes as received (before any JSON parsing),
  compares with `v1` in constant time (`hmac.compare_digest`), and refuses a `t` more than
  five minutes from its clock, so a captured request cannot be replayed later. Each attempt is
  signed afresh, so a retry after a long backoff still passes. `verify` here does all of it.

Delivery is at least once: a 2xx moves the sender's cursor past the firing; a crash between
the answer and the cursor write sends it again, so the receiver dedupes by trigger id (keep
the ids seen in the last few days). 5xx, 408, 429, timeouts and connection errors are retried
with exponential backoff and jitter (`WebhookSettings`: by default 8 attempts over about two
minutes); any other answer (a 4xx, a redirect) is final. A firing given up on is a dead letter
(`sendwise.store.webhooks`) and the cursor moves on, so one bad firing never blocks the rest.
While a firing is being retried the later ones wait: order is kept, and in an outage they
queue rather than each burning its retries.

Several processes may run a sender (every `sendwise serve` worker, `sendwise triggers run`):
one lock (`sendwise.store.database.leader`) lets only one send; the others wait to take over.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from sendwise.errors import SendwiseError
from sendwise.store.database import leader
from sendwise.store.events import EventStore
from sendwise.store.webhooks import WebhookStore

log = logging.getLogger(__name__)

CURSOR = "webhook"  # the sender's position in the firings, in the event store's cursors
LOCK_KEY = 0x686F6F6B  # "hook": the webhook senders' advisory lock (the trigger engine's differs)
SIGNATURE = "X-Sendwise-Signature"
TRIGGER_ID = "X-Sendwise-Trigger-Id"
TOLERANCE = 300  # seconds a signature's timestamp may be off the receiver's clock


@dataclass(frozen=True)
class WebhookSettings:
    """Where and how firings are delivered; timings are settings so tests run in milliseconds."""

    url: str
    secret: str
    attempts: int = 8  # tries per firing, the first included
    backoff: float = 1.0  # seconds before the first retry, doubled each time
    max_backoff: float = 60.0
    timeout: float = 10.0  # seconds for one request
    batch: int = 100  # firings read from the store per look
    interval: float = 0.5  # seconds between looks when there is nothing to send

    @classmethod
    def from_env(cls) -> WebhookSettings | None:
        """The settings `SENDWISE_WEBHOOK_URL` and `SENDWISE_WEBHOOK_SECRET` give; None when no
        URL is set (no webhooks)."""
        url = os.environ.get("SENDWISE_WEBHOOK_URL", "").strip()
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SendwiseError(f"SENDWISE_WEBHOOK_URL: {url!r} is not an http(s) URL")
        secret = os.environ.get("SENDWISE_WEBHOOK_SECRET", "")
        if not secret:
            raise SendwiseError("SENDWISE_WEBHOOK_SECRET: webhooks are signed; set a secret")
        return cls(url, secret)

    def delay(self, retry: int) -> float:
        """Seconds before retry number `retry` (1, 2, ...): the doubled backoff, capped, half
        of it drawn at random so senders that failed together do not retry together."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Sendwise-Signature` value of `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, now: float | None = None, tolerance: int = TOLERANCE
) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance` seconds of `now`: what a
    receiver checks before it trusts a webhook."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rsplit("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def firing_body(firing: Mapping) -> bytes:
    """A stored firing as the webhook's body: one element of `GET /triggers`' `triggers`."""
    return json.dumps({k: v for k, v in firing.items() if k != "seq"}).encode()


def retryable(status: int | None) -> bool:
    """Worth another try: no answer (timeout, connection error), a 5xx, 408 or 429."""
    return status is None or status >= 500 or status in (408, 429)


@dataclass(frozen=True)
class Outcome:
    """How the delivery of one firing ended."""

    delivered: bool
    attempts: int
    status: int | None  # the last HTTP status; None when none came back
    error: str | None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a hop: following it would turn the POST into a GET."""

    def redirect_request(self, *_args: object) -> None:
        return None


class WebhookSender:
    """Delivers the stored firings after its cursor; only the holder of the lock acts."""

    def __init__(self, events: EventStore, webhooks: WebhookStore, settings: WebhookSettings):
        self.events, self.webhooks, self.settings = events, webhooks, settings
        self._opener = urllib.request.build_opener(_NoRedirects)
        self._stop = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="webhook-sender", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop after the request in flight; a firing left mid-retry is sent again later."""
        self._stop.set()

    def run(self) -> None:
        """Wait for the lock, then send until stopped; a failing look (e.g. the database
        unreachable) is logged and retried."""
        with leader(self.events.engine, "webhook", LOCK_KEY) as leading:
            while not self._stop.is_set() and not leading():
                self._stop.wait(1.0)
            while not self._stop.is_set():
                try:
                    sent = self.tick()
                except Exception:  # noqa: BLE001 - keep delivering; the next look retries
                    log.exception("webhook delivery failed; retrying")
                    sent = 0
                if sent < self.settings.batch:  # a full batch: more may be waiting
                    self._stop.wait(self.settings.interval)

    def tick(self) -> int:
        """Deliver, or dead-letter, the firings after the cursor in firing order, moving the
        cursor past each; how many it passed. Stops early when asked to, with the cursor
        before the firing in hand."""
        passed = 0
        for firing in self.events.firings_after(self.events.cursor(CURSOR), self.settings.batch):
            outcome = self.deliver(firing)
            if outcome is None:
                break
            if not outcome.delivered:
                log.warning(
                    "webhook for %s dead-lettered after %d attempts: %s",
                    firing["trigger_id"], outcome.attempts, outcome.error,
                )  # fmt: skip
                self.webhooks.add_dead_letter(
                    firing["trigger_id"], firing["seq"], outcome.status,
                    outcome.error or "", outcome.attempts,
                )  # fmt: skip
            self.events.set_cursor(CURSOR, firing["seq"])
            passed += 1
        return passed

    def deliver(self, firing: Mapping) -> Outcome | None:
        """POST one firing until the receiver takes it, refuses it, or the attempts run out;
        None when stopped while waiting to retry."""
        body, attempt = firing_body(firing), 0
        while True:
            attempt += 1
            status, error = self.post(body, firing["trigger_id"])
            if status is not None and 200 <= status < 300:
                return Outcome(True, attempt, status, None)
            if not retryable(status) or attempt >= self.settings.attempts:
                return Outcome(False, attempt, status, error)
            if self._stop.wait(self.settings.delay(attempt)):
                return None

    def post(self, body: bytes, trigger_id: str) -> tuple[int | None, str | None]:
        """One signed POST: (HTTP status, error line); status None when no answer came."""
        request = urllib.request.Request(
            self.settings.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "sendwise-webhooks",
                TRIGGER_ID: trigger_id,
                SIGNATURE: sign(self.settings.secret, body, int(time.time())),
            },
        )
        try:
            with self._opener.open(request, timeout=self.settings.timeout) as answer:
                return answer.status, None
        except urllib.error.HTTPError as answer:
            return answer.code, f"HTTP {answer.code} {answer.reason}"
        except (OSError, http.client.HTTPException) as failure:  # timeouts, refused, reset
            return None, " ".join(str(failure).split()) or type(failure).__name__
