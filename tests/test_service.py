"""The BentoML service, started for real (`bentoml.serve`) on champions in a real MLflow store:
decisions end to end, API keys, 4xx for every malformed body, each client error one log line
without request values, the docs page from this server alone (headless Chromium), a bounded
schemathesis fuzz, the decision log after a kill mid-batch, and a promotion while requests
flow."""

from __future__ import annotations

import collections
import re
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import champions as champions_module  # tests/champions.py
import httpx
import polars as pl
import pytest
from server import server_workers, serving

from sendwise import __version__
from sendwise.features.clock import parse_as_of
from sendwise.store import registry
from sendwise.store.decisions import DecisionLog

AS_OF = parse_as_of("2026-05-31")
KEY = "test-key-1"
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def champions(simulated, simulated_shop, tmp_path_factory, new_store) -> Iterator[dict[str, str]]:
    """Champions trained on the simulated shop, in a registry private to this module; yields
    the environment a server needs."""
    root = tmp_path_factory.mktemp("serving")
    env = {
        **new_store(root),
        "SENDWISE_SHOP": str(simulated[0]),
        "SENDWISE_AS_OF": AS_OF.isoformat(),
        "SENDWISE_API_KEYS": f"{KEY},second-key",
        "SENDWISE_RELOAD_SECONDS": "1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for task in ("propensity", "crosssell", "sendtime"):
            assert register_champion(task, simulated_shop) == "1"
        yield env


def register_champion(task: str, shop, **params) -> str:
    """Fit one model at AS_OF and make it champion in the real registry (tests/champions.py:
    quick settings, a fit shared by the modules that need the same one). Backtests and
    promotion rules have their own tests (test_training); serving needs only the champions."""
    return champions_module.register_champion(task, shop, AS_OF, **params)


@pytest.fixture(scope="module")
def server(champions) -> Iterator[str]:
    with serving(champions) as (url, _):
        yield url


def post(url: str, body, key: str | None = KEY, **headers) -> httpx.Response:
    if key:
        headers["X-API-Key"] = key
    return httpx.post(f"{url}/decide", json=body, headers=headers, timeout=60)


def test_decisions_end_to_end(server, champions, simulated):
    shop = simulated[0]
    known = pl.read_parquet(shop / "customers.parquet")["customer_id"].head(300).to_list()
    recipients = [{"customer_id": c} for c in known] + [{"customer_id": "never-seen-before"}]
    window = {
        "now": "2026-06-01T00:00:00Z",
        "window_start": "2026-06-01T00:00:00Z",
        "window_end": "2026-06-03T00:00:00Z",
    }
    answer = post(server, {"recipients": recipients, "context": {"campaign": "june", **window}})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    decisions = body["decisions"]
    assert body["logged"] and [d["customer_id"] for d in decisions] == [
        r["customer_id"] for r in recipients
    ]
    unknown = decisions[-1]
    assert "cold_start_unknown_customer" in unknown["reasons"] and unknown["products"]
    sent = [d for d in decisions if d["send"]]
    assert len(sent) > 200
    for d in sent:
        at = datetime.fromisoformat(d["send_at"])
        assert datetime(2026, 6, 1, tzinfo=UTC) <= at <= datetime(2026, 6, 3, tzinfo=UTC)
    assert all(d["holdout"] or d["send"] or any(r.startswith(("suppressed", "freq_cap")) for r in d["reasons"]) for d in decisions)  # fmt: skip
    assert {d["model_versions"] for d in decisions} == {"crosssell:1,propensity:1,sendtime:1"}
    assert len({d["decision_id"] for d in decisions}) == len(decisions)
    log = DecisionLog(f"sqlite:///{champions['SENDWISE_HOME']}/decisions.db")
    assert log.batch_sizes()[body["batch_id"]] == (len(recipients), len(recipients))
    # the per-recipient GET form answers the same customer with a flat body
    one = httpx.get(
        f"{server}/connected/decide",
        params={"customer_id": known[0], "campaign": "june", "timezone": "Europe/Berlin"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert one.status_code == 200 and one.json()["customer_id"] == known[0]
    assert one.json()["segment"] == decisions[0]["segment"]


def test_keys_health_metrics_and_docs(server):
    body = {"recipients": [{"customer_id": "x"}]}
    assert post(server, body, key=None).status_code == 401
    assert post(server, body, key="wrong").status_code == 401
    assert post(server, body, key=None, Authorization="Bearer second-key").status_code == 200
    assert httpx.get(f"{server}/connected/decide", params={"customer_id": "x"}).status_code == 401
    assert httpx.get(f"{server}/livez").status_code == 200
    assert httpx.get(f"{server}/readyz").status_code == 200
    metrics = httpx.get(f"{server}/metrics").text
    assert "sendwise_decisions_total" in metrics and 'endpoint="/decide"' in metrics
    spec = httpx.get(f"{server}/docs.json").json()
    assert "/decide" in spec["paths"]
    assert spec["info"]["version"] == __version__


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"recipients": [{"customer_id": 17}]}, "customer_id"),
        ({"recipients": [{}]}, "customer_id"),
        ({}, "recipients"),
        ({"recipients": []}, "at least 1"),
        ({"recipients": [{"customer_id": "a"}] * 10_001}, "at most 10000"),
        ({"recipients": "everyone"}, "recipients"),
        ({"recipients": [{"customer_id": "a", "timezone": "Mars/Olympus"}]}, "unknown time zone"),
        ({"recipients": [{"customer_id": "a"}], "context": {"window_start": "2026-06-02", "window_end": "2026-06-01"}}, "window_end must be after"),
        ({"recipients": [{"customer_id": "a"}], "context": {"quiet_start": 25}}, "quiet_start"),
        ({"recipients": [{"customer_id": "a"}], "context": {"window_start": "soon"}}, "window_start"),
        ({"recipients": [{"customer_id": "a", "vip": True}]}, "vip"),
        ({"recipients": [{"customer_id": "a"}], "bogus": 1}, "bogus"),
    ],
)  # fmt: skip
def test_malformed_bodies_get_a_clear_4xx(server, body, says):
    answer = post(server, body)
    assert answer.status_code == 400
    assert says in answer.text
    assert all(set(problem) == {"loc", "msg"} for problem in answer.json()["detail"])


