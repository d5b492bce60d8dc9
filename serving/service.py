"""The BentoML service: `POST /decide` and a per-recipient `GET /connected/decide`
around `Runtime`, behind API keys and a request-size limit.

Started by `sendwise serve`, which passes its settings to the workers through the environment
(`SENDWISE_SHOP`, `SENDWISE_API_KEYS`, ...). Health: `/livez`, `/readyz`; Prometheus: `/metrics`;
OpenAPI: `/docs.json`, browsable at `/` from this server alone.

A client error (400, 401, 413, 415) is answered by `Guard` and logged as one line: status,
method, path and the fields at fault, never a request value, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hmac
import inspect
import io
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import bentoml
import numpy as np
from prometheus_client import Counter as PrometheusCounter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sendwise import __version__
from sendwise.features.events import (
    CatalogBatch,
    EventBatch,
    SegmentBatch,
    SegmentCall,
    from_segment,
)

from .decide import DecideRequest, Decision, answer_json
from .runtime import Runtime, ServeSettings

OPEN_PATHS = ("/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json")
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # 10,000 recipients take about 0.6 MB
MAX_UNPACKED = 16 * 1024 * 1024  # a gzip body from Segment's SDK, unpacked
# media types BentoML would parse as a form or a pickle rather than as JSON
NOT_JSON = (
    "multipart/form-data",
    "application/x-www-form-urlencoded",
    "application/vnd.bentoml+pickle",
)
MAX_LOGGED_FIELDS = 10

logger = logging.getLogger(__name__)


def api_keys() -> frozenset[str]:
    keys = os.environ.get("SENDWISE_API_KEYS", "").split(",")
    return frozenset(k.strip() for k in keys if k.strip())


def insecure_dev() -> bool:
    return os.environ.get("SENDWISE_INSECURE_DEV") == "1"


def _printable(text: str) -> str:
    """Client-chosen text (a path, an unknown field's name) escaped onto one log line."""
    return text.encode("unicode_escape").decode("ascii")


def client_error(
    scope: Scope, status: int, error: str, invalid: ValidationError | None = None
) -> JSONResponse:
    """A 4xx answer and its one log line. The body names the fields at fault, with pydantic's
    message (the client's own values may appear there); the log names only the fields, since
    ids and addresses must not reach the server log."""
    body: dict = {"error": error}
    at_fault = error
    if invalid is not None:
        problems = invalid.errors(include_url=False, include_context=False, include_input=False)
        body["detail"] = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in problems]
        fields = list(dict.fromkeys(".".join(map(str, e["loc"])) or "body" for e in problems))
        more = len(fields) - MAX_LOGGED_FIELDS
        at_fault = ", ".join(fields[:MAX_LOGGED_FIELDS]) + (f" and {more} more" if more > 0 else "")
        body["error"] = f"{error}: {at_fault}"
    logger.warning(
        "%d %s %s: %s", status, scope["method"], _printable(scope["path"]), _printable(at_fault)
    )
    headers = {"WWW-Authenticate": 'Bearer realm="sendwise"'} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """ASGI middleware that answers every client error itself, as `client_error`: an API key
    (`X-API-Key` or `Authorization: Bearer`) on every path but health, metrics and docs (401),
    a limit on the request body (413), and a JSON body that the API's input model accepts
    (400, 415). BentoML would answer that 400 too, but logs it with a traceback that holds the
    request's values; here its own validation only ever sees a valid body."""

    def __init__(
        self,
        app: ASGIApp,
        keys: frozenset[str],
        max_body_bytes: int,
        inputs: Mapping[str, type[BaseModel]],
        insecure: bool = False,
    ):
        if not keys and not insecure:
            raise RuntimeError("no API keys: set SENDWISE_API_KEYS, or pass --insecure-dev")
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.insecure = insecure
        self.max_body_bytes = max_body_bytes
        self.inputs = inputs

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key")
        bearer = headers.get(b"authorization", b"")
        if given is None and bearer[:7].lower() == b"bearer ":
            given = bearer[7:].strip()
        if given is None and bearer[:6].lower() == b"basic ":  # Segment's write key as user
            try:
                given = base64.b64decode(bearer[6:].strip(), validate=True).partition(b":")[0]
            except binascii.Error:
                return False
        # compare against every key, in constant time each
        return given is not None and any([hmac.compare_digest(given, k) for k in self.keys])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/readyz" and (answer := await readiness(scope)) is not None:
            return await answer(scope, receive, send)
        headers = dict(scope["headers"])
        guarded = not (self.insecure or path in OPEN_PATHS or path.startswith("/static_content"))
        if guarded and not self._authorised(headers):
            message = "missing or unknown API key: send X-API-Key or Authorization: Bearer"
            return await client_error(scope, 401, message)(scope, receive, send)
        if path == "/triggers" and scope["method"] == "GET":
            return await triggers_page(scope)(scope, receive, send)
        declared = headers.get(b"content-length")
        limit = self.max_body_bytes
        too_big = f"request body over the limit of {limit:,} bytes"
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await client_error(scope, 413, too_big)(scope, receive, send)
        # a chunked body is counted as it arrives, and buffered so it can be refused whole
        chunks, size = [], 0
        more = scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await client_error(scope, 413, too_big)(scope, receive, send)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        model = self.inputs.get(path) if scope["method"] == "POST" else None
        if model is not None:
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1")
            if media_type in NOT_JSON:
                message = "send the body as application/json"
                return await client_error(scope, 415, message)(scope, receive, send)
            try:
                request = model.model_validate_json(body or b"{}")  # as BentoML reads ""
            except ValidationError as invalid:
                error = client_error(scope, 400, "invalid request body", invalid)
                return await error(scope, receive, send)
            if path in DIRECT:  # answered here: the body is parsed once, not twice
                answer = await readiness(scope) or DIRECT[path](request)
                return await answer(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay if chunks else receive, send)


