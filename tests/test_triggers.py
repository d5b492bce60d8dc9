"""Real-time triggers: the event contract, the event store (SQLite and the real PostgreSQL),
the engine's rules on hand-made streams, each trigger's holdout over 10,000 firings, the live
API (`/events`, `/catalog`, Segment's and RudderStack's own SDKs, `GET /triggers`), and the
CLI (`events ingest`, `triggers replay`). The engine against an independent oracle on a
simulated week: test_trigger_oracle."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl
import pytest
from server import serving

from sendwise.cli.main import main
from sendwise.features.clock import parse_as_of
from sendwise.features.event_stream import StreamSettings, api_events, simulate_stream
from sendwise.features.events import (
    CATALOG_SCHEMA,
    EVENTS,
    EventBatch,
    event_rows,
    micros,
)
from sendwise.policy.config import TRIGGERS, Settings
from sendwise.policy.decide import SNAPSHOT_SCHEMA, Snapshot
from sendwise.policy.triggers import HOUR, TriggerEngine
from sendwise.serving.triggers import decide_firings, stream
from sendwise.store.decisions import DecisionLog
from sendwise.store.events import EventStore

T0 = datetime(2026, 7, 1, 12, tzinfo=UTC)
KEY = "trigger-key"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def event(kind: str, who: str, minutes: float, n: int | None = None, **properties) -> dict:
    stamp = T0 + timedelta(minutes=minutes)
    message = n if n is not None else f"{who}-{kind}-{minutes}-{sorted(properties.items())}"
    return {
        "message_id": str(message),
        "type": kind,
        "customer_id": who,
        "timestamp": stamp.isoformat(),
        "properties": properties,
    }


def fire(events: list[dict], hours: float = 24 * 10, catalog: pl.DataFrame | None = None):
    """(trigger, customer, subject, minutes after T0) of every firing by T0 + hours."""
    rows = event_rows(EVENTS.validate_python(events))
    catalog = catalog if catalog is not None else pl.DataFrame(schema=CATALOG_SCHEMA)
    engine = TriggerEngine(Settings().triggers)
    until = micros(T0 + timedelta(hours=hours))
    return [
        (f.trigger, f.customer_id, f.subject, (f.fired_at - micros(T0)) / 60_000_000)
        for f in engine.run(stream(rows, catalog), until)
    ]


def test_one_view_or_one_search_fires_nothing_two_do():
    assert fire([event("product_viewed", "a", 0, product_id="p1")]) == []
    assert fire([event("products_searched", "a", 0, query="red shoes")]) == []
    two_views = [event("product_viewed", "a", m, product_id="p1") for m in (0, 10)]
    assert fire(two_views) == [("browse_abandoned", "a", "p1", 130)]  # 2 h after the last
    two_searches = [
        event("products_searched", "a", m, query=q) for m, q in ((0, "red"), (5, "blue"))
    ]
    assert fire(two_searches) == [("search_abandoned", "a", "blue", 125)]
    # three views in one category, none twice: the category is the subject
    browsing = [
        event("product_viewed", "b", m, product_id=p, category="shoes")
        for m, p in ((0, "p1"), (5, "p2"), (9, "p3"))
    ]
    assert fire(browsing) == [("browse_abandoned", "b", "shoes", 129)]
    # a cart in the window cancels browse abandonment (the cart trigger takes over)
    carted = [*two_views, event("product_added", "a", 20, product_id="p1")]
    assert fire(carted) == [("cart_abandoned", "a", "p1", 80)]


def test_the_cart_waits_for_its_last_change_and_an_order_cancels_it():
    view = event("product_viewed", "a", 0, product_id="p1")
    add = event("product_added", "a", 1, product_id="p1")
    assert fire([view, add]) == [("cart_abandoned", "a", "p1", 61)]
    later = event("product_added", "a", 30, product_id="p2")
    assert fire([view, add, later]) == [("cart_abandoned", "a", "p2", 90)]  # restarted
    removed = event("product_removed", "a", 40, product_id="p2")
    assert fire([view, add, later, removed]) == [("cart_abandoned", "a", "p1", 100)]
    order = event("order_completed", "a", 50, order_id="o1", products=[{"product_id": "p1"}])
    fired = fire([view, add, order])
    assert not [f for f in fired if f[0] == "cart_abandoned"]
    assert ("review_request", "a", "p1", 50 + 7 * 24 * 60) in fired
    # one signal alone (an add with nothing before) is not enough to retarget
    assert fire([event("product_added", "c", 0, product_id="p1")]) == []


def test_catalog_changes_fire_for_who_showed_interest():
    views = [event("product_viewed", "a", m, product_id="p1", price=100.0) for m in (0, 1)]
    views += [event("product_viewed", "b", m, product_id="p1", price=100.0) for m in (0, 1)]
    views += [event("product_added", "b", 2, product_id="p1")]
    at = micros(T0 + timedelta(minutes=5))
    catalog = pl.DataFrame(
        [("p1", at, 91.0, None), ("p1", at + 1, 90.0, None)], schema=CATALOG_SCHEMA, orient="row"
    )
    # 9% off fires nothing; 10% off fires for both, but b's cart fired 1 h later is in b's gap
    fired = fire(views, catalog=catalog)
    assert [(t, w) for t, w, *_ in fired] == [("price_drop", "a"), ("price_drop", "b")]
    stock = pl.DataFrame(
        [("p1", at, None, 0), ("p1", at + HOUR * 20, None, 30), ("p1", at + HOUR * 40, None, 3)],
        schema=CATALOG_SCHEMA,
        orient="row",
    )
    fired = fire(views, catalog=stock)
    kinds = [(t, w) for t, w, *_ in fired]
    assert ("back_in_stock", "a") in kinds and ("back_in_stock", "b") in kinds
    assert ("low_stock", "b") in kinds and ("low_stock", "a") not in kinds  # only carts


def test_one_triggered_email_per_16_hours_but_welcome_always():
    events = [
        event("signed_up", "a", 0),
        *[event("product_viewed", "a", m, product_id="p1") for m in (1, 2)],
        event("product_added", "a", 3, product_id="p2"),
    ]
    fired = fire(events)
    # the cart fires first (1 h), which keeps browse (2 h) out; welcome is not counted
    assert [f[0] for f in fired] == ["welcome", "cart_abandoned"]
    unsubscribed = [*events, event("unsubscribed", "a", 30)]
    assert [f[0] for f in fire(unsubscribed)] == ["welcome"]


def test_the_same_events_twice_are_stored_once_and_fire_once(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    events = [event("signed_up", f"s{k}", k) for k in range(50)]
    rows = event_rows(EventBatch.model_validate({"events": events}).events)
    assert store.add_events(rows) == 50
    assert store.add_events(rows) == 0
    assert store.add_events(pl.concat([rows, rows])) == 0  # repeats inside one batch too
    stored = store.events_after(0)
    assert len(stored) == 50 and stored.drop("seq", "received_at").equals(rows)
    engine = TriggerEngine(Settings().triggers)
    empty = pl.DataFrame(schema=CATALOG_SCHEMA)
    firings = engine.run(stream(stored, empty), micros(T0 + timedelta(days=1)))
    assert len(firings) == 50 and len({f.trigger_id for f in firings}) == 50


@pytest.mark.parametrize("url", ["sqlite", "postgresql"])
def test_event_store_is_idempotent_on_each_backend(url, tmp_path):
    if url == "postgresql":
        import sqlalchemy as sa

        try:
            sa.create_engine(POSTGRES).connect().close()
        except sa.exc.OperationalError:
            pytest.skip("no PostgreSQL at 127.0.0.1:5432")
        url = POSTGRES
        store = EventStore(url)
        with store.engine.begin() as connection:
            for table in ("events", "catalog_updates", "firings", "cursors"):
                connection.exec_driver_sql(f"DELETE FROM {table}")
    else:
        store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    rows = event_rows(EVENTS.validate_python([event("signed_up", f"c{k}", k) for k in range(20)]))
    assert store.add_events(rows) == 20 and store.add_events(rows.head(5)) == 0
    seqs = store.events_after(0)["seq"].to_list()
    assert len(seqs) == 20 and store.events_after(seqs[9])["seq"].to_list() == seqs[10:]
    store.add_firings(
        [("t1", "welcome", "c1", None, 5, "{}"), ("t1", "welcome", "c1", None, 5, "{}")]
    )
    assert store.fired(["t1", "t2"]) == {"t1"} and len(store.firings_after(0, 10)) == 1
    store.close()


def snapshot_of(customers: list[str]) -> Snapshot:
    frame = pl.DataFrame(
        {
            "customer_id": customers,
            "timezone": ["Europe/London"] * len(customers),
            "segment": ["active"] * len(customers),
            "unsubscribed": [False] * len(customers),
            "bounces": [0] * len(customers),
            "purchase_propensity": [0.1] * len(customers),
            "propensity_reason": [""] * len(customers),
            "products": [["p1", "p2", "p3"]] * len(customers),
            "cross_sell": [["p4", "p5"]] * len(customers),
            "best_hours": [[19, 20, 21]] * len(customers),
        },
        schema=SNAPSHOT_SCHEMA,
    )
    return Snapshot(frame, ["p9", "p8"], ["p7"], "propensity:1")


def test_each_trigger_holds_out_its_share_and_logs_its_probability(tmp_path):
    from sendwise.policy.triggers import Firing

    customers = [f"c{k:05d}" for k in range(10_000)]
    snapshot, settings = snapshot_of(customers), Settings()
    log = DecisionLog(f"sqlite:///{tmp_path / 'decisions.db'}")
    start = micros(T0)
    for trigger in TRIGGERS:
        firings = [
            Firing(trigger, c, "p3", start + k * 1000, True) for k, c in enumerate(customers)
        ]
        decided = decide_firings(firings, snapshot, settings, decision_log=log)
        own = decided["holdout_kind"].eq_missing("trigger").mean()
        assert abs(own - 0.10) <= 0.02, (trigger, own)
        held = decided.filter(pl.col("holdout_kind") == "trigger")
        assert (held["probability"] - 0.98 * 0.10).abs().max() < 1e-9  # not global, then 10%
        assert not held["send"].any()
        sent = decided.filter("send")
        assert sent["products"].list.first().eq("p3").all()  # the subject leads
        assert (sent["send_at"] >= sent["fired_at"]).all()
    logged = log.read()
    assert len(logged) == 10 * 10_000 and set(logged["trigger"]) == set(TRIGGERS)
    assert logged["probability"].is_not_null().all()


@pytest.fixture(scope="module")
def trigger_server(simulated, simulated_shop, tmp_path_factory, new_store):
    """A real server with champions of the simulated shop and its own event store."""
    from champions import register_champion

    root = tmp_path_factory.mktemp("trigger-server")
    env = {
        **new_store(root),
        "SENDWISE_SHOP": str(simulated[0]),
        "SENDWISE_AS_OF": "2026-05-31",
        "SENDWISE_API_KEYS": KEY,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        as_of = parse_as_of("2026-05-31")  # the end of the day: the fits other modules make
        for task in ("propensity", "sendtime"):
            register_champion(task, simulated_shop, as_of)
        with serving(env) as (url, _):
            yield url, root


def post(url: str, path: str, body, **headers) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"X-API-Key": KEY, **headers}, timeout=30)


def test_events_api_stores_once_refuses_whole_and_fires_welcome(trigger_server):
    url, _ = trigger_server
    good = [
        event("signed_up", "w1", 0, n="w1-signup"),
        event("product_viewed", "w1", 1, n="w1-v", product_id="p1"),
    ]
    answer = post(url, "/events", {"events": good})
    acknowledged = time.monotonic()
    assert answer.status_code == 200 and answer.json() == {"accepted": 2, "duplicates": 0}
    assert post(url, "/events", {"events": good}).json() == {"accepted": 0, "duplicates": 2}
    bad = [
        event("signed_up", "w2", 0, n="w2-signup"),
        {**event("product_viewed", "w2", 1, n="w2-v")},
    ]
    refused = post(url, "/events", {"events": bad})
    assert refused.status_code == 400 and "events.1.properties" in refused.json()["error"]
    assert "product_id" in refused.text
    for body, field in [({"events": []}, "events"), ({"events": [{**good[0], "type": "teleported"}]}, "events.0.type"), ({"events": good, "extra": 1}, "extra")]:  # fmt: skip
        answer = post(url, "/events", body)
        assert answer.status_code == 400 and field in answer.json()["error"], answer.text
    assert httpx.post(f"{url}/events", json={"events": good}).status_code == 401
    # the welcome of w1 is offered within seconds; w2's refused sign-up was never kept
    firings = []
    while time.monotonic() - acknowledged < 10 and not firings:
        page = httpx.get(f"{url}/triggers", params={"after": 0}, headers={"X-API-Key": KEY}).json()
        firings = [f for f in page["triggers"] if f["customer_id"] in ("w1", "w2")]
        time.sleep(0.1)
    assert [(f["trigger"], f["customer_id"]) for f in firings] == [("welcome", "w1")]
    decision = firings[0]["decision"]
    assert decision["trigger"] == "welcome" and decision["probability"] > 0
    following = httpx.get(
        f"{url}/triggers", params={"after": page["next"]}, headers={"X-API-Key": KEY}
    )
    assert following.json()["triggers"] == [] and following.json()["next"] == page["next"]
    assert (
        httpx.get(f"{url}/triggers", params={"limit": 0}, headers={"X-API-Key": KEY}).status_code
        == 400
    )
    catalog = post(
        url,
        "/catalog",
        {"products": [{"product_id": "p1", "timestamp": T0.isoformat(), "stock": 0}]},
    )
    assert catalog.json() == {"accepted": 1}
    assert (
        post(
            url, "/catalog", {"products": [{"product_id": "p1", "timestamp": T0.isoformat()}]}
        ).status_code
        == 400
    )


def test_segment_and_rudderstack_sdks_send_events_by_changing_the_host(trigger_server):
    from rudderstack.analytics import Client as RudderClient
    from segment.analytics import Client as SegmentClient
    from segment.analytics.request import APIError

    url, root = trigger_server
    failures = []
    segment = SegmentClient(KEY, host=url, sync_mode=True, on_error=lambda e, _: failures.append(e))
    segment.track("seg-1", "Signed Up", {})
    segment.track("seg-1", "Product Viewed", {"product_id": "p2", "category": "tea", "price": 9.0})
    segment.track("seg-1", "Coupon Applied", {"coupon_id": "x"})  # outside the spec: skipped
    segment.identify("seg-1", {"email": "a@example.com"})
    segment.flush()
    rudder = RudderClient(
        KEY, host=url, sync_mode=True, gzip=True, on_error=lambda e, _: failures.append(e)
    )
    rudder.track(
        "rud-1",
        "Order Completed",
        {"order_id": "o9", "products": [{"product_id": "p3", "price": 2.0}]},
    )
    rudder.flush()
    assert not failures
    wrong_key = SegmentClient(
        "not-a-key",
        host=url,
        sync_mode=True,
        on_error=lambda e, _: failures.append(e),
        max_retries=0,
    )
    with pytest.raises(APIError, match="401"):  # the write key is checked like an API key
        wrong_key.track("seg-2", "Signed Up", {})
        wrong_key.flush()
    stored = EventStore(f"sqlite:///{root / 'home' / 'events.db'}").events_after(0)
    mine = stored.filter(pl.col("customer_id").is_in(["seg-1", "rud-1", "seg-2"]))
    assert sorted(mine["type"]) == ["order_completed", "product_viewed", "signed_up"]
    order = mine.filter(pl.col("type") == "order_completed").row(0, named=True)
    assert order["products"] == ["p3"] and order["order_id"] == "o9"


def test_ingest_and_replay_from_files(simulated, trigger_server, tmp_path, monkeypatch, capsys):
    _, root = trigger_server  # its champions; an event store of this test's own
    monkeypatch.setenv("SENDWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SENDWISE_ARTIFACTS", str(root / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    customers = (
        pl.read_parquet(simulated[0] / "customers.parquet")["customer_id"].head(500).to_list()
    )
    products = pl.read_parquet(simulated[0] / "products.parquet")
    events, catalog = simulate_stream(customers, products, StreamSettings(start=T0, days=3, seed=4))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in api_events(events)))
    assert main(["events", "ingest", str(path)]) == 0
    assert main(["events", "ingest", str(path)]) == 0
    said = capsys.readouterr().out
    assert f"Stored {len(events):,} events" in said and f"{len(events):,} duplicates" in said
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        path.read_text().splitlines()[0]
        + '\n{"message_id": "x", "type": "product_added", "customer_id": "a", "timestamp": "2026-07-01T00:00:00Z"}\n'
    )
    assert main(["events", "ingest", str(broken)]) == 1
    assert "line 2: properties" in capsys.readouterr().err
    out = tmp_path / "firings.parquet"
    until = "2026-07-05"
    assert (
        main(
            [
                "triggers",
                "replay",
                "--events",
                str(path),
                "--shop",
                str(simulated[0]),
                "--until",
                until,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    fired = pl.read_parquet(out)
    engine = TriggerEngine(Settings().triggers)
    expected = engine.run(
        stream(events, pl.DataFrame(schema=CATALOG_SCHEMA)),
        micros(datetime(2026, 7, 5, 23, 59, 59, 999999, tzinfo=UTC)),
    )
    assert fired["trigger_id"].to_list() == [f.trigger_id for f in expected] and len(fired) > 20
    assert fired.columns[:10] == [
        "trigger_id",
        "trigger",
        "customer_id",
        "subject",
        "fired_at",
        "holdout",
        "holdout_kind",
        "probability",
        "send",
        "send_at",
    ]
    assert fired["probability"].is_not_null().all() and fired["decision_id"].is_unique().all()


def test_kill_9_during_ingest_loses_no_acknowledged_event_and_fires_nothing_twice(
    trigger_server, tmp_path
):
    """SIGKILL the server's workers while batches of events arrive; after a restart on the
    same stores every acknowledged event is there, and each sign-up's welcome is offered
    once, with one logged decision."""
    from server import server_workers

    _, root = trigger_server
    env = {
        "SENDWISE_HOME": str(tmp_path / "home"),
        "SENDWISE_ARTIFACTS": str(root / "artifacts"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SENDWISE_AS_OF": "2026-05-31",
        "SENDWISE_API_KEYS": KEY,
    }
    acknowledged: list[str] = []
    stop = threading.Event()

    def client(url: str, k: int) -> None:
        n = 0
        while not stop.is_set():
            now = datetime.now(UTC).isoformat()
            batch = [
                {"message_id": f"k{k}-{n}-{j}", "type": "product_viewed", "customer_id": f"k{k}-{n}",
                 "timestamp": now, "properties": {"product_id": f"p{j}"}}
                for j in range(199)
            ] + [{"message_id": f"k{k}-{n}-signup", "type": "signed_up", "customer_id": f"k{k}-{n}", "timestamp": now}]  # fmt: skip
            try:
                if post(url, "/events", {"events": batch}).status_code == 200:
                    acknowledged.extend(e["message_id"] for e in batch)
            except httpx.HTTPError:
                pass
            n += 1

    others = {p.pid for p in server_workers()}
    with serving(env) as (url, _):
        threads = [threading.Thread(target=client, args=(url, k), daemon=True) for k in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 3000 and time.monotonic() < deadline:
            time.sleep(0.05)
        # SIGKILL every worker of this server mid-ingest: no cleanup code runs
        workers = [p for p in server_workers() if p.pid not in others]
        assert workers
        for worker in workers:
            worker.kill()
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(acknowledged) >= 3000
    signups = {m.removesuffix("-signup") for m in acknowledged if m.endswith("-signup")}
    with serving(env) as (url, _):
        firings, cursor = [], 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            page = httpx.get(
                f"{url}/triggers",
                params={"after": cursor, "limit": 1000},
                headers={"X-API-Key": KEY},
            ).json()
            firings += page["triggers"]
            cursor = page["next"]
            if signups <= {f["customer_id"] for f in firings} and not page["triggers"]:
                break
            time.sleep(0.2)
    stored = EventStore(f"sqlite:///{tmp_path / 'home' / 'events.db'}").events_after(0)
    assert set(acknowledged) <= set(stored["message_id"])  # durable once acknowledged
    welcomes = [f["customer_id"] for f in firings if f["trigger"] == "welcome"]
    assert signups <= set(welcomes) and len(welcomes) == len(set(welcomes))  # once each
    logged = DecisionLog(f"sqlite:///{tmp_path / 'home' / 'decisions.db'}").read()
    ids = [f["trigger_id"] for f in firings]
    assert logged.filter(pl.col("decision_id").is_in(ids)).height == len(ids)


def test_decide_answers_with_what_happened_seconds_ago(trigger_server):
    url, _ = trigger_server
    now = datetime.now(UTC)
    popular = post(url, "/decide", {"recipients": [{"customer_id": "fresh-1"}]}).json()
    bought = popular["decisions"][0]["products"][0]
    events = [
        {"message_id": "f1-order", "type": "order_completed", "customer_id": "fresh-1", "timestamp": now.isoformat(),
         "properties": {"order_id": "f1", "products": [{"product_id": bought}]}},
        {"message_id": "f2-add", "type": "product_added", "customer_id": "fresh-2", "timestamp": now.isoformat(),
         "properties": {"product_id": "p00042"}},
    ]  # fmt: skip
    assert post(url, "/events", {"events": events}).status_code == 200
    deadline, decisions = time.monotonic() + 10, {}
    while time.monotonic() < deadline:
        body = {"recipients": [{"customer_id": "fresh-1"}, {"customer_id": "fresh-2"}]}
        decisions = {d["customer_id"]: d for d in post(url, "/decide", body).json()["decisions"]}
        if (
            decisions["fresh-1"]["segment"] == "new"
            and decisions["fresh-2"]["products"][0] == "p00042"
        ):
            break
        time.sleep(0.2)
    assert decisions["fresh-1"]["segment"] == "new"  # a lead who ordered is a lead no more
    assert bought not in decisions["fresh-1"]["products"] + decisions["fresh-1"]["cross_sell"]
    assert decisions["fresh-2"]["products"][0] == "p00042"  # the cart leads
    assert "p00042" not in decisions["fresh-2"]["cross_sell"]


def test_fresh_state_is_bounded_by_the_snapshot_and_the_window():
    from sendwise.policy.fresh import FreshState

    snapshot = snapshot_of(["a", "b"])
    fresh = FreshState(since=micros(T0), recently_bought_days=14)
    rows = event_rows(EVENTS.validate_python([
        event("order_completed", "a", -60, order_id="old", products=[{"product_id": "p1"}]),  # in the snapshot
        event("order_completed", "a", 10, order_id="o", products=[{"product_id": "p2"}]),
        event("product_added", "b", 5, product_id="p4"),
        event("product_added", "b", 6, product_id="p5"),
        event("product_removed", "b", 7, product_id="p5"),
        event("order_completed", "new", 1, order_id="n", products=[{"product_id": "p3"}]),
    ]))  # fmt: skip
    fresh.apply(rows)
    ids = pl.Series(["a", "b", "new", "other"])
    columns = fresh.columns(ids, snapshot, micros(T0 + timedelta(days=1)))
    assert columns["segment"].to_list() == ["", "", "new", ""]  # "a" was active already
    assert columns["drop"].to_list() == [["p2"], None, ["p3"], None]
    assert columns["lead"].to_list() == [None, ["p4"], None, None]
    later = fresh.columns(ids, snapshot, micros(T0 + timedelta(days=15)))
    assert later["drop"].to_list() == [None, None, None, None]  # after recently_bought_days
    assert fresh.columns(pl.Series(["other"]), snapshot, micros(T0)) == {}


def test_two_trigger_workers_on_postgresql_fire_exactly_what_one_would(simulated, tmp_path):
    """Two workers share a PostgreSQL event store: one leads, the other waits; when the
    leader stops mid-way the other takes over, re-derives what was fired and stores none of
    it twice. Together they fire exactly the single engine's firings."""
    import sqlalchemy as sa

    from sendwise.serving.triggers import TriggerRunner
    from sendwise.store.sends import send_history

    try:
        sa.create_engine(POSTGRES).connect().close()
    except sa.exc.OperationalError:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    customers = (
        pl.read_parquet(simulated[0] / "customers.parquet")["customer_id"].head(400).to_list()
    )
    products = pl.read_parquet(simulated[0] / "products.parquet")
    events, catalog = simulate_stream(customers, products, StreamSettings(start=T0, days=2, seed=9))
    store = EventStore(POSTGRES)
    with store.engine.begin() as connection:
        for table in ("events", "catalog_updates", "firings", "cursors"):
            connection.exec_driver_sql(f"DELETE FROM {table}")
    for start in range(0, len(events), 1000):
        store.add_events(events.slice(start, 1000))
    store.add_catalog(catalog.filter(pl.col("at") <= micros(T0)))  # the opening catalog only
    snapshot, settings = snapshot_of(customers), Settings()
    log = DecisionLog(f"sqlite:///{tmp_path / 'decisions.db'}")
    workers = [
        TriggerRunner(
            EventStore(POSTGRES), log, send_history(log), settings, lambda: snapshot, 0.05, 200
        )
        for _ in range(2)
    ]
    threads = [worker.start() for worker in workers]
    now = datetime.now(UTC)
    engine = TriggerEngine(settings.triggers)
    expected = engine.run(stream(events, catalog.filter(pl.col("at") <= micros(T0))), micros(now))
    deadline = time.monotonic() + 60
    while len(store.firings_after(0, 100_000)) < len(expected) // 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    leading = [w for w in workers if w.engine is not None]
    assert len(leading) == 1  # the other waits for the lock
    assert len(store.firings_after(0, 100_000)) < len(expected)  # stopped mid-way
    leading[0].stop()
    threads[workers.index(leading[0])].join(10)
    while len(store.firings_after(0, 100_000)) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    fired = store.firings_after(0, 100_000)
    assert sorted(f["trigger_id"] for f in fired) == sorted(f.trigger_id for f in expected)
    assert len({f["trigger_id"] for f in fired}) == len(fired) == len(expected) > 50
    logged = log.read()
    assert logged["decision_id"].is_unique().all() and len(logged) == len(expected)
    for worker in workers:
        worker.stop()


