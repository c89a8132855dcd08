"""The ``balance`` stage with real members, states and pickers, and a scripted relay.

The relay stand-in plays each target's answer by name and obeys the seam as the
real relay does: a status in ``ex.failover_statuses`` is raised as
``RetryableAnswer`` (nothing relayed), any other is returned; connect failures
set ``ex.outcome`` and raise. A fake clock drives cooldowns and the breaker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from aigw.balancer.criteria import FailoverPolicy
from aigw.balancer.members import Member, compile_members
from aigw.balancer.pickers import make_picker
from aigw.balancer.stage import Pool, balance
from aigw.balancer.state import TargetStates
from aigw.chain.body_budget import BodyBudget
from aigw.chain.exchange import Attempt, Exchange
from aigw.config.model import (
    AuthConfig,
    BalancerConfig,
    FailoverCriterion,
    LoggingConfig,
    ModelConfig,
    ModelOptions,
    TargetConfig,
)
from aigw.errors import (
    BadRequest,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from aigw.identity import IdentityRegistry, TokenSource, TokenUnavailable
from aigw.upstream.pool import ConnectTimeout, UpstreamPool
from aigw.upstream.relay import RetryableAnswer, make_relay
from aigw.upstream.target import compile_target

ALL_CRITERIA: tuple[FailoverCriterion, ...] = (
    "error",
    "timeout",
    "http_429",
    "http_500",
    "http_503",
    "non_idempotent",
)
TOKEN_ENDPOINT = "http://127.0.0.1:9/msi/token"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Play = Callable[[Exchange], web.StreamResponse]
"""What one target does with a request: answer (return) or fail (raise)."""


def answer(status: int, **headers: str) -> Play:
    def play(ex: Exchange) -> web.StreamResponse:
        if status in ex.failover_statuses:
            raise RetryableAnswer(status, _retry_after(headers))
        ex.upstream_status = status
        return web.Response(status=status, headers=headers)

    return play


def _retry_after(headers: dict[str, str]) -> float | None:
    if "retry-after-ms" in headers:
        return int(headers["retry-after-ms"]) / 1000
    return float(headers["retry-after"]) if "retry-after" in headers else None


def fails(outcome: str) -> Play:
    def play(ex: Exchange) -> web.StreamResponse:
        ex.outcome = outcome
        if "timeout" in outcome:
            raise UpstreamTimeout("upstream_timeout", "the upstream did not answer in time")
        raise UpstreamUnavailable(outcome, "the upstream could not be reached")

    return play


OK = answer(200)


class Relay:
    """Plays each target's script; records what each attempt was sent."""

    def __init__(self, **plays: Play | list[Play]) -> None:
        self.plays = plays
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, ex: Exchange) -> web.StreamResponse:
        if ex.target is None:  # a one-member pool: the relay's own target
            assert len(self.plays) == 1
            name = next(iter(self.plays))
        else:
            name = next(n for n in self.plays if ex.target.origin.host.startswith(n))
        self.sent.append(
            {
                "target": name,
                "headers": dict(ex.extra_headers),
                "query": dict(ex.extra_query),
                "body": json.loads(ex.upstream_body) if ex.upstream_body else None,
                "statuses": ex.failover_statuses,
            }
        )
        play = self.plays[name]
        if isinstance(play, list):
            play = play.pop(0) if len(play) > 1 else play[0]
        return play(ex)

    def targets(self) -> list[str]:
        return [sent["target"] for sent in self.sent]


def target(
    name: str, auth: AuthConfig | None = None, weight: int = 100, **options: Any
) -> TargetConfig:
    return TargetConfig(
        route_type="llm/v1/chat",
        auth=auth or AuthConfig(header_name="api-key", header_value=f"key-of-{name}"),
        model=ModelConfig(
            provider="azure",
            name="gpt-4o",
            options=ModelOptions(azure_instance=name, azure_deployment_id="gpt-4o", **options),
        ),
        logging=LoggingConfig(),
        weight=weight,
    )


class FakeTokens:
    """A token source: tokens t1, t2, ...; or TokenUnavailable when *down*."""

    def __init__(self) -> None:
        self.issued = 0
        self.invalidated: list[str] = []
        self.down = False

    async def token(self) -> str:
        if self.down:
            raise TokenUnavailable(TOKEN_ENDPOINT, "ConnectionError")
        if self.issued == 0 or self.invalidated[-1:] == [f"t{self.issued}"]:
            self.issued += 1
        return f"t{self.issued}"

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)