def test_a_champion_that_does_not_load_leaves_a_running_server_degraded_not_down(
    server, champions, simulated_shop
):
    """Issue 12 on a real server: the newest champion's files are damaged; the server keeps
    answering with the last good models, `/readyz` says degraded (200), and the failure is
    counted once, not at every poll."""
    # The module's server, before any other server starts: each start of a BentoML server
    # empties the Prometheus directory all of them share, so a running server's count can
    # be read only while no server has started after it (hence this test's place here).
    url = server
    with pytest.MonkeyPatch.context() as patch:
        for name, value in champions.items():
            patch.setenv(name, value)
        good = registry.alias_version(simulated_shop.name, "sendtime", "champion").version
        broken = champions_module.register("sendtime", simulated_shop, AS_OF, prior_strength=7.0)
        source = registry.model_version(simulated_shop.name, "sendtime", broken).source
        for f in Path(source.removeprefix("file://")).iterdir():
            f.write_text("damaged")
        # champion only once damaged: a server polling meanwhile must not load it whole
        registry.set_champion(simulated_shop.name, "sendtime", broken, "promote")
        try:
            deadline = time.monotonic() + 120
            while (body := httpx.get(f"{url}/readyz").json())["status"] != "degraded":
                assert time.monotonic() < deadline, body
                time.sleep(0.3)
            assert httpx.get(f"{url}/readyz").status_code == 200
            assert f"v{broken} does not load" in body["problem"]
            answer = post(url, {"recipients": [{"customer_id": "c0000001"}]})
            assert answer.status_code == 200
            assert f"sendtime:{good}" in answer.json()["decisions"][0]["model_versions"]
            time.sleep(3)  # three more polls: the same broken champion is not retried
            metrics = httpx.get(f"{url}/metrics").text
            counted = re.findall(r"^sendwise_model_reload_failures_total(?:\{[^}]*\})? (\S+)$",
                                 metrics, re.MULTILINE)  # fmt: skip
            assert counted and sum(float(c) for c in counted) == 1.0  # one worker, one count
        finally:
            registry.set_champion(simulated_shop.name, "sendtime", good, "rollback")