class DecideResponse(BaseModel):
    batch_id: str = Field(description="the decision log's id for this batch")
    logged: bool = Field(description="true: the whole batch is in the decision log")
    decisions: list[Decision]


decisions_served = PrometheusCounter(
    name="sendwise_decisions",
    documentation="Decisions served, by whether they send and whether held out",
    labelnames=["send", "holdout"],
)
model_reloads = PrometheusCounter(
    name="sendwise_model_reloads", documentation="Champion changes picked up without a restart"
)
model_reload_failures = PrometheusCounter(
    name="sendwise_model_reload_failures",
    documentation="Champions that did not load (the last good models kept serving)",
)


async def readiness(scope: Scope) -> JSONResponse | None:
    """`/readyz` with a body: `ready`, `degraded` (a champion did not load: the last good models
    answer; 200) or `not ready` (no valid model set: 503, and `/decide` answers 503 too); None
    where the request goes on."""
    if scope["path"] not in ("/readyz", "/decide"):
        return None
    try:
        runtime = bentoml.get_current_service().runtime
    except Exception:  # noqa: BLE001 - not started yet: BentoML answers
        return None
    ready, body = runtime.health()
    if scope["path"] == "/readyz":
        ready = ready and runtime.log.ping()
        return JSONResponse(body, status_code=200 if ready else 503)
    if not ready:
        return JSONResponse({"error": "no valid models loaded", **body}, status_code=503)
    return None


def decided(request: DecideRequest) -> Response:
    """The `/decide` answer from this worker's service."""
    service = bentoml.get_current_service()
    return Response(service.serve_json(request), media_type="application/json")


def events_stored(batch: EventBatch) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().runtime.ingest(batch.events))


def catalog_stored(batch: CatalogBatch) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().runtime.ingest_catalog(batch.products))


class TriggersQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int = Field(0, ge=0, description="the `next` of the last page read")
    limit: int = Field(100, ge=1, le=1000)


def triggers_page(scope: Scope) -> JSONResponse:
    """`GET /triggers?after=CURSOR&limit=N`: firings in firing order, each with its
    decision; resume with `after=next`."""
    try:
        query = TriggersQuery.model_validate(dict(parse_qsl(scope["query_string"].decode())))
    except ValidationError as invalid:
        return client_error(scope, 400, "invalid query", invalid)
    found = bentoml.get_current_service().runtime.events.firings_after(query.after, query.limit)
    page = TriggersPage(
        triggers=[{k: v for k, v in f.items() if k != "seq"} for f in found],
        next=found[-1]["seq"] if found else query.after,
    )
    return JSONResponse(page.model_dump())


# POST paths `Guard` answers itself once it has checked the body (the BentoML routes of the
# same paths give the contract: OpenAPI, clients)
DIRECT = {"/decide": decided, "/events": events_stored, "/catalog": catalog_stored}