class FakeIdentities(IdentityRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = FakeTokens()

    def token_source(self, auth: AuthConfig) -> TokenSource:
        return cast(TokenSource, self.tokens)


ENTRA = AuthConfig(azure_use_managed_identity=True)


def make_pool(
    targets: list[TargetConfig],
    *,
    identities: IdentityRegistry | None = None,
    shared_defaults: bool = True,
    route: str = "r",
    **balancer: Any,
) -> Pool:
    config = BalancerConfig(**{"failover_criteria": ALL_CRITERIA, **balancer})
    members = compile_members(
        targets,
        states=TargetStates(),
        identities=identities,
        azure_base_url=None,
        shared_defaults=shared_defaults,
    )
    return Pool(
        route=route,
        members=members,
        picker=make_picker(config, [m.weight for m in members], [m.state for m in members]),
        policy=FailoverPolicy.from_criteria(config.failover_criteria),
        max_attempts=min(config.retries + 1, len(members)),
        max_fails=config.max_fails,
        fail_timeout_s=config.fail_timeout / 1000,
        hash_header=config.hash_on_header if config.algorithm == "consistent-hashing" else None,
        tokens_field="total_tokens",
    )


def exchange(headers: dict[str, str] | None = None, method: str = "POST") -> Exchange:
    request = make_mocked_request(method, "/chat", headers=CIMultiDict(headers or {}))
    ex = Exchange(
        request=request, path="/chat", pool=cast(UpstreamPool, None), body_budget=BodyBudget(1)
    )
    ex.payload = {"messages": [{"role": "user", "content": "hi"}]}
    ex.upstream_body = json.dumps(ex.payload).encode()
    return ex


async def send(stage: Any, **headers: str) -> tuple[Exchange, web.StreamResponse]:
    ex = exchange(headers)
    response = await stage(ex)
    return ex, response


def member(pool: Pool, name: str) -> Member:
    return next(m for m in pool.members if m.name == name)


# ordering and secrets ----------------------------------------------------------


async def test_round_robin_alternates_and_each_key_goes_only_to_its_target() -> None:
    pool = make_pool([target("a"), target("b")])
    relay = Relay(a=OK, b=OK)
    stage = balance(pool, relay, clock=Clock())
    for _ in range(4):
        ex, response = await send(stage)
        assert response.status == 200 and ex.target_name == relay.sent[-1]["target"]
    assert relay.targets() == ["a", "b", "a", "b"]
    for sent in relay.sent:
        assert sent["headers"] == {"api-key": f"key-of-{sent['target']}"}


async def test_a_query_and_a_body_key_are_replaced_per_attempt() -> None:
    query = AuthConfig(param_name="key", param_value="qa", param_location="query")
    body = AuthConfig(param_name="key", param_value="bb", param_location="body")
    pool = make_pool([target("a", query, weight=200), target("b", body)], algorithm="priority")
    relay = Relay(a=answer(503), b=OK)
    await send(balance(pool, relay, clock=Clock()))
    first, second = relay.sent
    assert first["query"] == {"key": "qa"} and "key" not in first["body"]
    assert second["query"] == {} and second["headers"] == {} and second["body"]["key"] == "bb"


async def test_differing_option_defaults_apply_per_attempt() -> None:
    pool = make_pool(
        [target("a", weight=200, max_tokens=100), target("b", max_tokens=200, temperature=0.5)],
        shared_defaults=False,
        algorithm="priority",
    )
    relay = Relay(a=answer(500), b=OK)
    await send(balance(pool, relay, clock=Clock()))
    assert relay.sent[0]["body"]["max_tokens"] == 100 and "temperature" not in relay.sent[0]["body"]
    assert (
        relay.sent[1]["body"]["max_tokens"] == 200 and relay.sent[1]["body"]["temperature"] == 0.5
    )


async def test_consistent_hashing_keeps_a_header_value_on_one_target() -> None:
    pool = make_pool(
        [target("a"), target("b"), target("c")],
        algorithm="consistent-hashing",
        hash_on_header="x-session-id",
    )
    relay = Relay(a=OK, b=OK, c=OK)
    stage = balance(pool, relay, clock=Clock())
    for session in ("s1", "s2", "s3", "s4"):
        for _ in range(3):
            await send(stage, **{"x-session-id": session})
        assert len(set(relay.targets()[-3:])) == 1


# failover, cooldown, breaker ---------------------------------------------------


async def test_429_moves_on_and_the_cooling_target_gets_nothing_until_retry_after() -> None:
    clock = Clock()
    pool = make_pool([target("a"), target("b")])
    relay = Relay(a=[answer(429, **{"retry-after": "5"}), OK], b=OK)
    stage = balance(pool, relay, clock=clock)
    ex, response = await send(stage)
    assert response.status == 200 and ex.target_name == "b"
    assert [(a.target, a.status, a.error) for a in ex.attempts or []] == [
        ("a", 429, None),
        ("b", 200, None),
    ]
    assert member(pool, "a").state.status(clock.now) == "cooling"
    for _ in range(4):
        clock.now += 1.0  # 4 s: still cooling
        await send(stage)
    assert relay.targets()[2:] == ["b"] * 4
    clock.now += 1.5
    for _ in range(2):
        await send(stage)
    assert "a" in relay.targets()[-2:]


async def test_every_target_cooling_answers_429_at_once_with_the_smallest_wait() -> None:
    clock = Clock()
    pool = make_pool([target("a"), target("b")])
    relay = Relay(
        a=answer(429, **{"retry-after-ms": "2500"}), b=answer(429, **{"retry-after": "7"})
    )
    stage = balance(pool, relay, clock=clock)
    ex, response = await send(stage)
    # The last attempt's answer is relayed as it came: b's own 429.
    assert response.status == 429 and response.headers["retry-after"] == "7"
    assert [a.status for a in ex.attempts or []] == [429, 429]
    clock.now += 0.3
    with pytest.raises(TooManyRequests) as info:
        await send(stage)
    assert info.value.code == "all_targets_rate_limited"
    assert info.value.headers == {"retry-after": "3", "retry-after-ms": "2200"}
    assert len(relay.sent) == 2  # nothing sent while both cool down


async def test_breaker_ejects_after_max_fails_and_503_names_the_soonest_probe() -> None:
    clock = Clock()
    # Its own route name: the ejections it causes are counted in the process's metrics.
    pool = make_pool(
        [target("a"), target("b")],
        max_fails=2,
        fail_timeout=10_000,
        retries=0,
        route="breaker-test",
    )
    relay = Relay(a=answer(500), b=answer(500))
    stage = balance(pool, relay, clock=clock)
    for _ in range(4):  # retries 0: each request one attempt, relayed as it is
        _, response = await send(stage)
        assert response.status == 500
        clock.now += 1.0
    assert {m.state.status(clock.now) for m in pool.members} == {"open"}
    with pytest.raises(ServiceUnavailable) as info:
        await send(stage)
    assert info.value.code == "no_healthy_target"
    # a failed at t and t+2 s, so opened until t+12 s; b until t+13 s; now is t+4 s.
    assert info.value.headers == {"retry-after": "8"}
    clock.now += 8.0
    relay.plays["a"] = OK
    ex, response = await send(stage)  # a's half-open probe succeeds and closes it
    assert response.status == 200 and ex.target_name == "a"
    assert member(pool, "a").state.status(clock.now) == "closed"


async def test_without_non_idempotent_a_post_moves_on_only_when_nothing_was_sent() -> None:
    pool = make_pool([target("a"), target("b")], failover_criteria=("error", "timeout", "http_429"))
    relay = Relay(a=answer(429, **{"retry-after": "1"}), b=OK)
    stage = balance(pool, relay, clock=Clock())
    ex, response = await send(stage)
    assert response.status == 429 and relay.sent[0]["statuses"] == frozenset()
    relay.plays["a"] = fails("upstream_unreachable")
    relay.plays["b"] = fails("upstream_unreachable")
    relay.plays["c"] = OK
    pool = make_pool([target("a"), target("b"), target("c")], failover_criteria=("error",))
    ex, response = await send(balance(pool, relay, clock=Clock()))
    assert response.status == 200 and ex.target_name == "c"
    assert [a.error for a in ex.attempts or []] == ["upstream_unreachable"] * 2 + [None]
    # A read timeout was sent: a POST stays where it was.
    relay.plays["a"] = fails("upstream_timeout")
    with pytest.raises(UpstreamTimeout):
        await send(
            balance(
                make_pool([target("a"), target("b")], failover_criteria=("error", "timeout")),
                relay,
                clock=Clock(),
            )
        )


async def test_a_connect_timeout_moves_on_only_under_timeout() -> None:
    relay = Relay(a=fails("upstream_connect_timeout"), b=OK)
    pool = make_pool([target("a"), target("b")], failover_criteria=("error",))
    with pytest.raises(UpstreamTimeout):
        await send(balance(pool, relay, clock=Clock()))
    pool = make_pool([target("a"), target("b")], failover_criteria=("timeout",))
    ex, _response = await send(balance(pool, relay, clock=Clock()))
    assert ex.target_name == "b" and ex.outcome == "ok"


async def test_client_errors_are_relayed_never_failed_over() -> None:
    pool = make_pool([target("a"), target("b")])
    relay = Relay(a=answer(400), b=OK)
    _ex, response = await send(balance(pool, relay, clock=Clock()))
    assert response.status == 400 and relay.targets() == ["a"]
    assert relay.sent[0]["statuses"] == frozenset({429, 500, 503})

    async def refuse(ex: Exchange) -> web.StreamResponse:
        raise BadRequest("invalid_api_version", "bad")

    with pytest.raises(BadRequest):
        await send(balance(make_pool([target("a"), target("b")]), refuse, clock=Clock()))


async def test_retries_bound_the_attempts_and_the_last_answer_is_relayed() -> None:
    pool = make_pool(
        [target("a", weight=300), target("b", weight=200), target("c")],
        retries=1,
        algorithm="priority",
    )
    relay = Relay(a=answer(503), b=answer(503, **{"retry-after": "2"}), c=OK)
    _ex, response = await send(balance(pool, relay, clock=Clock()))
    assert relay.targets() == ["a", "b"] and response.status == 503
    assert relay.sent[1]["statuses"] == frozenset()  # the last attempt: relayed as it is
    # After failures without an answer, the last error is the answer.
    relay = Relay(a=fails("upstream_unreachable"), b=fails("upstream_error"), c=OK)
    pool = make_pool(
        [target("a", weight=300), target("b", weight=200), target("c")],
        retries=1,
        algorithm="priority",
    )
    with pytest.raises(UpstreamUnavailable) as info:
        await send(balance(pool, relay, clock=Clock()))
    assert info.value.code == "upstream_error" and relay.targets() == ["a", "b"]


async def test_never_the_same_target_twice() -> None:
    pool = make_pool([target("a"), target("b")], retries=5)
    relay = Relay(a=fails("upstream_unreachable"), b=fails("upstream_unreachable"))
    with pytest.raises(UpstreamUnavailable):
        await send(balance(pool, relay, clock=Clock()))
    assert sorted(relay.targets()) == ["a", "b"]


# Entra ID ----------------------------------------------------------------------


async def test_entra_401_retries_once_on_the_same_target_with_a_fresh_token() -> None:
    identities = FakeIdentities()
    pool = make_pool(
        [target("a", ENTRA, weight=200), target("b")], identities=identities, algorithm="priority"
    )
    relay = Relay(a=[answer(401), OK], b=OK)
    _, response = await send(balance(pool, relay, clock=Clock()))
    assert response.status == 200 and relay.targets() == ["a", "a"]
    assert [s["headers"] for s in relay.sent] == [
        {"Authorization": "Bearer t1"},
        {"Authorization": "Bearer t2"},
    ]
    assert identities.tokens.invalidated == ["t1"]
    assert 401 in relay.sent[0]["statuses"] and 401 not in relay.sent[1]["statuses"]
    # A second 401 with the fresh token is the answer: no third try, no other target.
    relay = Relay(a=answer(401), b=OK)
    _ex, response = await send(balance(pool, relay, clock=Clock()))
    assert response.status == 401 and relay.targets() == ["a", "a"]


async def test_a_single_entra_target_gets_its_401_retry_too() -> None:
    identities = FakeIdentities()
    pool = make_pool([target("a", ENTRA)], identities=identities, retries=0)
    relay = Relay(a=[answer(401), OK])
    _, response = await send(balance(pool, relay, clock=Clock()))
    assert response.status == 200 and len(relay.sent) == 2


async def test_token_endpoint_down_is_a_502_naming_it_and_a_failure_of_that_target() -> None:
    identities = FakeIdentities()
    identities.tokens.down = True
    pool = make_pool(
        [target("a", ENTRA, weight=200), target("b")], identities=identities, algorithm="priority"
    )
    relay = Relay(a=OK, b=OK)
    ex, _ = await send(balance(pool, relay, clock=Clock()))
    assert ex.target_name == "b" and ex.attempts is not None
    assert ex.attempts[0][:3] == ("a", None, "token_unavailable")
    alone = make_pool([target("a", ENTRA)], identities=identities)
    with pytest.raises(UpstreamUnavailable) as info:
        await send(balance(alone, relay, clock=Clock()))
    assert info.value.code == "token_unavailable" and TOKEN_ENDPOINT in info.value.message


def test_attempt_is_a_plain_record() -> None:
    assert Attempt("a", 200, None, 1.5)._asdict() == {
        "target": "a",
        "status": 200,
        "error": None,
        "ms": 1.5,
    }


# the relay seam -----------------------------------------------------------------


async def test_the_relay_gives_up_a_failover_status_unsent_and_closes_that_response() -> None:
    requests: list[bytes] = []
    handlers: set[asyncio.Task[Any]] = set()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(cast("asyncio.Task[Any]", asyncio.current_task()))
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\nretry-after-ms: 250\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        await writer.drain()
        await reader.read()  # until aigw closes the connection
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    pool = UpstreamPool()
    try:
        port = server.sockets[0].getsockname()[1]
        config = target("a", upstream_url=f"http://127.0.0.1:{port}/openai/deployments/a/chat")
        relay = make_relay(compile_target(config), require_done=True, model_header=True)
        ex = exchange()
        ex.pool = pool
        ex.failover_statuses = frozenset({429})
        with pytest.raises(RetryableAnswer) as info:
            await relay(ex)
        assert (info.value.status, info.value.retry_after_s) == (429, 0.25)
        assert pool.open_connections == 0 and len(requests) == 1
        # Not a failover status: relayed as it came.
        ex = exchange()
        ex.pool = pool
        response = await relay(ex)
        assert response.status == 429 and response.headers["retry-after-ms"] == "250"
    finally:
        await pool.close()
        await asyncio.wait(handlers, timeout=5)
        server.close()
        await server.wait_closed()


async def test_the_relay_tells_a_connect_timeout_from_a_read_timeout() -> None:
    class TimingOut:
        def __init__(self, error: TimeoutError) -> None:
            self.error = error

        async def request(self, *args: object, **kwargs: object) -> None:
            raise self.error

    relay = make_relay(compile_target(target("a")), require_done=True, model_header=True)
    for error, outcome in (
        (ConnectTimeout("no connection"), "upstream_connect_timeout"),
        (TimeoutError("no head"), "upstream_timeout"),
    ):
        ex = exchange()
        ex.pool = cast(UpstreamPool, TimingOut(error))
        with pytest.raises(UpstreamTimeout):
            await relay(ex)
        assert ex.outcome == outcome


async def test_the_pool_raises_connect_timeout_when_no_connection_comes_in_time() -> None:
    handlers: set[asyncio.Task[Any]] = set()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(cast("asyncio.Task[Any]", asyncio.current_task()))
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")  # the body never comes
        await writer.drain()
        await reader.read()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    pool = UpstreamPool(limit=1)
    origin = compile_target(
        target("a", upstream_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x")
    ).origin
    try:
        busy = await pool.request(origin, "GET", "/", [], b"", connect_timeout=1, read_timeout=1)
        # The only connection is busy: the wait for one is the connect phase, and times out.
        with pytest.raises(ConnectTimeout):
            await pool.request(origin, "GET", "/", [], b"", connect_timeout=0.05, read_timeout=1)
        busy.close()
    finally:
        await pool.close()
        await asyncio.wait(handlers, timeout=5)
        server.close()
        await server.wait_closed()


async def test_when_no_target_is_left_the_last_error_keeps_its_outcome_for_the_log() -> None:
    clock = Clock()
    pool = make_pool([target("a"), target("b")], algorithm="priority")
    member(pool, "b").state.cool_down(clock.now + 10)
    relay = Relay(a=fails("upstream_unreachable"), b=OK)
    ex = exchange()
    with pytest.raises(UpstreamUnavailable):
        await balance(pool, relay, clock=clock)(ex)
    assert ex.outcome == "upstream_unreachable" and relay.targets() == ["a"]


async def test_a_token_endpoint_down_moves_a_post_on_without_non_idempotent() -> None:
    # Nothing was sent to the Entra target: a POST moves on under `error` alone, as after
    # a refused connection, and the target's breaker counts one failure.
    identities = FakeIdentities()
    identities.tokens.down = True
    pool = make_pool(
        [target("a", ENTRA, weight=200), target("b")],
        identities=identities,
        algorithm="priority",
        failover_criteria=("error",),
        max_fails=1,
    )
    relay = Relay(a=OK, b=OK)
    clock = Clock()
    ex, response = await send(balance(pool, relay, clock=clock))
    assert response.status == 200 and ex.target_name == "b"
    assert member(pool, "a").state.status(clock.now) == "open"
