"""Hot reload, end to end: a real ``aigw serve`` of its own conf.d, driven by file operations.

Each test starts its own gateway (``--state-dir`` in the test's tmp dir, admin on an ephemeral
port) in front of the session's Azure mock, changes files the way people and tools do, and
waits on the admin ``/status`` document for the change to apply, within `BOUND_S`. The product
target is 300 ms (measured by ``bench/bench_reload.py``); the bound here is loose for noisy CI.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AzureOpenAI

from tests.integration.conftest import GATEWAY_ENV, _chat, route_yaml
from tests.integration.harness import GatewayProcess, MockProcess, run_check, wait_until
from tests.integration.test_sdk import QUESTION, sync_client

BOUND_S = 3.0
"""How long a test waits for a change to go live (the product target is 0.3 s)."""

MODELS = {"gpt-4o": "gpt-4o-2024-11-20", "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14"}
OLD, NEW = MODELS["gpt-4o"], MODELS["gpt-4.1-mini"]
SHARED = "/openai/deployments/shared/chat/completions"
UNSET_VAR = "AIGW_TEST_RELOAD_UNSET_VARIABLE"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def shared_route(name: str, deployment: str) -> str:
    """A route file claiming `SHARED` (the SDK's ``model="shared"``) under route *name*."""
    return route_yaml(name, SHARED, model="shared", deployment=deployment)


class ReloadGateway:
    """``aigw serve`` over a conf dir of its own, with a state dir; restartable."""

    def __init__(self, root: Path, mock: MockProcess) -> None:
        self.conf = root / "conf.d"
        self.state = root / "state"
        self.conf.mkdir()
        self.mock = mock
        self._proc: GatewayProcess | None = None
        self._client: AzureOpenAI | None = None

    # -- process ------------------------------------------------------------

    def start(self, *extra: str, process: type[GatewayProcess] = GatewayProcess) -> GatewayProcess:
        self._proc = process(
            self.conf,
            "--azure-base-url",
            self.mock.url,
            "--state-dir",
            str(self.state),
            *extra,
            env=GATEWAY_ENV,
        )
        self._client = None
        return self._proc

    @property
    def proc(self) -> GatewayProcess:
        assert self._proc is not None, "not started"
        return self._proc

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.close()
            self._proc = None

    # -- files --------------------------------------------------------------

    def write(self, name: str, text: str) -> None:
        """Writes *name* in place (truncate, write, close), as most editors and scripts do."""
        (self.conf / name).write_text(text)

    # -- observing ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.proc.status()

    def generation(self) -> int:
        generation: int = self.status()["generation"]
        return generation

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = BOUND_S
    ) -> dict[str, Any]:
        """The first status document that satisfies *predicate*, polled every 10 ms."""

        def check() -> dict[str, Any] | None:
            status = self.status()
            return status if predicate(status) else None

        try:
            result: dict[str, Any] = wait_until(check, timeout=timeout, interval=0.01)
        except AssertionError:
            raise AssertionError(
                f"status never matched within {timeout}s; last: {self.status()}"
            ) from None
        return result

    def wait_file(
        self, name: str, state: str, text: str, timeout: float = BOUND_S
    ) -> dict[str, Any]:
        """Waits until *name* is in *state* with *text* (its serving version) live."""

        def ok(status: dict[str, Any]) -> bool:
            file = status["files"].get(name)
            return file is not None and file["state"] == state and file["digest"] == digest(text)

        return self.wait_status(ok, timeout)

    def wait_active(self, name: str, text: str, timeout: float = BOUND_S) -> dict[str, Any]:
        """Waits until *text* is what *name* serves, with no error."""
        return self.wait_file(name, "active", text, timeout)

    def events(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.proc.events() if e.get("event") == event]

    def rejections(self, name: str) -> list[dict[str, Any]]:
        """The ``config_rejected`` events of file *name*."""
        return [e for e in self.events("config_rejected") if Path(e["file"]).name == name]

    def unchanged_reloads(self) -> float:
        """How many reloads found nothing to change (from the admin ``/metrics``)."""
        assert self.proc.admin_url is not None
        with urllib.request.urlopen(self.proc.admin_url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        found = re.search(r'^aigw_config_reloads_total\{result="unchanged"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    # -- traffic ------------------------------------------------------------

    @property
    def client(self) -> AzureOpenAI:
        if self._client is None:
            self._client = sync_client(self.proc, max_retries=0)
        return self._client

    def chat(self, model: str) -> str:
        """The upstream model that answers a chat request for deployment *model*."""
        return self.client.chat.completions.create(model=model, messages=QUESTION).model

    def assert_no_route(self, model: str) -> None:
        with pytest.raises(openai.NotFoundError) as info:
            self.chat(model)
        assert info.value.code == "route_not_found"


@pytest.fixture
def gw(tmp_path: Path, mock: MockProcess) -> Iterator[ReloadGateway]:
    gateway = ReloadGateway(tmp_path, mock)
    yield gateway
    gateway.stop()


def last_reload(gw: ReloadGateway) -> dict[str, Any]:
    return gw.events("config_reload")[-1]


# -- add, change, delete ------------------------------------------------------


def test_added_file_goes_live(gw: ReloadGateway) -> None:
    gw.start()
    gw.assert_no_route("alpha")
    generation = gw.generation()
    text = _chat("alpha")
    gw.write("alpha.yaml", text)
    status = gw.wait_active("alpha.yaml", text)
    assert status["generation"] == generation + 1
    assert status["last_reload"]["trigger"] == "watch"
    assert status["last_reload"]["published"] is True
    assert status["last_reload"]["at"] is not None
    assert gw.chat("alpha") == OLD
    event = last_reload(gw)
    assert event["trigger"] == "watch" and event["generation"] == generation + 1
    assert event["added"] == ["alpha.yaml"]
    assert event["changed"] == event["removed"] == event["rejected"] == []
    assert event["routes"] == 1 and event["build_ms"] >= 0


def test_changed_file_routes_to_its_new_deployment(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", _chat("alpha", deployment="gpt-4o"))
    gw.start()
    assert gw.chat("alpha") == OLD
    text = _chat("alpha", deployment="gpt-4.1-mini")
    gw.write("alpha.yaml", text)
    gw.wait_active("alpha.yaml", text)
    gw.mock.reset()
    assert gw.chat("alpha") == NEW
    assert gw.mock.requests()[0]["path"] == "/openai/deployments/gpt-4.1-mini/chat/completions"
    assert last_reload(gw)["changed"] == ["alpha.yaml"]


def test_deleted_file_stops_serving(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", _chat("alpha"))
    gw.write("bravo.yaml", _chat("bravo"))
    gw.start()
    assert gw.chat("bravo") == OLD
    assert (gw.state / "lkg" / "bravo.yaml").exists()
    (gw.conf / "bravo.yaml").unlink()
    status = gw.wait_status(lambda s: "bravo.yaml" not in s["files"])
    assert status["routes"] == 1
    gw.assert_no_route("bravo")
    assert gw.chat("alpha") == OLD
    assert last_reload(gw)["removed"] == ["bravo.yaml"]
    assert not (gw.state / "lkg" / "bravo.yaml").exists()


def test_change_right_after_start_up_is_not_missed(gw: ReloadGateway) -> None:
    """A file written the moment the gateway says ``listening`` (a deploy racing a restart)."""
    text = _chat("bravo")
    conf = gw.conf

    class WritesWhenListening(GatewayProcess):
        def _listening(self) -> dict[str, Any] | None:
            deadline = time.monotonic() + 20
            while (event := super()._listening()) is None and time.monotonic() < deadline:
                time.sleep(0.001)  # much tighter than the harness's 20 ms
            if event is not None:
                (conf / "bravo.yaml").write_text(text)
            return event

    gw.write("alpha.yaml", _chat("alpha"))
    gw.start(process=WritesWhenListening)
    gw.wait_active("bravo.yaml", text)
    assert gw.chat("bravo") == OLD


# -- broken files: last known good --------------------------------------------

BROKEN: dict[str, tuple[Callable[[str], str], str]] = {
    # The broken version would also move the route to gpt-4.1-mini if it were taken.
    "yaml-syntax": (
        lambda text: text.replace("  methods: [POST]\n", "  methods: [POST\n"),
        r"alpha\.yaml:\d+:\d+: invalid YAML",
    ),
    "unknown-key": (
        lambda text: text.replace("header_value:", "header_vaule:"),
        r"alpha\.yaml:\d+:\d+: .*unknown key `header_vaule`; did you mean `header_value`\?",
    ),
    "unset-variable": (
        lambda text: text.replace("${AZURE_OPENAI_KEY}", "${" + UNSET_VAR + "}"),
        rf"alpha\.yaml:\d+:\d+: .*environment variable `{UNSET_VAR}` is not set",
    ),
    "missing-field": (
        lambda text: text.split("          model:\n")[0],
        r"alpha\.yaml:\d+:\d+: .*missing required key `model`",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_change_keeps_the_last_known_good_serving(gw: ReloadGateway, case: str) -> None:
    break_, error_pattern = BROKEN[case]
    good = _chat("alpha", deployment="gpt-4o")
    gw.write("alpha.yaml", good)
    gw.write("bravo.yaml", _chat("bravo", deployment="gpt-4o"))
    gw.start()
    broken = break_(_chat("alpha", deployment="gpt-4.1-mini"))
    bravo_new = _chat("bravo", deployment="gpt-4.1-mini")
    # One deploy, two files: the broken one is refused, the other one's change applies.
    gw.write("alpha.yaml", broken)
    gw.write("bravo.yaml", bravo_new)
    status = gw.wait_status(
        lambda s: (
            s["files"]["alpha.yaml"]["state"] == "lkg"
            and s["files"]["bravo.yaml"]["digest"] == digest(bravo_new)
        )
    )
    alpha = status["files"]["alpha.yaml"]
    assert alpha["digest"] == digest(good)
    assert alpha["route"] == "alpha"
    assert any(re.search(error_pattern, line) for line in alpha["error"]), alpha["error"]
    assert status["degraded"] is True
    assert status["files"]["bravo.yaml"]["state"] == "active"
    assert gw.chat("alpha") == OLD  # the last known good version
    assert gw.chat("bravo") == NEW
    # The log says so too: one config_rejected, and the reload lists the refusal.
    (rejected,) = gw.rejections("alpha.yaml")
    assert any(re.search(error_pattern, issue) for issue in rejected["issues"])
    assert rejected["serving"] == "last known good"
    (reload_event,) = [
        e
        for e in gw.events("config_reload")
        if any(Path(r["file"]).name == "alpha.yaml" for r in e["rejected"])
    ]
    assert reload_event["generation"] == rejected["generation"]
    assert reload_event["changed"] in (["alpha.yaml"], ["alpha.yaml", "bravo.yaml"])
    assert reload_event["degraded"] is True
    # A restart would also serve the good version: the broken one is never stored.
    assert (gw.state / "lkg" / "alpha.yaml").read_text() == good

    fixed = _chat("alpha", deployment="gpt-4.1-mini")
    gw.write("alpha.yaml", fixed)
    status = gw.wait_active("alpha.yaml", fixed)
    assert status["degraded"] is False
    assert status["files"]["alpha.yaml"]["error"] is None
    assert gw.chat("alpha") == NEW


def test_new_broken_file_serves_nothing_until_fixed(gw: ReloadGateway) -> None:
    gw.write("bravo.yaml", _chat("bravo"))
    gw.start()
    broken = _chat("alpha").replace("header_value:", "header_vaule:")
    gw.write("alpha.yaml", broken)
    status = gw.wait_status(lambda s: "alpha.yaml" in s["files"])
    alpha = status["files"]["alpha.yaml"]
    assert alpha["state"] == "rejected"
    assert alpha["route"] is None and alpha["digest"] is None
    assert any("header_vaule" in line for line in alpha["error"])
    assert status["degraded"] is True
    gw.assert_no_route("alpha")
    (rejected,) = gw.rejections("alpha.yaml")
    assert rejected["serving"] == "nothing"

    fixed = _chat("alpha")
    gw.write("alpha.yaml", fixed)
    status = gw.wait_active("alpha.yaml", fixed)
    assert status["degraded"] is False
    assert gw.chat("alpha") == OLD
    assert gw.chat("bravo") == OLD


def test_rejection_log_names_what_serves_for_that_very_file(gw: ReloadGateway) -> None:
    """``a.yaml`` falls back to its LKG; ``ba.yaml`` (a name ending in ``a.yaml``) has none."""
    good = _chat("alpha")
    gw.write("a.yaml", good)
    gw.start()
    gw.write("a.yaml", good.replace("header_value:", "header_vaule:"))
    gw.write("ba.yaml", _chat("bravo").replace("header_value:", "header_vaule:"))
    gw.wait_status(
        lambda s: (
            s["files"]["a.yaml"]["state"] == "lkg"
            and s["files"].get("ba.yaml", {}).get("state") == "rejected"
        )
    )
    assert [e["serving"] for e in gw.rejections("a.yaml")] == ["last known good"]
    assert [e["serving"] for e in gw.rejections("ba.yaml")] == ["nothing"]


@pytest.mark.parametrize("existing", [True, False], ids=["existing-file", "new-file"])
def test_half_written_file_never_serves(gw: ReloadGateway, existing: bool) -> None:
    """A writer that stalls mid-file: the half that parses is refused, the whole file is taken.

    The first half is valid YAML without the ``model`` section; the writer resumes only once
    the gateway has read (and refused) it, so the half is certain to have been seen.
    """
    old = _chat("alpha", deployment="gpt-4o")
    if existing:
        gw.write("alpha.yaml", old)
    gw.start()
    new = _chat("alpha", deployment="gpt-4.1-mini")
    head, tail = new.split("          model:\n")
    tail = "          model:\n" + tail
    outcomes: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        client = sync_client(gw.proc, max_retries=0)
        while not stop.is_set():
            try:
                outcomes.append(
                    client.chat.completions.create(model="alpha", messages=QUESTION).model
                )
            except openai.NotFoundError:
                outcomes.append("404")
            except Exception as exc:
                outcomes.append(f"error: {exc!r}")

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        with open(gw.conf / "alpha.yaml", "w") as handle:
            handle.write(head)
            handle.flush()
            if existing:
                half = gw.wait_file("alpha.yaml", "lkg", old)
            else:
                half = gw.wait_status(lambda s: "alpha.yaml" in s["files"])
                assert half["files"]["alpha.yaml"]["state"] == "rejected"
            handle.write(tail)
        gw.wait_active("alpha.yaml", new)
        seen = len(outcomes)
        wait_until(lambda: len(outcomes) > seen + 2, timeout=BOUND_S)
    finally:
        stop.set()
        thread.join()
    errors = half["files"]["alpha.yaml"]["error"]
    assert any("missing required key `model`" in line for line in errors), errors
    before = OLD if existing else "404"
    assert set(outcomes) <= {before, NEW}, set(outcomes)
    switched = outcomes.index(NEW)
    assert set(outcomes[:switched]) <= {before} and set(outcomes[switched:]) == {NEW}
    assert gw.chat("alpha") == NEW


# -- path conflicts -----------------------------------------------------------


@pytest.mark.parametrize("newcomer", ["0-new.yaml", "z-new.yaml"])
def test_path_conflict_rejects_the_newcomer_whatever_its_name(
    gw: ReloadGateway, newcomer: str
) -> None:
    gw.write("m.yaml", shared_route("incumbent", "gpt-4o"))
    gw.start()
    gw.write(newcomer, shared_route("newcomer", "gpt-4.1-mini"))
    status = gw.wait_status(lambda s: newcomer in s["files"])
    file = status["files"][newcomer]
    assert file["state"] == "rejected"
    assert any(
        f"POST {SHARED} is already claimed by" in line and line.endswith("m.yaml")
        for line in file["error"]
    ), file["error"]
    assert status["files"]["m.yaml"]["state"] == "active"
    assert status["degraded"] is True
    assert gw.chat("shared") == OLD
    (rejected,) = gw.rejections(newcomer)
    assert any("already claimed" in issue for issue in rejected["issues"])


def test_path_conflict_at_start_up_goes_to_the_lexically_first_file(gw: ReloadGateway) -> None:
    gw.write("b-second.yaml", shared_route("second", "gpt-4.1-mini"))
    gw.write("a-first.yaml", shared_route("first", "gpt-4o"))
    gw.start()
    status = gw.status()
    assert status["files"]["a-first.yaml"]["state"] == "active"
    assert status["files"]["b-second.yaml"]["state"] == "rejected"
    assert gw.chat("shared") == OLD


def test_sighup_does_not_hand_an_incumbents_path_to_a_rejected_newcomer(
    gw: ReloadGateway,
) -> None:
    """A forced reload re-reads every file; it must not reorder who owns a path."""
    gw.write("m.yaml", shared_route("incumbent", "gpt-4o"))
    gw.start()
    gw.write("0-new.yaml", shared_route("newcomer", "gpt-4.1-mini"))
    generation = gw.wait_status(lambda s: "0-new.yaml" in s["files"])["generation"]
    gw.proc.proc.send_signal(signal.SIGHUP)
    status = gw.wait_status(lambda s: s["generation"] > generation)
    assert status["last_reload"]["trigger"] == "sighup"
    assert gw.chat("shared") == OLD
    assert status["files"]["m.yaml"]["state"] == "active"
    assert status["files"]["0-new.yaml"]["state"] == "rejected"


def test_incumbent_changed_in_the_same_deploy_as_a_newcomer_keeps_its_path(
    gw: ReloadGateway,
) -> None:
    """One reload: the incumbent gets a new version and a newcomer claims the same path.

    Without the watcher (``systemctl reload`` after a deploy), so that both changes are
    certainly in one reload; a burst seen by the watcher does the same.
    """
    gw.write("m.yaml", shared_route("incumbent", "gpt-4o"))
    gw.start("--no-watch")
    gw.write("0-new.yaml", shared_route("newcomer", "gpt-4o"))
    gw.write("m.yaml", shared_route("incumbent", "gpt-4.1-mini"))
    gw.proc.proc.send_signal(signal.SIGHUP)
    status = gw.wait_status(lambda s: "0-new.yaml" in s["files"])
    assert status["files"]["m.yaml"]["state"] == "active", status["files"]
    assert status["files"]["0-new.yaml"]["state"] == "rejected"
    assert gw.chat("shared") == NEW


def test_active_file_cannot_take_the_path_of_another_active_file_changed_with_it(
    gw: ReloadGateway,
) -> None:
    """One reload: ``a.yaml`` moves onto the path ``m.yaml`` serves while ``m.yaml`` changes too.

    ``m.yaml`` was active on the path, so it keeps it (with its new version); ``a.yaml``'s new
    version is refused and its last known good version keeps serving its old path.
    """
    gw.write("a.yaml", _chat("alpha", deployment="gpt-4o"))
    gw.write("m.yaml", shared_route("incumbent", "gpt-4o"))
    gw.start("--no-watch")
    generation = gw.generation()
    gw.write("a.yaml", shared_route("alpha", "gpt-4o"))
    gw.write("m.yaml", shared_route("incumbent", "gpt-4.1-mini"))
    gw.proc.proc.send_signal(signal.SIGHUP)
    status = gw.wait_status(lambda s: s["generation"] > generation)
    assert status["files"]["m.yaml"]["state"] == "active", status["files"]
    assert status["files"]["a.yaml"]["state"] == "lkg", status["files"]
    assert gw.chat("shared") == NEW
    assert gw.chat("alpha") == OLD


def test_conflict_loser_takes_the_path_once_the_incumbent_is_gone(gw: ReloadGateway) -> None:
    """The refusal was about the other file; with it gone, the directory is valid as it is."""
    gw.write("m.yaml", shared_route("incumbent", "gpt-4o"))
    gw.start()
    gw.write("z-new.yaml", shared_route("newcomer", "gpt-4.1-mini"))
    gw.wait_status(lambda s: "z-new.yaml" in s["files"])
    (gw.conf / "m.yaml").unlink()
    status = gw.wait_status(lambda s: "m.yaml" not in s["files"])
    assert gw.chat("shared") == NEW, status["files"]


def test_check_reports_a_path_conflict(tmp_path: Path) -> None:
    """``aigw check`` shares the reload code: same winner, same message, exit 1."""
    (tmp_path / "m.yaml").write_text(shared_route("incumbent", "gpt-4o"))
    (tmp_path / "z.yaml").write_text(shared_route("newcomer", "gpt-4.1-mini"))
    result = run_check(tmp_path, {**os.environ, **GATEWAY_ENV})
    assert result.returncode == 1
    assert "1 route(s) accepted, 1 file(s) rejected" in result.stdout
    assert f"incumbent  ({tmp_path / 'm.yaml'})" in result.stdout
    (error,) = result.stderr.splitlines()
    assert error == (
        f"error: {tmp_path / 'z.yaml'}: route.paths: {tmp_path / 'z.yaml'}: "
        f"POST {SHARED} is already claimed by {tmp_path / 'm.yaml'}"
    )


# -- no-op changes and editor droppings ----------------------------------------


def test_touch_or_identical_rewrite_rebuilds_nothing(gw: ReloadGateway) -> None:
    text = _chat("alpha")
    gw.write("alpha.yaml", text)
    gw.start()
    generation = gw.generation()
    reloads = len(gw.events("config_reload"))
    unchanged = gw.unchanged_reloads()
    os.utime(gw.conf / "alpha.yaml")
    wait_until(lambda: gw.unchanged_reloads() > unchanged, timeout=BOUND_S)
    unchanged = gw.unchanged_reloads()
    gw.write("alpha.yaml", text)
    wait_until(lambda: gw.unchanged_reloads() > unchanged, timeout=BOUND_S)
    assert gw.generation() == generation
    assert len(gw.events("config_reload")) == reloads
    assert gw.chat("alpha") == OLD
    # A barrier: the next real change is applied after everything above was seen.
    sentinel = _chat("bravo")
    gw.write("bravo.yaml", sentinel)
    assert gw.wait_active("bravo.yaml", sentinel)["generation"] == generation + 1
    assert last_reload(gw)["added"] == ["bravo.yaml"]
    assert last_reload(gw)["changed"] == []


def test_editor_droppings_are_ignored(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", _chat("alpha"))
    gw.start()
    generation = gw.generation()
    garbage = "route: [this is not a route\n"
    for dropping in (".alpha.yaml.swp", ".alpha.yaml.swx", "alpha.yaml~", "4913", ".#alpha.yaml"):
        gw.write(dropping, garbage)
    (gw.conf / "4913").unlink()  # vim's probe lives for a moment
    # A barrier: the next real change is applied after everything above was seen.
    sentinel = _chat("bravo")
    gw.write("bravo.yaml", sentinel)
    status = gw.wait_active("bravo.yaml", sentinel)
    assert status["generation"] == generation + 1
    assert set(status["files"]) == {"alpha.yaml", "bravo.yaml"}
    assert status["degraded"] is False
    event = last_reload(gw)
    assert (event["added"], event["changed"], event["rejected"]) == (["bravo.yaml"], [], [])
    assert gw.events("config_rejected") == []


# -- deployment patterns ------------------------------------------------------


@pytest.mark.parametrize("temporary", [".alpha.yaml.tmp", "sedX4kQ2z"])
def test_write_temp_then_rename(gw: ReloadGateway, temporary: str) -> None:
    gw.write("alpha.yaml", _chat("alpha", deployment="gpt-4o"))
    gw.start()
    new = _chat("alpha", deployment="gpt-4.1-mini")
    gw.write(temporary, new)
    os.rename(gw.conf / temporary, gw.conf / "alpha.yaml")
    status = gw.wait_active("alpha.yaml", new)
    assert set(status["files"]) == {"alpha.yaml"}
    assert gw.chat("alpha") == NEW
    assert gw.events("config_rejected") == []


def test_delete_then_create(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", _chat("alpha", deployment="gpt-4o"))
    gw.start()
    new = _chat("alpha", deployment="gpt-4.1-mini")
    (gw.conf / "alpha.yaml").unlink()
    gw.write("alpha.yaml", new)
    status = gw.wait_active("alpha.yaml", new)
    assert status["degraded"] is False
    assert gw.chat("alpha") == NEW
    assert (gw.state / "lkg" / "alpha.yaml").read_text() == new


def test_burst_of_30_files_is_one_reload(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", _chat("alpha"))
    gw.start()
    generation = gw.generation()
    names = [f"burst-{i:02}" for i in range(30)]
    started = time.monotonic()
    for name in names:
        gw.write(f"{name}.yaml", _chat(name, deployment="gpt-4.1-mini"))
    status = gw.wait_status(
        lambda s: s["routes"] == 31 and all(f["state"] == "active" for f in s["files"].values())
    )
    elapsed = time.monotonic() - started
    assert status["generation"] - generation <= 2, status["generation"] - generation
    assert len(gw.events("config_reload")) - 1 <= 2
    assert gw.chat(names[0]) == gw.chat(names[-1]) == NEW
    reloads = status["generation"] - generation
    print(f"\n30-file burst live in {elapsed * 1000:.0f} ms, {reloads} reload(s)")


def _configmap_swap(conf: Path, stamp: str, files: dict[str, str]) -> None:
    """What the kubelet does on a ConfigMap update (atomic_writer.go), step by step."""
    data = conf / stamp
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    old = os.readlink(conf / "..data") if (conf / "..data").is_symlink() else None
    os.symlink(stamp, conf / "..data_tmp")
    os.rename(conf / "..data_tmp", conf / "..data")
    for name in files:
        if not (conf / name).is_symlink():
            os.symlink(f"..data/{name}", conf / name)
    for entry in conf.iterdir():
        if entry.is_symlink() and not entry.name.startswith(".") and entry.name not in files:
            entry.unlink()
    if old is not None:
        shutil.rmtree(conf / old)


def test_kubernetes_configmap_symlink_swap(gw: ReloadGateway) -> None:
    first = _chat("gpt", deployment="gpt-4o")
    _configmap_swap(gw.conf, "..2026_11_25_00_00_00.1", {"gpt.yaml": first})
    gw.start()
    assert gw.chat("gpt") == OLD

    second = _chat("gpt", deployment="gpt-4.1-mini")
    _configmap_swap(gw.conf, "..2026_11_25_00_05_00.2", {"gpt.yaml": second})
    status = gw.wait_active("gpt.yaml", second)
    assert set(status["files"]) == {"gpt.yaml"}
    assert gw.chat("gpt") == NEW

    # A key added and a key removed in one update.
    other = _chat("other")
    _configmap_swap(gw.conf, "..2026_11_25_00_10_00.3", {"other.yaml": other})
    status = gw.wait_active("other.yaml", other)
    status = gw.wait_status(lambda s: set(s["files"]) == {"other.yaml"})
    gw.assert_no_route("gpt")
    assert gw.chat("other") == OLD
    assert gw.events("config_rejected") == []


# -- SIGHUP and restarts ------------------------------------------------------


def test_sighup_forces_a_full_reload(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", _chat("alpha", deployment="gpt-4o"))
    gw.start("--no-watch")
    generation = gw.generation()
    new = _chat("alpha", deployment="gpt-4.1-mini")
    gw.write("alpha.yaml", new)  # not watched: nothing happens until SIGHUP
    gw.proc.proc.send_signal(signal.SIGHUP)
    status = gw.wait_active("alpha.yaml", new)
    assert status["generation"] == generation + 1
    assert status["last_reload"]["trigger"] == "sighup"
    assert gw.chat("alpha") == NEW
    # With nothing changed, SIGHUP still rebuilds and publishes.
    gw.proc.proc.send_signal(signal.SIGHUP)
    status = gw.wait_status(lambda s: s["generation"] == generation + 2)
    assert status["last_reload"]["trigger"] == "sighup"
    event = last_reload(gw)
    assert event["trigger"] == "sighup" and event["generation"] == generation + 2
    assert gw.chat("alpha") == NEW


def test_restart_with_a_broken_file_serves_its_last_known_good(gw: ReloadGateway) -> None:
    good = _chat("alpha", deployment="gpt-4o")
    gw.write("alpha.yaml", good)
    gw.write("bravo.yaml", _chat("bravo"))
    gw.start()
    gw.stop()
    stored = (gw.state / "lkg" / "alpha.yaml").read_text()
    assert stored == good  # unresolved: no secret in the state dir
    assert GATEWAY_ENV["AZURE_OPENAI_KEY"] not in stored

    gw.write("alpha.yaml", _chat("alpha", deployment="gpt-4.1-mini").replace("route:", "route: ["))
    gw.start()
    status = gw.status()
    assert status["degraded"] is True
    alpha = status["files"]["alpha.yaml"]
    assert alpha["state"] == "lkg" and alpha["digest"] == digest(good)
    assert any(re.search(r"alpha\.yaml:\d+:\d+: ", line) for line in alpha["error"])
    assert gw.chat("alpha") == OLD
    assert gw.chat("bravo") == OLD
    (rejected,) = gw.rejections("alpha.yaml")
    assert rejected["serving"] == "last known good"


def test_restart_after_a_delete_while_down_drops_the_route(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", _chat("alpha"))
    gw.write("bravo.yaml", _chat("bravo"))
    gw.start()
    gw.stop()
    (gw.conf / "bravo.yaml").unlink()
    gw.start()
    status = gw.status()
    assert set(status["files"]) == {"alpha.yaml"}
    assert status["degraded"] is False
    gw.assert_no_route("bravo")
    assert gw.chat("alpha") == OLD
    assert not (gw.state / "lkg" / "bravo.yaml").exists()


# -- in-flight streams --------------------------------------------------------


def _upstream_ports(pid: int, upstream_port: int) -> set[int]:
    """Local ports of *pid*'s established TCP connections to 127.0.0.1:*upstream_port*."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and int(remote.split(":")[1], 16) == upstream_port and inode in inodes:
            ports.add(int(local.split(":")[1], 16))
    return ports


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_upstream_connections_survive_a_reload(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", _chat("alpha", deployment="gpt-4o"))
    gw.start()
    assert gw.chat("alpha") == OLD
    before = _upstream_ports(gw.proc.proc.pid, gw.mock.port)
    assert len(before) == 1, before  # one keep-alive connection to the mock
    new = _chat("alpha", deployment="gpt-4.1-mini")
    gw.write("alpha.yaml", new)
    gw.wait_active("alpha.yaml", new)
    assert gw.chat("alpha") == NEW
    assert gw.chat("alpha") == NEW
    # The new table's routes went out on the very connection the old table's route opened.
    assert _upstream_ports(gw.proc.proc.pid, gw.mock.port) == before


@pytest.mark.parametrize("change", ["rewrite", "delete"])
def test_stream_opened_before_a_reload_finishes_on_its_old_route(
    gw: ReloadGateway, change: str, request_id: str
) -> None:
    gw.write("alpha.yaml", _chat("alpha", deployment="gpt-4o"))
    gw.start()
    generation = gw.generation()
    gw.mock.fault("delay", deployment="gpt-4o", stream=True, token_delay_ms=250)  # ~1.75 s
    stream = gw.client.chat.completions.create(
        model="alpha",
        messages=QUESTION,
        stream=True,
        extra_headers={"x-request-id": request_id},
    )
    chunks = [next(stream)]
    if change == "rewrite":
        new = _chat("alpha", deployment="gpt-4.1-mini")
        gw.write("alpha.yaml", new)
        gw.wait_active("alpha.yaml", new)
        assert gw.chat("alpha") == NEW
    else:
        (gw.conf / "alpha.yaml").unlink()
        gw.wait_status(lambda s: "alpha.yaml" not in s["files"])
        gw.assert_no_route("alpha")
    (upstream,) = [r for r in gw.mock.requests() if r["stream"]]
    assert upstream["ended_at"] is None, "the stream ended before the reload: slow machine?"
    chunks += list(stream)
    assert {c.model for c in chunks if c.choices} == {OLD}
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    line = gw.proc.access_log(request_id)
    assert (line["status"], line["outcome"], line["generation"]) == (200, "ok", generation)
    assert line["deployment"] == "gpt-4o"
    upstream = next(r for r in gw.mock.requests() if r["stream"])
    assert upstream["stream_outcome"] == "completed"