# the body is a `DecideRequest` itself (a positional-only parameter below), so its rules hold
# at the top level too: unknown fields are refused there as they are in a recipient
class DecideBody(DecideRequest, bentoml.IODescriptor):
    """Recipients, in order, and what the request says about the send; unknown fields are
    refused."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "recipients": [
                    {"customer_id": "17850"},
                    {"customer_id": "c42", "timezone": "Europe/Berlin"},
                ],
                "context": {
                    "campaign": "june-sale",
                    "offers": ["none", "free_shipping"],
                    "window_start": "2026-06-01T08:00:00Z",
                    "window_end": "2026-06-02T20:00:00Z",
                },
            }
        }
    )


class EventBody(EventBatch, bentoml.IODescriptor):
    """`{"events": [{"message_id", "type", "customer_id", "timestamp", "properties"}]}`."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "events": [
                    {
                        "message_id": "m-1",
                        "type": "product_added",
                        "customer_id": "17850",
                        "timestamp": "2026-06-01T10:00:00Z",
                        "properties": {"product_id": "85123A", "price": 2.55, "quantity": 1},
                    }
                ]
            }
        }
    )


class CatalogBody(CatalogBatch, bentoml.IODescriptor):
    """`{"products": [{"product_id", "timestamp", "price", "stock"}]}` (price or stock)."""


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events stored now")
    duplicates: int = Field(description="events whose message_id was stored before")


class CatalogAccepted(BaseModel):
    accepted: int


class Firing(BaseModel):
    trigger_id: str
    trigger: str
    customer_id: str
    subject: str | None
    fired_at: str
    decision: dict


class TriggersPage(BaseModel):
    triggers: list[Firing]
    next: int = Field(description="pass as `after` for the firings after these")


per_recipient = Starlette()
docs = Starlette()
segment = Starlette()


# BentoML's access log (a line per request) and OpenTelemetry spans cost about 2.5 and 2 ms a
# request on a 2-core machine (experiments/bench_api.py): off, and the decision and event paths
# untraced, unless `sendwise serve --access-log` or `--trace-requests` asks. Client errors are
# logged whatever is set, one line each (`Guard`); /metrics counts every request.
HOT_PATHS = "/decide,/events,/catalog,/v1/,/connected/decide"


@bentoml.service(
    name="sendwise",
    traffic={"timeout": 120},
    http={"host": "127.0.0.1"},
    logging={"access": {"enabled": os.environ.get("SENDWISE_ACCESS_LOG") == "1"}},
    tracing={}
    if os.environ.get("SENDWISE_TRACE_REQUESTS") == "1"
    else {"excluded_urls": HOT_PATHS},
)
@bentoml.asgi_app(per_recipient, path="/connected")
@bentoml.asgi_app(segment, path="/v1")
@bentoml.asgi_app(docs, path="/")
class Sendwise:
    """Decisions for an ESP: which offer, which products, when to send, and who is held out.
    Every path but health, metrics and docs needs an API key: `X-API-Key` or
    `Authorization: Bearer`."""

    def __init__(self) -> None:
        self.runtime = Runtime(
            ServeSettings.from_env(),
            on_reload=model_reloads.inc,
            on_reload_failure=model_reload_failures.inc,
        )
        self.runtime.watch()
        self.runtime.keep_fresh()
        if os.environ.get("SENDWISE_TRIGGERS", "1") == "1":
            self.runtime.run_triggers()

    def __is_ready__(self) -> bool:
        """A valid model set loaded and the decision log reachable (`Readiness` says more)."""
        return self.runtime.snapshot is not None and self.runtime.log.ping()

    def serve_json(self, request: DecideRequest) -> bytes:
        answer = self.runtime.serve(request)
        decisions = answer["decisions"]
        send, holdout = decisions["send"].to_numpy(), decisions["holdout"].to_numpy()
        for sent, held in ((True, False), (True, True), (False, True), (False, False)):
            if n := int(np.count_nonzero((send == sent) & (holdout == held))):
                decisions_served.labels(send=sent, holdout=held).inc(n)
        return answer_json(answer["batch_id"], decisions)

    @bentoml.api(route="/decide")
    async def decide(self, request: DecideBody, /) -> DecideResponse:
        """Decisions for 1 to 10,000 recipients, in order; the batch is logged whole first."""
        # `Guard` answers a valid body itself (`decided`), from the body it has parsed; this
        # route gives BentoML the contract (OpenAPI, clients) and answers if Guard is absent.
        # The documented `DecideResponse` is written as JSON by Polars rather than by pydantic.
        return Response(self.serve_json(request), media_type="application/json")

    @bentoml.api(route="/events")
    async def events(self, batch: EventBody, /) -> EventsAccepted:
        """Behaviour events (1 to 10,000), stored durably before the answer; a repeated
        `message_id` is counted as a duplicate and changes nothing."""
        return EventsAccepted(**self.runtime.ingest(batch.events))

    @bentoml.api(route="/catalog")
    async def catalog(self, batch: CatalogBody, /) -> CatalogAccepted:
        """Price and stock changes (1 to 10,000), stored durably before the answer."""
        return CatalogAccepted(**self.runtime.ingest_catalog(batch.products))

    def recipient(self, customer_id: str, query: dict[str, str]) -> dict:
        """One recipient's decision with the context from query parameters, flattened for an
        ESP template's connected-content call."""
        recipient = {"customer_id": customer_id}
        if "timezone" in query:
            recipient["timezone"] = query["timezone"]
        context = {k: v for k, v in query.items() if k != "timezone"}
        if "offers" in context:
            context["offers"] = context["offers"].split(",")
        request = DecideRequest.model_validate({"recipients": [recipient], "context": context})
        answer = json.loads(self.serve_json(request))
        return {"batch_id": answer["batch_id"], "logged": True, **answer["decisions"][0]}