def test_a_backfill_logs_firings_and_the_report_shows_what_each_trigger_earned(
    simulated, trigger_server, tmp_path, monkeypatch
):
    """Replay with --log, the simulated customers answer the triggered mail from their planted
    truth, and the campaign report compares each trigger's mailed with its holdout."""
    import shutil

    _, root = trigger_server
    monkeypatch.setenv("SENDWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SENDWISE_ARTIFACTS", str(root / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    shop = tmp_path / "shop"
    shutil.copytree(simulated[0], shop)  # responses are appended to the shop's tables
    assert (
        main(
            [
                "simulate",
                "events",
                "--shop",
                str(shop),
                "--days",
                "7",
                "--seed",
                "2",
                "--out",
                str(tmp_path / "stream"),
            ]
        )
        == 0
    )
    fired = tmp_path / "firings.parquet"
    replay = [
        "triggers",
        "replay",
        "--events",
        str(tmp_path / "stream" / "events.jsonl"),
        "--catalog",
        str(tmp_path / "stream" / "catalog.jsonl"),
    ]
    assert (
        main([*replay, "--shop", str(shop), "--until", "2026-07-08", "--out", str(fired), "--log"])
        == 0
    )
    firings = pl.read_parquet(fired)
    logged = DecisionLog().read()
    assert sorted(logged["decision_id"]) == sorted(firings["trigger_id"])  # each firing once
    assert main(["simulate", "respond", "--shop", str(shop), "--days", "7"]) == 0
    report = tmp_path / "report.json"
    assert (
        main(
            [
                "report",
                "campaign",
                "--shop",
                str(shop),
                "--days",
                "7",
                "--out",
                str(tmp_path / "report.html"),
                "--json",
                str(report),
            ]
        )
        == 0
    )
    names = {c["name"] for c in json.loads(report.read_text())["comparisons"]}
    busiest = firings.filter(pl.col("holdout_kind") == "trigger")["trigger"].value_counts(
        sort=True
    )["trigger"][0]
    assert f"mailed vs trigger holdout ({busiest})" in names, names