def test_client_errors_log_one_line_without_request_values(champions, capfd):
    """BentoML logged a 400 as a traceback of some 24 lines that held the customer ids sent;
    each client error is now one line: status, method, path and the fields at fault."""
    secret = "c-private-4711"
    with serving(champions, SENDWISE_MAX_BODY_BYTES="20000") as (url, _):
        capfd.readouterr()  # the start-up lines
        as_json = {"X-API-Key": KEY, "Content-Type": "application/json"}
        answers = [
            post(url, {"recipients": [{"customer_id": secret, "timezone": "Mars/Olympus"}], "context": {"window_end": secret}}),
            post(url, {"recipients": [{"customer_id": secret}], "bogus": 1}),
            post(url, {"recipients": [{"customer_id": secret}]}, key="wrong"),
            post(url, {"recipients": [{"customer_id": f"{secret}-{i}"} for i in range(2000)]}),
            httpx.post(f"{url}/decide", content=f"{{not json {secret}".encode(), headers=as_json),
            httpx.post(f"{url}/decide", data={"recipients": secret}, headers={"X-API-Key": KEY}),
            httpx.get(f"{url}/connected/decide", params={"customer_id": secret, "timezone": "Mars/Olympus"}, headers={"X-API-Key": KEY}),
        ]  # fmt: skip
        assert [a.status_code for a in answers] == [400, 400, 401, 413, 400, 415, 400]
        assert [p["loc"] for p in answers[0].json()["detail"]] == [["recipients", 0, "timezone"], ["context", "window_end"]]  # fmt: skip
        assert "limit of 20,000 bytes" in answers[3].text and "Invalid JSON" in answers[4].text
        assert post(url, {"recipients": [{"customer_id": secret}]}).status_code == 200
    logged = "".join(capfd.readouterr())  # the server has stopped: every line is out
    assert "Traceback" not in logged and "[ERROR]" not in logged
    assert secret not in logged
    assert "status=200" not in logged  # no access log unless `serve --access-log` asks for one
    # `... [WARNING] [entry_service:sendwise:1] MESSAGE (trace=...)`; access lines are INFO
    warnings = re.findall(r"\[WARNING\] \[[^\]]*\] (.*?)(?: \(trace=.*)?$", logged, re.MULTILINE)
    assert warnings == [
        "400 POST /decide: recipients.0.timezone, context.window_end",
        "400 POST /decide: bogus",
        "401 POST /decide: missing or unknown API key: send X-API-Key or Authorization: Bearer",
        "413 POST /decide: request body over the limit of 20,000 bytes",
        "400 POST /decide: body",
        "415 POST /decide: send the body as application/json",
        "400 GET /connected/decide: recipients.0.timezone",
    ]


def test_docs_page_loads_from_this_server_alone(server):
    """BentoML's page at `/` loaded Google Tag Manager, and its spec's description showed
    badges from other hosts. The page is opened under a name that is not loopback, as a real
    deployment's would be (Swagger UI's validator badge calls out for any other host)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    origin = f"http://sendwise.test:{urlsplit(server).port}"
    requested: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--host-resolver-rules=MAP sendwise.test 127.0.0.1"],
        )
        page = browser.new_page()
        page.on("request", lambda r: requested.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        # what is not this server's is recorded, then refused: the test needs no network
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(f"{origin}/") else r.abort())  # fmt: skip
        page.goto(f"{origin}/", wait_until="networkidle")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)  # Swagger renders late
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        text = page.inner_text("body")
        browser.close()
    assert requested and all(url.startswith(f"{origin}/") for url in requested), requested
    assert errors == []
    assert "/decide" in paths and __version__ in text


def test_fuzz_finds_no_server_error(server):
    """Bounded schemathesis run over /decide: schema-valid and schema-breaking bodies."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_dict(httpx.get(f"{server}/docs.json").json())
    operation = schema["/decide"]["POST"]
    statuses: list[int] = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(mode))
        def check(case):
            response = case.call(base_url=server, headers={"X-API-Key": KEY}, timeout=60)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.body, response.text[:300])

        check()
    assert (
        len(statuses) >= 40 and any(s == 200 for s in statuses) and any(s >= 400 for s in statuses)
    )


