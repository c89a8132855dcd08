"""Reload under load: route A keeps serving, untouched, while conf.d churns around it.

A client keeps sending plain and streaming chat requests to route A for the whole run while
the files of routes A, B and C are rewritten (in place and by rename), renamed away and back,
broken in every way a file can break and fixed again, 60 times. Expected: zero failed requests
on A, every stream complete, every change observed on the admin status endpoint within
`BOUND_S`, every broken file reported (log and status) while its last good version serves.

`BOUND_S` is ten times the 300 ms product target so that a loaded CI machine does not fail
the test; the target itself is watched by ``bench/bench_reload.py``, whose report gives the
median / p90 / max and counts the changes over 300 ms. ``pytest -s`` prints the latencies
observed here, with the same count.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import _chat
from tests.integration.harness import MockProcess, wait_until
from tests.integration.test_reload import BOUND_S, MODELS, UNSET_VAR, ReloadGateway, digest
from tests.integration.test_sdk import API_VERSION, QUESTION, sync_client

ROUNDS = 5
"""Each round makes 12 changes: 60 in all."""

TARGET_MS = 300
"""The product target for a change to go live; reported, never asserted (see the docstring)."""


@dataclass
class Traffic:
    """What the clients of route A saw."""

    plain_ok: int = 0
    streams_ok: int = 0
    failures: list[str] = field(default_factory=list)
    streams: list[tuple[float, float]] = field(default_factory=list)  # (start, end), monotonic
    stop: threading.Event = field(default_factory=threading.Event)


def _plain_client(gw: ReloadGateway, traffic: Traffic) -> None:
    client = sync_client(gw.proc, max_retries=0)
    while not traffic.stop.is_set():
        try:
            model = client.chat.completions.create(model="alpha", messages=QUESTION).model
        except Exception as exc:
            traffic.failures.append(f"plain: {exc!r}")
            continue
        if model in MODELS.values():
            traffic.plain_ok += 1
        else:
            traffic.failures.append(f"plain: unexpected model {model!r}")


def _sdk_stream(gw: ReloadGateway) -> str | None:
    """One SDK stream on route A; None if it completed, else what went wrong."""
    stream = sync_client(gw.proc, max_retries=0).chat.completions.create(
        model="alpha", messages=QUESTION, stream=True
    )
    finish = [chunk.choices[0].finish_reason for chunk in stream if chunk.choices]
    return None if finish and finish[-1] == "stop" else f"sdk stream ended with {finish[-1:]}"


def _raw_stream(gw: ReloadGateway) -> str | None:
    """One stream on route A read off the wire; None if it ended with ``data: [DONE]``."""
    connection = http.client.HTTPConnection("127.0.0.1", gw.proc.port, timeout=30)
    try:
        body = json.dumps({"model": "alpha", "messages": QUESTION, "stream": True})
        connection.request(
            "POST",
            f"/openai/deployments/alpha/chat/completions?api-version={API_VERSION}",
            body=body,
            headers={"Content-Type": "application/json", "api-key": "client-key"},
        )
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    if response.status != 200:
        return f"raw stream: {response.status} {data[:200]!r}"
    events = [e for e in data.split(b"\n\n") if e.strip()]
    if not events or events[-1] != b"data: [DONE]":
        return f"raw stream did not end with [DONE]: {data[-200:]!r}"
    return None


def _stream_client(gw: ReloadGateway, traffic: Traffic, turn: int) -> None:
    """Streams one after the other, alternately with the SDK and off the wire."""
    while not traffic.stop.is_set():
        turn += 1
        started = time.monotonic()
        try:
            problem = _sdk_stream(gw) if turn % 2 else _raw_stream(gw)
        except Exception as exc:
            problem = f"stream: {exc!r}"
        if problem is None:
            traffic.streams_ok += 1
            traffic.streams.append((started, time.monotonic()))
        else:
            traffic.failures.append(problem)


# -- the files and the changes --------------------------------------------------


def alpha_deployment(version: int) -> str:
    return ("gpt-4o", "gpt-4.1-mini")[version % 2]


def alpha(version: int) -> str:
    """Route A, version *version*: same route, alternating deployment and defaults."""
    deployment = alpha_deployment(version)
    options = f"\n              temperature: {0.1 + (version % 5) / 10:.1f}"
    return f"# route A, version {version}\n" + _chat(
        "alpha", deployment=deployment, options=options
    )


def bravo(version: int) -> str:
    return f"# route B, version {version}\n" + _chat("bravo", deployment="gpt-4.1-mini")


def charlie(version: int) -> str:
    return f"# route C, version {version}\n" + _chat("charlie", deployment="gpt-4o")


BREAKS: list[tuple[str, Callable[[str], str]]] = [
    ("yaml syntax", lambda t: t.replace("  methods: [POST]\n", "  methods: [POST\n")),
    ("unknown key", lambda t: t.replace("header_value:", "header_vaule:")),
    ("unset variable", lambda t: t.replace("${AZURE_OPENAI_KEY}", "${" + UNSET_VAR + "}")),
    ("missing field", lambda t: t.split("          model:\n")[0]),
]


@dataclass
class Change:
    """One change to conf.d and the status that shows it applied."""

    kind: str
    apply: Callable[[], object]
    applied: Callable[[dict[str, Any]], bool]
    after: Callable[[dict[str, Any]], None] = lambda status: None


class Churn:
    """Builds the changes; tracks what each file should serve."""

    def __init__(self, gw: ReloadGateway) -> None:
        self.gw = gw
        self.conf = gw.conf
        self.version = 0
        self.alpha_version = 0
        self.alpha = alpha(0)
        self.bravo = bravo(0)
        self.charlie = charlie(0)
        self.breaks = 0

    def _next(self) -> int:
        self.version += 1
        return self.version

    def _serves(
        self, name: str, text: str, state: str = "active"
    ) -> Callable[[dict[str, Any]], bool]:
        def check(status: dict[str, Any]) -> bool:
            file = status["files"].get(name)
            return file is not None and file["state"] == state and file["digest"] == digest(text)

        return check

    def _next_alpha(self) -> str:
        self.alpha_version = self._next()
        self.alpha = alpha(self.alpha_version)
        return self.alpha

    def rewrite_alpha_in_place(self) -> Change:
        text = self._next_alpha()
        return Change(
            "A rewrite in place",
            lambda: (self.conf / "alpha.yaml").write_text(text),
            self._serves("alpha.yaml", text),
        )

    def rewrite_alpha_by_rename(self) -> Change:
        text = self._next_alpha()

        def apply() -> None:
            (self.conf / ".alpha.yaml.tmp").write_text(text)
            os.rename(self.conf / ".alpha.yaml.tmp", self.conf / "alpha.yaml")

        return Change("A temp+rename", apply, self._serves("alpha.yaml", text))

    def rename_bravo_away(self) -> Change:
        def after(status: dict[str, Any]) -> None:
            self.gw.assert_no_route("bravo")

        return Change(
            "B renamed away",
            lambda: os.rename(self.conf / "bravo.yaml", self.conf / "bravo.yaml.disabled"),
            lambda status: "bravo.yaml" not in status["files"],
            after,
        )

    def rename_bravo_back(self) -> Change:
        def after(status: dict[str, Any]) -> None:
            assert self.gw.chat("bravo") == MODELS["gpt-4.1-mini"]

        return Change(
            "B renamed back",
            lambda: os.rename(self.conf / "bravo.yaml.disabled", self.conf / "bravo.yaml"),
            self._serves("bravo.yaml", self.bravo),
            after,
        )

    def rewrite_bravo_by_rename(self) -> Change:
        self.bravo = text = bravo(self._next())

        def apply() -> None:
            (self.conf / "bravo.yaml.new").write_text(text)
            os.rename(self.conf / "bravo.yaml.new", self.conf / "bravo.yaml")

        return Change("B temp+rename", apply, self._serves("bravo.yaml", text))

    def break_charlie(self) -> Change:
        how, break_ = BREAKS[self.breaks % len(BREAKS)]
        self.breaks += 1
        broken = break_(charlie(self._next()))
        rejected_before = len(self.gw.rejections("charlie.yaml"))

        def applied(status: dict[str, Any]) -> bool:
            file = status["files"]["charlie.yaml"]
            return bool(file["state"] == "lkg" and file["digest"] == digest(self.charlie))

        def after(status: dict[str, Any]) -> None:
            assert status["degraded"] is True
            assert status["files"]["charlie.yaml"]["error"], status["files"]["charlie.yaml"]
            rejected = self.gw.rejections("charlie.yaml")
            assert len(rejected) == rejected_before + 1, rejected[rejected_before:]
            assert rejected[-1]["serving"] == "last known good"
            assert self.gw.chat("charlie") == MODELS["gpt-4o"]  # its last good version

        return Change(
            f"C broken ({how})",
            lambda: (self.conf / "charlie.yaml").write_text(broken),
            applied,
            after,
        )

    def fix_charlie(self) -> Change:
        self.charlie = text = charlie(self._next())

        def after(status: dict[str, Any]) -> None:
            assert status["degraded"] is False
            assert status["files"]["charlie.yaml"]["error"] is None

        return Change(
            "C fixed",
            lambda: (self.conf / "charlie.yaml").write_text(text),
            self._serves("charlie.yaml", text),
            after,
        )

    def round(self) -> list[Callable[[], Change]]:
        """Twelve changes, every kind, interleaved (each built just before it is made)."""
        return [
            self.rewrite_alpha_in_place,
            self.rename_bravo_away,
            self.break_charlie,
            self.rewrite_alpha_by_rename,
            self.rename_bravo_back,
            self.fix_charlie,
            self.rewrite_bravo_by_rename,
            self.break_charlie,
            self.rewrite_alpha_in_place,
            self.fix_charlie,
            self.break_charlie,
            self.fix_charlie,
        ]


# -- the test -------------------------------------------------------------------


@pytest.fixture
def gw(tmp_path: Path, mock: MockProcess) -> Iterator[ReloadGateway]:
    gateway = ReloadGateway(tmp_path, mock)
    yield gateway
    gateway.stop()


def _summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (
        f"{name}: n={len(values)} median {statistics.median(values):.0f} ms, "
        f"p90 {p90:.0f} ms, max {max(values):.0f} ms"
    )


def test_reload_under_load(gw: ReloadGateway) -> None:
    churn = Churn(gw)
    gw.write("alpha.yaml", churn.alpha)
    gw.write("bravo.yaml", churn.bravo)
    gw.write("charlie.yaml", churn.charlie)
    gw.start()
    # Streams on A last ~175 ms (8 tokens, 25 ms apart), so reloads land mid-stream.
    gw.mock.fault("delay", stream=True, token_delay_ms=25, count=None)
    traffic = Traffic()
    clients = [
        threading.Thread(target=_plain_client, args=(gw, traffic), name="plain"),
        threading.Thread(target=_stream_client, args=(gw, traffic, 0), name="stream-1"),
        threading.Thread(target=_stream_client, args=(gw, traffic, 1), name="stream-2"),
    ]
    for client in clients:
        client.start()
    latencies: dict[str, list[float]] = {}
    published: list[float] = []  # when each change was seen applied (monotonic)
    changes = 0
    try:
        wait_until(lambda: traffic.plain_ok and traffic.streams_ok, timeout=BOUND_S)
        generation = gw.generation()
        for _ in range(ROUNDS):
            for make in churn.round():
                change = make()
                change.apply()
                landed = time.monotonic()
                status = gw.wait_status(change.applied)
                seen = time.monotonic()
                assert status["generation"] > generation, change.kind
                generation = status["generation"]
                latencies.setdefault(change.kind.split(" (")[0], []).append((seen - landed) * 1000)
                published.append(seen)
                change.after(status)
                changes += 1
        # Some traffic after the last change, too.
        served = traffic.plain_ok + traffic.streams_ok
        wait_until(lambda: traffic.plain_ok + traffic.streams_ok > served + 2, timeout=BOUND_S)
    finally:
        traffic.stop.set()
        for client in clients:
            client.join(timeout=30)

    assert changes >= 50
    assert traffic.failures == [], traffic.failures[:5]
    status = gw.status()
    assert status["degraded"] is False
    assert {name: (f["state"], f["digest"]) for name, f in status["files"].items()} == {
        "alpha.yaml": ("active", digest(churn.alpha)),
        "bravo.yaml": ("active", digest(churn.bravo)),
        "charlie.yaml": ("active", digest(churn.charlie)),
    }
    assert gw.chat("alpha") == MODELS[alpha_deployment(churn.alpha_version)]
    # The settle delay: a file rewritten in place was never read half-written.
    assert gw.rejections("alpha.yaml") == gw.rejections("bravo.yaml") == []
    assert gw.chat("bravo") == MODELS["gpt-4.1-mini"]
    assert gw.chat("charlie") == MODELS["gpt-4o"]
    crossing = sum(1 for start, end in traffic.streams if any(start < at < end for at in published))
    assert traffic.plain_ok >= 50 and traffic.streams_ok >= 30, traffic
    assert crossing >= 5, f"only {crossing} streams were open across a reload"

    every = [value for values in latencies.values() for value in values]
    print(
        f"\nreload under load: {changes} changes, {traffic.plain_ok} plain requests and "
        f"{traffic.streams_ok} streams on route A, 0 failed; {crossing} streams spanned a reload"
    )
    print(_summary("change -> status shows it", every))
    over = sum(1 for value in every if value > TARGET_MS)
    print(f"  over the {TARGET_MS} ms product target: {over} of {len(every)}")
    for kind, values in latencies.items():
        print("  " + _summary(kind, values))