async def _recipient_route(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    try:
        query = dict(request.query_params)
        body = service.recipient(query.pop("customer_id", ""), query)
    except ValidationError as invalid:
        return client_error(request.scope, 400, "invalid query", invalid)
    return JSONResponse(body)


per_recipient.add_route("/decide", _recipient_route, methods=["GET"])


async def _segment_route(request: Request) -> JSONResponse:
    """Segment's (and RudderStack's) HTTP tracking API: `/v1/batch`, or one call at
    `/v1/track` or `/v1/identify`; the e-commerce spec's track calls become events."""
    body = await request.body()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        try:
            body = gzip_body(body)
        except (OSError, EOFError, ValueError) as error:
            return client_error(request.scope, 400, f"body not gzip: {error}")
    try:
        if request.url.path.endswith("/batch"):
            calls = SegmentBatch.model_validate_json(body).batch
        else:
            call = SegmentCall.model_validate_json(body)
            calls = [call.model_copy(update={"type": request.url.path.rsplit("/", 1)[-1]})]
        events, skipped = from_segment(calls, datetime.now(UTC))
        checked = EventBatch.model_validate({"events": events}).events if events else []
    except ValidationError as invalid:
        return client_error(request.scope, 400, "invalid request body", invalid)
    stored = bentoml.get_current_service().runtime.ingest(checked) if checked else {}
    return JSONResponse({"success": True, "skipped": skipped, **stored})


def gzip_body(body: bytes) -> bytes:
    """A gzip body, refused past the request-size limit once unpacked."""
    unpacked = gzip.GzipFile(fileobj=io.BytesIO(body)).read(MAX_UNPACKED + 1)
    if len(unpacked) > MAX_UNPACKED:
        raise ValueError(f"over {MAX_UNPACKED:,} bytes unpacked")
    return unpacked


for call_path in ("/batch", "/track", "/identify"):
    segment.add_route(call_path, _segment_route, methods=["POST"])

# BentoML's own page loads Google Tag Manager, and its spec's description (BentoML's README)
# shows badges from four other hosts; this page and spec load from this server alone.
DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>sendwise API</title>
  <link rel="stylesheet" href="./static_content/swagger-ui.css">
  <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="./static_content/swagger-ui-bundle.js"></script>
  <script>SwaggerUIBundle({url: "./docs.json", dom_id: "#swagger-ui", validatorUrl: null});</script>
</body>
</html>
"""
# the browser refuses anything from elsewhere, should a later spec or bundle ask for it
SAME_ORIGIN = (
    "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"
)


async def _docs_page(_: Request) -> HTMLResponse:
    return HTMLResponse(DOCS_PAGE, headers={"Content-Security-Policy": SAME_ORIGIN})


@functools.cache
def openapi() -> dict:
    """BentoML's spec with sendwise's own title, version and description (BentoML knows a
    version only for a built bento, and describes itself)."""
    spec = Sendwise.openapi_spec.asdict()
    description = inspect.cleandoc(Sendwise.inner.__doc__)
    spec["info"] = {"title": "sendwise", "version": __version__, "description": description}
    spec["paths"]["/triggers"] = {
        "get": {
            "summary": "Firings after a cursor",
            "description": inspect.cleandoc(triggers_page.__doc__),
            "parameters": [
                {"name": name, "in": "query", "schema": {"type": "integer"}}
                for name in TriggersQuery.model_fields
            ],
            "responses": {"200": {"description": "A page of firings, and the next cursor"}},
        }
    }
    return spec


async def _openapi_route(_: Request) -> JSONResponse:
    return JSONResponse(openapi())


docs.add_route("/", _docs_page, methods=["GET"])
docs.add_route("/docs.json", _openapi_route, methods=["GET"])

Sendwise.add_asgi_middleware(
    Guard,
    keys=api_keys(),
    max_body_bytes=int(os.environ.get("SENDWISE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
    inputs={api.route: api.input_spec for api in Sendwise.apis.values()},
    insecure=insecure_dev(),
)