def test_killed_mid_batch_the_log_holds_whole_batches_only(champions, tmp_path):
    log_url = f"sqlite:///{tmp_path / 'decisions.db'}"
    answered: list[tuple[str, int]] = []
    took: list[float] = []  # seconds per answered batch
    failed: list[str] = []
    stop = threading.Event()
    recipients = [{"customer_id": f"c{i:07d}"} for i in range(3000)]

    in_flight = collections.Counter()  # requests under way, by client

    def client(url):
        while not stop.is_set():
            in_flight[threading.get_ident()] = 1  # sent and not answered yet: at the server
            try:
                started = time.monotonic()
                answer = post(url, {"recipients": recipients})
                elapsed = time.monotonic() - started
                in_flight[threading.get_ident()] = 0  # reading the answer is the client's time
                answer.raise_for_status()
                answered.append((answer.json()["batch_id"], len(answer.json()["decisions"])))
                took.append(elapsed)
            except httpx.HTTPError as error:
                failed.append(type(error).__name__)
            finally:
                in_flight[threading.get_ident()] = 0

    others = {p.pid for p in server_workers()}
    with serving(champions, SENDWISE_DECISION_LOG_URL=log_url) as (url, _):
        threads = [threading.Thread(target=client, args=(url,), daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 120
            while len(answered) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            for _ in range(10):  # until a kill cuts a batch off (see below)
                while in_flight.total() < 3 and time.monotonic() < deadline:  # all 3 waiting
                    time.sleep(0.001)
                # a sent request may still wait in the socket's backlog, where a restarted
                # worker would answer it: kill once the server is well into one; on a busy
                # machine that can miss, so a kill that cut nothing off is tried again
                time.sleep(min(took) / 2)
                # SIGKILL this server's workers while batches are in flight: no cleanup runs
                workers = []
                while not workers and time.monotonic() < deadline:  # restarted ones, too
                    workers = [p for p in server_workers() if p.pid not in others]
                assert workers
                for worker in workers:
                    worker.kill()
                others |= {worker.pid for worker in workers}
                time.sleep(0.5)
                if failed:
                    break
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=90)
    assert failed, "the kill should have cut some batch off"
    assert len(answered) >= 3
    log = DecisionLog(log_url)
    sizes = log.batch_sizes()
    assert all(declared == present for declared, present in sizes.values()), sizes
    assert log.count() == sum(declared for declared, _ in sizes.values())
    # every batch a client was told about is there, whole; none it was not told about is half
    for batch_id, n in answered:
        assert sizes[batch_id] == (n, n)


def test_promotion_is_picked_up_without_a_failed_request(server, champions, simulated_shop):
    url = server  # the module's server: it has served the champions since it started
    versions: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def client():
        body = {"recipients": [{"customer_id": f"c{i:07d}"} for i in range(1, 200)]}
        while not stop.is_set():
            try:
                answer = post(url, body)
                if answer.status_code != 200:
                    errors.append(f"{answer.status_code} {answer.text[:200]}")
                else:
                    versions.append(answer.json()["decisions"][0]["model_versions"])
            except httpx.HTTPError as error:
                errors.append(repr(error))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in champions.items():
            patch.setenv(name, value)
        try:
            new = register_champion("sendtime", simulated_shop, prior_strength=5.0)
            deadline = time.monotonic() + 120
            while not (versions and f"sendtime:{new}" in versions[-1]):
                assert time.monotonic() < deadline, "the promotion was not picked up"
                time.sleep(0.2)
            time.sleep(1)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=90)
            registry.set_champion(simulated_shop.name, "sendtime", "1", "choose")
    assert not errors, errors[:3]
    assert versions[0] == "crosssell:1,propensity:1,sendtime:1"
    assert versions[-1] == f"crosssell:1,propensity:1,sendtime:{new}"
    assert len(versions) > 10


def test_serve_refuses_to_start_without_keys(champions, monkeypatch, capsys):
    from sendwise.cli.main import main

    for name, value in champions.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SENDWISE_API_KEYS")
    assert main(["serve", "--shop", champions["SENDWISE_SHOP"]]) == 1
    assert "no API keys: set SENDWISE_API_KEYS" in capsys.readouterr().err
    assert main(["serve", "--shop", "/nonexistent/shop", "--insecure-dev"]) == 1
    assert "/nonexistent/shop: no shop directory" in capsys.readouterr().err
