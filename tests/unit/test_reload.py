"""The reloader on its own: per-file last known good, incumbents, no-op reloads, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from aigw.config.errors import ConfigDirectoryError
from aigw.lkg import LastKnownGood
from aigw.reload import Reloader
from aigw.route import CompiledRoute
from aigw.table import RouteTable

ENV = {"KEY": "azure-key-123456", "INSTANCE": "res"}


def route_file(name: str, deployment: str = "gpt-4o", path: str | None = None) -> str:
    path = path or f"/openai/deployments/{name}/chat/completions"
    return f"""route:
  name: {name}
  paths: [{path}]
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: llm/v1/chat
          auth: {{header_name: api-key, header_value: "${{KEY}}"}}
          model:
            provider: azure
            name: {name}
            options: {{azure_instance: "${{INSTANCE}}", azure_deployment_id: {deployment}}}
"""


class Published:
    def __init__(self) -> None:
        self.tables: list[RouteTable] = []

    def __call__(self, table: RouteTable) -> None:
        self.tables.append(table)


def reloader(
    conf: Path, state: Path | None = None, env: dict[str, str] | None = None
) -> tuple[Reloader, Published]:
    published = Published()
    store = LastKnownGood(state) if state is not None else None
    return Reloader(conf, {**ENV, **(env or {})}, publish=published, store=store), published


def served(r: Reloader) -> dict[str, str | None]:
    """Route name -> upstream deployment, as the current table serves them."""
    assert r.table is not None
    return {route.name: route.target.deployment for route in r.table.routes}


def states(r: Reloader) -> dict[str, str]:
    return {f.name: f.state for f in r.files()}


async def test_initial_load_and_unchanged_reload_publishes_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    r, published = reloader(tmp_path)
    report = r.load_initial()
    assert report.published and report.generation == 1 and report.added == ("a.yaml",)
    (tmp_path / "a.yaml").write_text(route_file("a"))  # same bytes, new mtime
    report = await r.reload("watch")
    assert not report.published and r.generation == 1
    assert len(published.tables) == 1


async def test_change_add_remove(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    r, _ = reloader(tmp_path)
    r.load_initial()
    (tmp_path / "a.yaml").write_text(route_file("a", deployment="gpt-4.1-mini"))
    (tmp_path / "b.yaml").write_text(route_file("b"))
    report = await r.reload("watch")
    assert (report.added, report.changed, report.generation) == (("b.yaml",), ("a.yaml",), 2)
    assert served(r) == {"a": "gpt-4.1-mini", "b": "gpt-4o"}
    (tmp_path / "a.yaml").unlink()
    report = await r.reload("watch")
    assert report.removed == ("a.yaml",)
    assert served(r) == {"b": "gpt-4o"}


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ("route: [unclosed\n", "a.yaml:"),
        (route_file("a").replace("header_value", "header_vaule"), "header_vaule"),
        (route_file("a").replace("${KEY}", "${MISSING_VAR}"), "MISSING_VAR"),
        ("route:\n  name: a\n", "plugins"),  # half-written: valid YAML, fields missing
    ],
)
async def test_broken_change_keeps_last_known_good(
    tmp_path: Path, broken: str, reason: str
) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    (tmp_path / "b.yaml").write_text(route_file("b"))
    r, _ = reloader(tmp_path)
    r.load_initial()
    (tmp_path / "a.yaml").write_text(broken)
    (tmp_path / "b.yaml").write_text(route_file("b", deployment="gpt-4.1-mini"))
    report = await r.reload("watch")
    assert served(r) == {"a": "gpt-4o", "b": "gpt-4.1-mini"}  # b's change still applies
    assert states(r) == {"a.yaml": "lkg", "b.yaml": "active"}
    (error,) = report.rejected
    assert reason in str(error)
    assert r.status()["files"]["a.yaml"]["error"] and r.degraded
    (tmp_path / "a.yaml").write_text(route_file("a", deployment="gpt-4.1-mini"))
    await r.reload("watch")
    assert states(r) == {"a.yaml": "active", "b.yaml": "active"}
    assert r.status()["degraded"] is False
    assert served(r)["a"] == "gpt-4.1-mini"


async def test_new_broken_file_is_rejected_and_serves_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    r, _ = reloader(tmp_path)
    r.load_initial()
    (tmp_path / "n.yaml").write_text("route: [\n")
    await r.reload("watch")
    assert states(r) == {"a.yaml": "active", "n.yaml": "rejected"}
    assert served(r) == {"a": "gpt-4o"}


@pytest.mark.parametrize("newcomer", ["0-new.yaml", "z-new.yaml"])
async def test_incumbent_keeps_its_path_whatever_the_names(tmp_path: Path, newcomer: str) -> None:
    shared = "/openai/deployments/shared/chat/completions"
    (tmp_path / "m.yaml").write_text(route_file("m", path=shared))
    r, _ = reloader(tmp_path)
    r.load_initial()
    (tmp_path / newcomer).write_text(route_file("new", path=shared, deployment="gpt-4.1-mini"))
    report = await r.reload("watch")
    assert served(r) == {"m": "gpt-4o"}
    assert "already claimed by" in str(report.rejected[0])
    assert str(tmp_path / "m.yaml") in str(report.rejected[0])
    assert states(r)[newcomer] == "rejected"


async def test_at_start_up_the_lexically_first_file_wins_a_conflict(tmp_path: Path) -> None:
    shared = "/openai/deployments/shared/chat/completions"
    (tmp_path / "b.yaml").write_text(route_file("b", path=shared))
    (tmp_path / "a.yaml").write_text(route_file("a", path=shared))
    r, _ = reloader(tmp_path)
    r.load_initial()
    assert served(r) == {"a": "gpt-4o"}
    assert states(r) == {"a.yaml": "active", "b.yaml": "rejected"}


async def test_changed_file_that_conflicts_keeps_its_previous_version(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    (tmp_path / "b.yaml").write_text(route_file("b"))
    r, _ = reloader(tmp_path)
    r.load_initial()
    (tmp_path / "b.yaml").write_text(route_file("b", path="/openai/deployments/a/chat/completions"))
    await r.reload("watch")
    assert served(r) == {"a": "gpt-4o", "b": "gpt-4o"}
    assert states(r) == {"a.yaml": "active", "b.yaml": "lkg"}


async def test_duplicate_route_name_is_a_conflict(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    (tmp_path / "b.yaml").write_text(route_file("a").replace("deployments/a/", "deployments/x/"))
    r, _ = reloader(tmp_path)
    report = r.load_initial()
    assert "route name `a` is already used by" in str(report.rejected[0])


async def test_force_reload_republishes_unchanged_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    r, published = reloader(tmp_path)
    r.load_initial()
    report = await r.reload("sighup", force=True)
    assert report.published and report.generation == 2
    assert report.changed == () and report.added == ()
    # Unchanged files are not recompiled: the same compiled route object serves.
    assert published.tables[0].routes[0] is published.tables[1].routes[0]


async def test_restart_with_a_broken_file_serves_its_last_known_good(tmp_path: Path) -> None:
    conf, state = tmp_path / "conf.d", tmp_path / "state"
    conf.mkdir()
    (conf / "a.yaml").write_text(route_file("a"))
    (conf / "gone.yaml").write_text(route_file("gone"))
    first, _ = reloader(conf, state)
    first.load_initial()
    (conf / "a.yaml").write_text("route: [broken\n")
    (conf / "gone.yaml").unlink()
    # The process restarts: a fresh reloader over the same state directory.
    second, _ = reloader(conf, state)
    report = second.load_initial()
    assert served(second) == {"a": "gpt-4o"}
    assert states(second) == {"a.yaml": "lkg"}
    assert second.degraded and report.rejected
    assert sorted(p.name for p in (state / "lkg").iterdir()) == ["a.yaml"]
    assert b"${KEY}" in (state / "lkg" / "a.yaml").read_bytes()  # stored unresolved


async def test_missing_directory(tmp_path: Path) -> None:
    r, _ = reloader(tmp_path / "nope")
    with pytest.raises(ConfigDirectoryError):
        r.load_initial()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.yaml").write_text(route_file("a"))
    r, _ = reloader(tmp_path / "conf")
    r.load_initial()
    (tmp_path / "conf" / "a.yaml").unlink()
    (tmp_path / "conf").rmdir()
    report = await r.reload("watch")
    assert report.error and not report.published
    assert served(r) == {"a": "gpt-4o"}  # the whole last table keeps serving


async def test_active_file_moving_onto_another_active_files_path_is_refused(
    tmp_path: Path,
) -> None:
    shared = "/openai/deployments/shared/chat/completions"
    (tmp_path / "a.yaml").write_text(route_file("a"))
    (tmp_path / "m.yaml").write_text(route_file("m", path=shared))
    r, _ = reloader(tmp_path)
    r.load_initial()
    # One batch: a.yaml moves onto m.yaml's path while m.yaml changes too.
    (tmp_path / "a.yaml").write_text(route_file("a", path=shared))
    (tmp_path / "m.yaml").write_text(route_file("m", path=shared, deployment="gpt-4.1-mini"))
    await r.reload("watch")
    assert served(r) == {"a": "gpt-4o", "m": "gpt-4.1-mini"}
    assert states(r) == {"a.yaml": "lkg", "m.yaml": "active"}


async def test_a_refused_new_file_is_not_reported_as_added(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    r, _ = reloader(tmp_path)
    r.load_initial()
    (tmp_path / "b.yaml").write_text(route_file("b").replace("header_value", "header_vaule"))
    (tmp_path / "c.yaml").write_text(route_file("c"))
    # Valid, but its path is a's: refused for the conflict.
    (tmp_path / "d.yaml").write_text(route_file("d", path="/openai/deployments/a/chat/completions"))
    with capture_logs() as logs:
        report = await r.reload("watch")
    assert report.added == ("c.yaml",)
    assert sorted(Path(e.source).name for e in report.rejected) == ["b.yaml", "d.yaml"]
    (event,) = (e for e in logs if e["event"] == "config_reload")
    assert event["added"] == ["c.yaml"]
    assert sorted(Path(e["file"]).name for e in event["rejected"]) == ["b.yaml", "d.yaml"]


# -- consumer and global plugins files -----------------------------------------


def consumer_file(username: str, *keys: str, groups: tuple[str, ...] = ("chat",)) -> str:
    credentials = "".join(f"\n    - key: {key}" for key in keys)
    acls = "".join(f"\n    - group: {group}" for group in groups)
    return (
        f"consumer:\n  username: {username}\n  keyauth_credentials:{credentials}\n  acls:{acls}\n"
    )


def plugins_file(*plugins: str) -> str:
    """A global plugins file; each of *plugins* is ``name: config-as-flow-yaml``."""
    entries = "".join(
        f"\n  - name: {name}\n    config: {config}"
        for name, config in (p.split(": ", 1) for p in plugins)
    )
    return f"plugins:{entries}\n"


KEY_AUTH = "key-auth: {key_names: [api-key]}"
ACL = "acl: {allow: [chat]}"


def who(r: Reloader, key: str) -> str | None:
    """The username *key* authenticates as in the serving table."""
    assert r.table is not None
    found = r.table.consumers.authenticate(key)
    return found[0].username if found is not None else None


def compiled(r: Reloader) -> dict[str, CompiledRoute]:
    """Route name -> compiled route object, to tell a recompile from a reuse."""
    assert r.table is not None
    return {route.name: route for route in r.table.routes}


async def test_consumer_file_added_changed_broken_and_deleted(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    r, _ = reloader(tmp_path)
    r.load_initial()
    assert r.status()["consumers"] == 0
    routes = compiled(r)
    (tmp_path / "team.yaml").write_text(consumer_file("team", "key-one"))
    with capture_logs() as logs:
        report = await r.reload("watch")
    assert report.added == ("team.yaml",) and report.consumers == 1
    assert who(r, "key-one") == "team"
    (event,) = (e for e in logs if e["event"] == "config_reload")
    assert event["consumers"] == 1 and event["routes"] == 1
    status = r.status()
    assert status["consumers"] == 1
    assert status["files"]["team.yaml"]["kind"] == "consumer"
    assert status["files"]["team.yaml"]["consumers"] == 1
    assert status["files"]["a.yaml"]["kind"] == "route"
    # Rotation: two keys, then only the new one.
    (tmp_path / "team.yaml").write_text(consumer_file("team", "key-one", "key-two"))
    await r.reload("watch")
    assert (who(r, "key-one"), who(r, "key-two")) == ("team", "team")
    (tmp_path / "team.yaml").write_text(consumer_file("team", "key-two"))
    await r.reload("watch")
    assert (who(r, "key-one"), who(r, "key-two")) == (None, "team")
    # A broken version: the last known good keeps authenticating.
    (tmp_path / "team.yaml").write_text(consumer_file("team", "key-three").replace("key:", "kye:"))
    report = await r.reload("watch")
    assert "kye" in str(report.rejected[0])
    assert (
        states(r)["team.yaml"] == "lkg" and r.status()["files"]["team.yaml"]["kind"] == "consumer"
    )
    assert (who(r, "key-two"), who(r, "key-three")) == ("team", None)
    (tmp_path / "team.yaml").unlink()
    report = await r.reload("watch")
    assert report.removed == ("team.yaml",) and report.consumers == 0
    assert who(r, "key-two") is None
    # No consumer change ever recompiled a route.
    assert compiled(r)["a"] is routes["a"]


async def test_consumer_conflict_refuses_the_newcomer_and_the_incumbent_keeps_its_keys(
    tmp_path: Path,
) -> None:
    (tmp_path / "m.yaml").write_text(consumer_file("team", "key-m"))
    r, _ = reloader(tmp_path)
    r.load_initial()
    (tmp_path / "0-user.yaml").write_text(consumer_file("team", "key-0"))
    (tmp_path / "1-key.yaml").write_text(consumer_file("other", "key-m"))
    report = await r.reload("watch")
    messages = sorted(str(e) for e in report.rejected)
    assert "username `team` is already used by" in messages[0]
    assert "already a key of consumer `team`" in messages[1]
    assert all(str(tmp_path / "m.yaml") in m and "key-m" not in m for m in messages)
    assert states(r) == {"0-user.yaml": "rejected", "1-key.yaml": "rejected", "m.yaml": "active"}
    assert r.status()["files"]["0-user.yaml"]["kind"] == "consumer"
    assert (who(r, "key-m"), who(r, "key-0")) == ("team", None)
    # Once the incumbent is gone, the refused newcomer gets its turn.
    (tmp_path / "m.yaml").unlink()
    await r.reload("watch")
    assert (who(r, "key-m"), who(r, "key-0")) == ("other", "team")


async def test_changed_global_plugins_recompile_every_route_and_nothing_else_does(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    (tmp_path / "b.yaml").write_text(route_file("b"))
    (tmp_path / "global.yaml").write_text(plugins_file(KEY_AUTH))
    r, published = reloader(tmp_path)
    r.load_initial()
    before = compiled(r)
    assert "key_auth" in before["a"].stages and "acl" not in before["a"].stages
    assert r.status()["files"]["global.yaml"]["plugins"] == ["key-auth"]
    (tmp_path / "team.yaml").write_text(consumer_file("team", "key-1"))
    await r.reload("watch")
    assert compiled(r) == before and all(compiled(r)[n] is before[n] for n in before)
    (tmp_path / "global.yaml").write_text(plugins_file(KEY_AUTH, ACL))
    await r.reload("watch")
    after = compiled(r)
    assert all(after[n] is not before[n] for n in before)
    assert all("acl" in route.stages for route in after.values())
    # A route file change recompiles only that route.
    (tmp_path / "b.yaml").write_text(route_file("b", deployment="gpt-4.1-mini"))
    await r.reload("watch")
    assert compiled(r)["a"] is after["a"] and compiled(r)["b"] is not after["b"]
    assert len(published.tables) == 4


async def test_second_global_definition_of_a_plugin_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    (tmp_path / "g1.yaml").write_text(plugins_file(KEY_AUTH))
    r, _ = reloader(tmp_path)
    r.load_initial()
    (tmp_path / "g0.yaml").write_text(plugins_file(ACL, "key-auth: {key_names: [x-key]}"))
    report = await r.reload("watch")
    assert "global plugin `key-auth` is already defined by" in str(report.rejected[0])
    assert states(r)["g0.yaml"] == "rejected"
    assert r.table is not None and r.table.global_plugins.acl is None
    assert r.table.global_plugins.key_auth is not None
    assert r.table.global_plugins.key_auth.key_names == ("api-key",)


async def test_a_broken_global_plugins_file_keeps_its_last_known_good(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    (tmp_path / "global.yaml").write_text(plugins_file(KEY_AUTH))
    r, _ = reloader(tmp_path)
    r.load_initial()
    (tmp_path / "global.yaml").write_text(plugins_file("key-auth: {key_namez: [api-key]}"))
    report = await r.reload("watch")
    assert "key_namez" in str(report.rejected[0])
    assert states(r)["global.yaml"] == "lkg"
    assert "key_auth" in compiled(r)["a"].stages
    (tmp_path / "global.yaml").unlink()
    await r.reload("watch")
    assert "key_auth" not in compiled(r)["a"].stages


async def test_a_file_that_changes_kind_and_conflicts_keeps_its_previous_kind(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(route_file("a"))
    (tmp_path / "global.yaml").write_text(plugins_file(KEY_AUTH))
    (tmp_path / "team.yaml").write_text(consumer_file("team", "key-1"))
    r, _ = reloader(tmp_path)
    r.load_initial()
    # The global plugins file becomes a route on a's path; the consumer file a
    # global plugins file redefining key-auth: both refused, both serve as before.
    (tmp_path / "global.yaml").write_text(
        route_file("g", path="/openai/deployments/a/chat/completions")
    )
    (tmp_path / "team.yaml").write_text(plugins_file("key-auth: {key_names: [x-key]}"))
    report = await r.reload("watch")
    assert len(report.rejected) == 2
    assert states(r) == {
        "a.yaml": "active",
        "global.yaml": "lkg",
        "team.yaml": "lkg",
    }
    assert r.table is not None and r.table.global_plugins.key_auth is not None
    assert r.table.global_plugins.key_auth.key_names == ("api-key",)
    assert "key_auth" in compiled(r)["a"].stages
    assert who(r, "key-1") == "team"


async def test_restart_with_a_broken_consumer_file_serves_its_last_known_good(
    tmp_path: Path,
) -> None:
    conf, state = tmp_path / "conf.d", tmp_path / "state"
    conf.mkdir()
    (conf / "team.yaml").write_text(consumer_file("team", "${TEAM_KEY}"))
    first, _ = reloader(conf, state, {"TEAM_KEY": "key-from-env"})
    first.load_initial()
    assert who(first, "key-from-env") == "team"
    (conf / "team.yaml").write_text("consumer: [broken\n")
    second, _ = reloader(conf, state, {"TEAM_KEY": "key-from-env"})
    second.load_initial()
    assert states(second) == {"team.yaml": "lkg"} and who(second, "key-from-env") == "team"
    # Stored as written: the key itself never lands in the state directory.
    assert b"key-from-env" not in (state / "lkg" / "team.yaml").read_bytes()


async def test_last_known_good_copies_are_written_when_they_change_only(tmp_path: Path) -> None:
    conf, state = tmp_path / "conf.d", tmp_path / "state"
    conf.mkdir()
    (conf / "a.yaml").write_text(route_file("a"))
    (conf / "team.yaml").write_text(consumer_file("team", "key-1"))
    first, _ = reloader(conf, state)
    first.load_initial()
    stored = state / "lkg" / "team.yaml"
    inode = stored.stat().st_ino  # each save replaces the file: a new inode
    # A restart over unchanged files rewrites (and fsyncs) nothing.
    second, _ = reloader(conf, state)
    second.load_initial()
    assert stored.stat().st_ino == inode
    (conf / "team.yaml").write_text(consumer_file("team", "key-2"))
    await second.reload("watch")
    assert stored.read_text() == consumer_file("team", "key-2")
