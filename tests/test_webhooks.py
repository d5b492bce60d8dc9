"""Signed webhooks against a real local receiver: delivered once each and in order, retried
through transient failures, dead-lettered without holding back the rest, signed so a
tampered body fails, resumed after a restart without re-sending, one sender at a time."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sendwise.errors import SendwiseError
from sendwise.serving.webhooks import (
    CURSOR,
    SIGNATURE,
    TRIGGER_ID,
    WebhookSender,
    WebhookSettings,
    sign,
    verify,
)
from sendwise.store.database import leader
from sendwise.store.events import EventStore
from sendwise.store.webhooks import WebhookStore

SECRET = "whsec-test"


class Receiver:
    """An ESP's webhook endpoint: checks every signature, counts every request, takes each
    firing once (by trigger id), and fails on cue."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()  # trigger id -> requests that reached us
        self.taken: list[str] = []  # trigger ids answered 2xx, in the order taken
        self.bodies: dict[str, dict] = {}
        self.bad_signatures = 0
        self.fail_first: dict[str, list[int]] = {}  # trigger id -> statuses to answer first
        self.slow_first: dict[str, int] = {}  # trigger id -> answers to give too late
        self.always: dict[str, int] = {}  # trigger id -> status answered every time
        self.lock = threading.Lock()

    def answer(self, trigger_id: str, signature: str, body: bytes) -> tuple[int, float]:
        """(status, seconds to wait before answering) for one request."""
        with self.lock:
            if not verify(SECRET, signature, body):
                self.bad_signatures += 1
                return 401, 0.0
            assert json.loads(body)["trigger_id"] == trigger_id
            self.requests[trigger_id] += 1
            if trigger_id in self.always:
                return self.always[trigger_id], 0.0
            if self.fail_first.get(trigger_id):
                return self.fail_first[trigger_id].pop(0), 0.0
            if self.slow_first.get(trigger_id):
                self.slow_first[trigger_id] -= 1
                return 200, 0.5
            if trigger_id not in self.bodies:  # dedupe by trigger id, as documented
                self.taken.append(trigger_id)
                self.bodies[trigger_id] = json.loads(body)
            return 200, 0.0


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, wait = state.answer(
                self.headers.get(TRIGGER_ID, ""), self.headers.get(SIGNATURE, ""), body
            )
            time.sleep(wait)
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender timed out and hung up

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/hooks"
    server.shutdown()
    server.server_close()


@pytest.fixture
def stores(tmp_path) -> Iterator[tuple[EventStore, WebhookStore]]:
    events = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    webhooks = WebhookStore(events.url)
    yield events, webhooks
    webhooks.close()
    events.close()


def fire(events: EventStore, first: int, count: int) -> list[str]:
    """Store `count` firings t<first>... as the trigger worker would; their ids."""
    ids = [f"t{k:03d}" for k in range(first, first + count)]
    events.add_firings(
        [
            (trigger_id, "cart_abandoned", f"c{k}", f"p{k}", 1_780_000_000_000_000 + k,
             json.dumps({"customer_id": f"c{k}", "send": True, "offer": "none"}))
            for k, trigger_id in enumerate(ids, start=first)
        ]
    )  # fmt: skip
    return ids


def settings(url: str, **changes: float) -> WebhookSettings:
    fast = {"attempts": 4, "backoff": 0.01, "max_backoff": 0.04, "timeout": 2.0, "interval": 0.02}
    return WebhookSettings(url, SECRET, **{**fast, **changes})


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_each_firing_is_delivered_once_in_order_as_get_triggers_shows_it(receiver, stores):
    state, url = receiver
    events, webhooks = stores
    ids = fire(events, 0, 5)
    sender = WebhookSender(events, webhooks, settings(url))
    assert sender.tick() == 5
    assert sender.tick() == 0
    assert state.taken == ids
    assert state.requests == Counter(dict.fromkeys(ids, 1))
    assert state.bad_signatures == 0
    page = [{k: v for k, v in f.items() if k != "seq"} for f in events.firings_after(0, 10)]
    assert [state.bodies[i] for i in ids] == page  # the body is one element of GET /triggers
    assert events.cursor(CURSOR) == events.firings_after(0, 10)[-1]["seq"]
    assert webhooks.dead_letters() == []


def test_transient_failures_and_timeouts_are_retried_until_delivered(receiver, stores):
    state, url = receiver
    events, webhooks = stores
    ids = fire(events, 0, 3)
    state.fail_first[ids[0]] = [503, 429, 408]
    state.slow_first[ids[1]] = 1
    sender = WebhookSender(events, webhooks, settings(url, timeout=0.2))
    assert sender.tick() == 3
    assert state.taken == ids
    assert state.requests == {ids[0]: 4, ids[1]: 2, ids[2]: 1}
    assert webhooks.dead_letters() == []


