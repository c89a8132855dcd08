"""The key-auth and acl stages, the consumer in the access log, and the consumer metrics."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from prometheus_client import REGISTRY, CollectorRegistry
from structlog.testing import capture_logs

from aigw.chain.access_log import access_log
from aigw.chain.body_budget import BodyBudget
from aigw.chain.errors import error_response, error_responses
from aigw.chain.exchange import Exchange, Handler
from aigw.chain.info import RouteInfo
from aigw.config.model import AclConfig, KeyAuthConfig
from aigw.consumers.acl import acl
from aigw.consumers.index import Consumer, ConsumerIndex, credential_id, key_digest
from aigw.consumers.key_auth import bearer_token, key_auth, key_places
from aigw.consumers.metrics import CONSUMER_METRICS, ConsumerMetrics
from aigw.errors import TooManyRequests
from aigw.metrics import Metrics
from aigw.upstream.pool import UpstreamPool

SEARCH_KEY = "sk-team-search-0123456789abcdef"
CHAT_KEY = "sk-team-chat-fedcba9876543210"
WRONG_KEY = "sk-nobody-00000000000000000000"

SEARCH = Consumer("team-search", frozenset({"search", "chat"}), "search.yaml")
CHAT = Consumer("team-chat", frozenset({"chat"}), "chat.yaml")
NO_GROUPS = Consumer("loner", frozenset(), "loner.yaml")


def index(*entries: tuple[str, Consumer]) -> ConsumerIndex:
    by_digest = {}
    for key, consumer in entries:
        digest = key_digest(key)
        by_digest[digest] = (consumer, credential_id(digest))
    return ConsumerIndex(by_digest, tuple(c for _, c in entries))


CONSUMERS = index((SEARCH_KEY, SEARCH), (CHAT_KEY, CHAT), ("sk-loner", NO_GROUPS))
BOTH_HEADERS = KeyAuthConfig(key_names=("api-key", "authorization"))

_NO_POOL: UpstreamPool = None  # type: ignore[assignment]


class _Protocol:
    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def exchange(
    headers: dict[str, str] | None = None,
    path: str = "/p",
    *,
    consumers: ConsumerIndex = CONSUMERS,
    body_coming: bool = False,
) -> Exchange:
    """An exchange on *consumers*; with *body_coming*, a body declared and not yet arrived."""
    hdrs = CIMultiDict(headers or {})
    payload: Any = EMPTY_PAYLOAD
    if body_coming:
        hdrs["Content-Length"] = "100"
        payload = StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        payload.feed_data(b"{")
    request = make_mocked_request("POST", path, headers=hdrs, payload=payload)
    ex = Exchange(request=request, path="/p", pool=_NO_POOL, body_budget=BodyBudget(2**20))
    ex.consumers = consumers
    ex.request_id = "req-1"
    return ex


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Exchange] = []

    async def __call__(self, ex: Exchange) -> web.StreamResponse:
        self.seen.append(ex)
        return web.Response(status=200)


INFO = RouteInfo(
    name="chat-route",
    source="r.yaml",
    provider="azure",
    model="gpt-4o",
    deployment="gpt-4o",
    route_type="llm/v1/chat",
)


async def answer(handler: Handler, ex: Exchange) -> web.Response:
    response = await error_responses(INFO, handler)(ex)
    assert isinstance(response, web.Response)
    return response


def error_of(response: web.Response) -> dict[str, Any]:
    assert isinstance(response.body, bytes)
    error: dict[str, Any] = json.loads(response.body)["error"]
    return error


# key-auth: where the key is found ----------------------------------------------------


@pytest.mark.parametrize(
    ("config", "headers", "path", "who"),
    [
        (BOTH_HEADERS, {"api-key": SEARCH_KEY}, "/p", SEARCH),
        (BOTH_HEADERS, {"Authorization": f"Bearer {CHAT_KEY}"}, "/p", CHAT),
        (BOTH_HEADERS, {"authorization": f"bearer {CHAT_KEY}"}, "/p", CHAT),
        (BOTH_HEADERS, {"AUTHORIZATION": f"BEARER   {CHAT_KEY}  "}, "/p", CHAT),
        # key_names order: api-key first, whatever else the request has.
        (
            BOTH_HEADERS,
            {"api-key": SEARCH_KEY, "Authorization": f"Bearer {CHAT_KEY}"},
            "/p",
            SEARCH,
        ),
        # An empty api-key is no key: the next name is tried.
        (BOTH_HEADERS, {"api-key": "", "Authorization": f"Bearer {CHAT_KEY}"}, "/p", CHAT),
        (KeyAuthConfig(), {"apikey": SEARCH_KEY}, "/p", SEARCH),  # Kong's default name
        (KeyAuthConfig(key_in_query=True), {}, f"/p?apikey={SEARCH_KEY}", SEARCH),
        # Headers before the query.
        (KeyAuthConfig(key_in_query=True), {"apikey": CHAT_KEY}, f"/p?apikey={SEARCH_KEY}", CHAT),
    ],
)
async def test_key_auth_finds_the_key_and_sets_the_consumer(
    config: KeyAuthConfig, headers: dict[str, str], path: str, who: Consumer
) -> None:
    recorder = Recorder()
    response = await answer(key_auth(config, recorder), ex := exchange(headers, path))
    assert response.status == 200
    assert recorder.seen == [ex]
    assert ex.consumer == who
    key = {SEARCH: SEARCH_KEY, CHAT: CHAT_KEY}[who]
    assert ex.credential_id == credential_id(key_digest(key))


@pytest.mark.parametrize(
    ("config", "headers", "path"),
    [
        (BOTH_HEADERS, {}, "/p"),
        (BOTH_HEADERS, {"Authorization": f"Basic {SEARCH_KEY}"}, "/p"),  # not Bearer
        (BOTH_HEADERS, {"Authorization": SEARCH_KEY}, "/p"),  # no scheme
        (BOTH_HEADERS, {"Authorization": "Bearer "}, "/p"),
        (BOTH_HEADERS, {"x-api-key": SEARCH_KEY}, "/p"),  # not one of key_names
        (
            BOTH_HEADERS,
            {"api-key": f"Bearer {SEARCH_KEY}"},
            "/p",
        ),  # only authorization has a scheme
        (KeyAuthConfig(), {}, f"/p?apikey={SEARCH_KEY}"),  # the query is off by default
        (KeyAuthConfig(key_in_header=False, key_in_query=True), {"apikey": SEARCH_KEY}, "/p"),
    ],
)
async def test_key_auth_refuses_a_key_not_where_the_route_looks(
    config: KeyAuthConfig, headers: dict[str, str], path: str
) -> None:
    recorder = Recorder()
    response = await answer(key_auth(config, recorder), ex := exchange(headers, path))
    assert response.status == 401
    assert recorder.seen == []
    assert ex.consumer is None


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bEaReR abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token("Bearerabc") is None


def test_the_401_says_where_to_put_the_key() -> None:
    assert key_places(BOTH_HEADERS) == "the `api-key` header or `Authorization: Bearer <key>`"
    assert key_places(KeyAuthConfig(key_in_query=True)) == (
        "the `apikey` header or the `apikey` query parameter"
    )


async def test_missing_and_unknown_keys_get_the_same_answer_byte_for_byte() -> None:
    stage = key_auth(BOTH_HEADERS, Recorder())
    missing = await answer(stage, exchange({}))
    unknown = await answer(stage, exchange({"api-key": WRONG_KEY}))
    unknown_bearer = await answer(stage, exchange({"Authorization": f"Bearer {WRONG_KEY}"}))
    for response in (missing, unknown, unknown_bearer):
        assert response.status == 401
        assert response.body == missing.body
        assert dict(response.headers) == dict(missing.headers)
    error = error_of(missing)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert "`api-key` header" in error["message"] and "Bearer" in error["message"]
    assert missing.headers["WWW-Authenticate"] == 'Key realm="aigw"'
    assert WRONG_KEY not in json.dumps(error)


async def test_missing_and_unknown_keys_are_told_apart_in_the_outcome_only() -> None:
    stage = key_auth(BOTH_HEADERS, Recorder())
    await answer(stage, missing := exchange({}))
    await answer(stage, unknown := exchange({"api-key": WRONG_KEY}))
    assert (missing.outcome, unknown.outcome) == ("missing_api_key", "invalid_api_key")
    assert missing.error == unknown.error  # the message: the same for both


class CountingIndex(ConsumerIndex):
    """An index that counts the keys it was asked about."""

    __slots__ = ("asked",)

    def __init__(self) -> None:
        super().__init__({}, ())
        self.asked: list[str] = []

    def authenticate(self, key: str) -> tuple[Consumer, str] | None:
        self.asked.append(key)
        return super().authenticate(key)


async def test_a_missing_key_costs_a_lookup_as_an_unknown_one_does() -> None:
    stage = key_auth(BOTH_HEADERS, Recorder())
    counting = CountingIndex()
    await answer(stage, exchange({}, consumers=counting))
    await answer(stage, exchange({"api-key": WRONG_KEY}, consumers=counting))
    assert len(counting.asked) == 2
    # The dummy looked up for a missing key is as long as a usual key.
    assert abs(len(counting.asked[0]) - len(WRONG_KEY)) < 32


async def test_a_refusal_before_the_body_arrived_closes_the_connection() -> None:
    stage = key_auth(BOTH_HEADERS, Recorder())
    coming = await answer(stage, exchange({"api-key": WRONG_KEY}, body_coming=True))
    done = await answer(stage, exchange({"api-key": WRONG_KEY}))
    assert (coming.status, done.status) == (401, 401)
    assert coming.keep_alive is False
    assert done.keep_alive is not False


async def test_key_auth_on_a_table_without_consumers_refuses_every_key() -> None:
    stage = key_auth(BOTH_HEADERS, Recorder())
    response = await answer(stage, exchange({"api-key": SEARCH_KEY}, consumers=index()))
    assert response.status == 401


# acl -----------------------------------------------------------------------------------


def acl_chain(config: AclConfig, recorder: Handler) -> Handler:
    return key_auth(BOTH_HEADERS, acl("chat-route", config, recorder))


@pytest.mark.parametrize(
    ("config", "key", "status"),
    [
        (AclConfig(allow=("search",)), SEARCH_KEY, 200),
        (AclConfig(allow=("search",)), CHAT_KEY, 403),
        (AclConfig(allow=("search", "chat")), CHAT_KEY, 200),
        (AclConfig(allow=("chat",)), "sk-loner", 403),  # no groups: in no allowed group
        (AclConfig(deny=("search",)), SEARCH_KEY, 403),
        (AclConfig(deny=("search",)), CHAT_KEY, 200),
        (AclConfig(deny=("search",)), "sk-loner", 200),
    ],
)
async def test_acl_allow_and_deny(config: AclConfig, key: str, status: int) -> None:
    recorder = Recorder()
    response = await answer(acl_chain(config, recorder), ex := exchange({"api-key": key}))
    assert response.status == status
    assert len(recorder.seen) == (status == 200)
    if status == 403:
        error = error_of(response)
        assert (error["code"], error["type"]) == ("access_denied", "invalid_request_error")
        assert "chat-route" in error["message"]
        assert "search" not in error["message"]  # the groups are the operator's business
        assert ex.outcome == "access_denied"


async def test_acl_without_a_consumer_answers_key_auths_401() -> None:
    recorder = Recorder()
    stage = acl("chat-route", AclConfig(allow=("chat",)), recorder)
    no_consumer = await answer(stage, ex := exchange({"api-key": SEARCH_KEY}, body_coming=True))
    from_key_auth = await answer(key_auth(BOTH_HEADERS, recorder), exchange({}))
    assert recorder.seen == []
    assert no_consumer.status == from_key_auth.status == 401
    assert error_of(no_consumer)["code"] == error_of(from_key_auth)["code"] == "invalid_api_key"
    assert no_consumer.headers["WWW-Authenticate"] == from_key_auth.headers["WWW-Authenticate"]
    assert ex.outcome == "missing_api_key"
    assert no_consumer.keep_alive is False


async def test_acl_deny_without_a_consumer_is_a_401_too() -> None:
    stage = acl("chat-route", AclConfig(deny=("x",)), Recorder())
    assert (await answer(stage, exchange({}))).status == 401


# error_response: the answer's own headers ---------------------------------------------


async def test_aigws_own_answers_carry_the_exchange_response_headers() -> None:
    ex = exchange({})
    ex.response_headers = (
        ("x-ratelimit-limit-tokens", "100"),
        ("x-ratelimit-remaining-tokens", "0"),
    )
    error = TooManyRequests("tokens_rate_limit_exceeded", "slow down", headers={"retry-after": "3"})
    response = error_response(ex, error)
    assert response.headers["x-ratelimit-limit-tokens"] == "100"
    assert response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert response.headers["retry-after"] == "3"
    refused = await answer(key_auth(BOTH_HEADERS, Recorder()), ex := exchange({}))
    assert "x-ratelimit-limit-tokens" not in refused.headers
    ex.response_headers = (("x-ratelimit-limit-tokens", "7"),)
    assert error_response(ex, error).headers["x-ratelimit-limit-tokens"] == "7"


# access log ----------------------------------------------------------------------------


def route_info(name: str) -> RouteInfo:
    return RouteInfo(
        name=name,
        source="r.yaml",
        provider="azure",
        model="gpt-4o",
        deployment="gpt-4o",
        route_type="llm/v1/chat",
    )


ROUTE_METRICS = Metrics(CollectorRegistry())


def logged_chain(route: str, recorder: Handler) -> Handler:
    info = route_info(route)
    chain = key_auth(BOTH_HEADERS, acl(route, AclConfig(allow=("chat",)), recorder))
    return access_log(info, ROUTE_METRICS.for_route(route, "gpt-4o"), error_responses(info, chain))


async def answered_with_usage(ex: Exchange) -> web.StreamResponse:
    ex.usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    return web.Response(status=200)


async def test_access_log_names_the_consumer_and_credential_never_the_key() -> None:
    chain = logged_chain("log-route", answered_with_usage)
    with capture_logs() as logs:
        await chain(exchange({"api-key": SEARCH_KEY}))
        await chain(exchange({"Authorization": f"Bearer {WRONG_KEY}"}))
        await chain(exchange({}))
    good, wrong, missing = logs
    assert good["consumer"] == "team-search"
    assert good["credential"] == credential_id(key_digest(SEARCH_KEY))
    assert (good["status"], good["outcome"]) == (200, "ok")
    assert (wrong["status"], wrong["outcome"]) == (401, "invalid_api_key")
    assert (missing["status"], missing["outcome"]) == (401, "missing_api_key")
    assert "consumer" not in wrong and "credential" not in wrong
    text = json.dumps(logs, default=str)
    assert SEARCH_KEY not in text and WRONG_KEY not in text


async def test_access_log_of_an_acl_refusal_names_the_consumer() -> None:
    chain = logged_chain("log-route-2", Recorder())
    with capture_logs() as logs:
        await chain(exchange({"api-key": "sk-loner"}))
    (line,) = logs
    assert (line["status"], line["outcome"], line["consumer"]) == (403, "access_denied", "loner")


# metrics -------------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_consumer_requests_and_tokens_are_counted_per_consumer_and_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Any consumer counts, as before a first table is published (another test's
    # reload may have published one without these consumers).
    monkeypatch.setattr(CONSUMER_METRICS, "known", None)
    chain = logged_chain("metrics-route", answered_with_usage)
    with capture_logs():
        for _ in range(2):
            await chain(exchange({"api-key": SEARCH_KEY}))
        await chain(exchange({"api-key": CHAT_KEY}))
        await chain(exchange({"api-key": "sk-loner"}))  # acl: 403
    requests = "aigw_consumer_requests_total"
    tokens = "aigw_consumer_tokens_total"
    route = "metrics-route"
    assert sample(requests, consumer="team-search", route=route, status="200") == 2
    assert sample(requests, consumer="team-chat", route=route, status="200") == 1
    assert sample(requests, consumer="loner", route=route, status="403") == 1
    assert sample(tokens, consumer="team-search", route=route, type="prompt") == 14
    assert sample(tokens, consumer="team-search", route=route, type="completion") == 10
    assert sample(tokens, consumer="loner", route=route, type="prompt") == 0


async def test_auth_failures_are_counted_by_reason() -> None:
    chain = logged_chain("failures-route", Recorder())
    with capture_logs():
        await chain(exchange({}))
        await chain(exchange({}))
        await chain(exchange({"api-key": WRONG_KEY}))
        await chain(exchange({"api-key": "sk-loner"}))
        await chain(exchange({"api-key": CHAT_KEY}))  # served: no failure
    failures = "aigw_auth_failures_total"
    assert sample(failures, route="failures-route", reason="missing") == 2
    assert sample(failures, route="failures-route", reason="unknown") == 1
    assert sample(failures, route="failures-route", reason="forbidden") == 1


def test_retain_drops_the_series_of_removed_consumers() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    route = metrics.for_route("r")
    route.count("a", 200, {"prompt_tokens": 3, "completion_tokens": 1})
    route.count("b", 200, None)
    route.auth_failure("missing")
    metrics.retain(["a"])
    assert (
        registry.get_sample_value(
            "aigw_consumer_requests_total", {"consumer": "a", "route": "r", "status": "200"}
        )
        == 1
    )
    for type_ in ("prompt", "completion"):
        gone = {"consumer": "b", "route": "r", "type": type_}
        assert registry.get_sample_value("aigw_consumer_tokens_total", gone) is None
    gone_requests = {"consumer": "b", "route": "r", "status": "200"}
    assert registry.get_sample_value("aigw_consumer_requests_total", gone_requests) is None
    failures = {"route": "r", "reason": "missing"}
    assert registry.get_sample_value("aigw_auth_failures_total", failures) == 1
    # A request of b still in flight at the reload ends: it does not bring b back.
    route.count("b", 200, None)
    assert registry.get_sample_value("aigw_consumer_requests_total", gone_requests) is None
    # a counts on from its totals; a consumer added by the next reload is counted.
    route.count("a", 200, None)
    metrics.retain(["a", "c"])
    route.count("c", 429, None)
    assert (
        registry.get_sample_value(
            "aigw_consumer_requests_total", {"consumer": "a", "route": "r", "status": "200"}
        )
        == 2
    )
    assert (
        registry.get_sample_value(
            "aigw_consumer_requests_total", {"consumer": "c", "route": "r", "status": "429"}
        )
        == 1
    )


def test_the_process_registry_has_the_consumer_families() -> None:
    assert CONSUMER_METRICS.for_route("x") is CONSUMER_METRICS.for_route("x")
    names = {family.name for family in REGISTRY.collect()}
    assert {"aigw_consumer_requests", "aigw_consumer_tokens", "aigw_auth_failures"} <= names