def test_a_failing_firing_is_dead_lettered_and_the_rest_get_through(receiver, stores):
    state, url = receiver
    events, webhooks = stores
    ids = fire(events, 0, 4)
    state.always[ids[1]] = 500  # fails every attempt
    state.always[ids[2]] = 400  # refused: not retried
    sender = WebhookSender(events, webhooks, settings(url))
    assert sender.tick() == 4
    assert state.taken == [ids[0], ids[3]]
    assert state.requests == {ids[0]: 1, ids[1]: 4, ids[2]: 1, ids[3]: 1}
    letters = webhooks.dead_letters()
    assert [(d["trigger_id"], d["status"], d["attempts"]) for d in letters] == [
        (ids[1], 500, 4),
        (ids[2], 400, 1),
    ]
    assert all(d["error"].startswith("HTTP ") and d["failed_at"] > 0 for d in letters)
    assert sender.tick() == 0  # the cursor moved past them


def test_an_unreachable_receiver_is_retried_then_dead_lettered(stores):
    events, webhooks = stores
    fire(events, 0, 1)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{closed.server_address[1]}/"
    closed.server_close()  # nothing listens there now
    assert WebhookSender(events, webhooks, settings(url, attempts=3)).tick() == 1
    [letter] = webhooks.dead_letters()
    assert (letter["status"], letter["attempts"]) == (None, 3)
    assert "refused" in letter["error"].lower()


def test_the_signature_verifies_and_a_tampered_body_or_old_timestamp_fails():
    body = b'{"trigger_id": "t000", "decision": {"offer": "none"}}'
    now = 1_780_000_000
    header = sign(SECRET, body, now)
    assert header.startswith(f"t={now},v1=")
    assert verify(SECRET, header, body, now=now + 10)
    assert not verify(SECRET, header, body.replace(b"none", b"20_off"), now=now)
    assert not verify("another-secret", header, body, now=now)
    assert not verify(SECRET, header, body, now=now + 301)  # a replay, minutes later
    assert not verify(SECRET, header.replace(f"t={now}", f"t={now + 1}"), body, now=now)
    assert not verify(SECRET, "garbage", body, now=now)


def test_a_restarted_sender_resumes_after_its_cursor_without_resending(receiver, stores):
    state, url = receiver
    events, webhooks = stores
    first = fire(events, 0, 3)
    sender = WebhookSender(events, webhooks, settings(url))
    thread = sender.start()
    wait_for(lambda: len(state.taken) == 3)
    sender.stop()
    thread.join(5)
    later = fire(events, 3, 2)
    restarted = WebhookSender(events, webhooks, settings(url))
    thread = restarted.start()
    wait_for(lambda: len(state.taken) == 5)
    restarted.stop()
    thread.join(5)
    assert state.taken == first + later
    assert set(state.requests.values()) == {1}


def test_two_senders_on_one_store_deliver_each_firing_once(receiver, stores):
    state, url = receiver
    events, webhooks = stores
    senders = [WebhookSender(events, webhooks, settings(url, batch=3)) for _ in range(2)]
    threads = [sender.start() for sender in senders]
    ids = fire(events, 0, 10) + fire(events, 10, 10)
    wait_for(lambda: len(state.taken) == 20)
    time.sleep(0.1)  # room for a duplicate to show
    for sender, thread in zip(senders, threads, strict=True):
        sender.stop()
        thread.join(5)
    assert state.taken == ids
    assert set(state.requests.values()) == {1}


def test_the_lock_has_one_holder_until_it_is_let_go(stores):
    engine = stores[0].engine
    with leader(engine, "webhook", 1) as first:
        assert first()
        with leader(engine, "webhook", 1) as second:
            assert not second()
        with leader(engine, "trigger", 2) as other:
            assert other()  # each kind of worker has its own lock
    with leader(engine, "webhook", 1) as second:
        assert second()


def test_webhooks_are_configured_by_the_environment(monkeypatch):
    monkeypatch.delenv("SENDWISE_WEBHOOK_URL", raising=False)
    assert WebhookSettings.from_env() is None
    monkeypatch.setenv("SENDWISE_WEBHOOK_URL", "https://esp.example/hooks")
    monkeypatch.delenv("SENDWISE_WEBHOOK_SECRET", raising=False)
    with pytest.raises(SendwiseError, match="SENDWISE_WEBHOOK_SECRET"):
        WebhookSettings.from_env()
    monkeypatch.setenv("SENDWISE_WEBHOOK_SECRET", SECRET)
    assert WebhookSettings.from_env() == WebhookSettings("https://esp.example/hooks", SECRET)
    monkeypatch.setenv("SENDWISE_WEBHOOK_URL", "esp.example/hooks")
    with pytest.raises(SendwiseError, match="not an http"):
        WebhookSettings.from_env()


def test_backoff_doubles_up_to_its_cap_with_jitter():
    timings = WebhookSettings("http://x", SECRET, backoff=1.0, max_backoff=6.0)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 6.0), (9, 6.0)]:
        drawn = [timings.delay(retry) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in drawn)
        assert len(set(drawn)) > 1
