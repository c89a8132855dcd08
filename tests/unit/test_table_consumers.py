"""The table builder with consumer and global plugins files: whole-file refusals, order, merging."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from aigw.config.loader import parse_route_file
from aigw.config.model import (
    AccessPlugins,
    AclConfig,
    AuthConfig,
    ConsumerConfig,
    ConsumerFile,
    GlobalPluginsFile,
    KeyAuthConfig,
    KeyCredential,
    ProviderLimit,
    RedisConfig,
    RouteFile,
    TokenLimitConfig,
)
from aigw.consumers.index import EMPTY_CONSUMERS, credential_id, key_digest
from aigw.route import CompiledRoute, compile_route
from aigw.table import TableBuilder
from tests.unit.test_reload import ENV, route_file

KEY_AUTH = AccessPlugins(key_auth=KeyAuthConfig(key_names=("api-key",)))
ACL = AccessPlugins(acl=AclConfig(allow=("chat",)))


def consumer(username: str, *keys: str, groups: tuple[str, ...] = ()) -> ConsumerConfig:
    credentials = tuple(KeyCredential(key_digest(k), credential_id(key_digest(k))) for k in keys)
    return ConsumerConfig(username, credentials, groups)


def consumers(source: str, *members: ConsumerConfig) -> ConsumerFile:
    return ConsumerFile(source, hashlib.sha256(source.encode()).hexdigest(), members)


def global_plugins(source: str, plugins: AccessPlugins) -> GlobalPluginsFile:
    return GlobalPluginsFile(source, hashlib.sha256(source.encode()).hexdigest(), plugins)


def route(name: str) -> RouteFile:
    return parse_route_file(f"conf.d/{name}.yaml", route_file(name).encode(), ENV)


class Compiler:
    """Compiles each route without its plugins, recording the global plugins it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, AccessPlugins]] = []

    def __call__(self, file: RouteFile, plugins: AccessPlugins) -> CompiledRoute:
        self.calls.append((file.route.name, plugins))
        # The chain is not under test here: compiled without plugins, tagged with the file.
        return replace(compile_route(replace(file, plugins=AccessPlugins())), file=file)


def test_keys_of_every_consumer_file_authenticate() -> None:
    builder = TableBuilder(Compiler())
    alice_file = consumers("a.yaml", consumer("alice", "k-a1", "k-a2", groups=("chat",)))
    assert builder.offer(alice_file) is None
    bob_and_carol = consumers("b.yaml", consumer("bob", "k-b"), consumer("carol", "k-c"))
    assert builder.offer(bob_and_carol) is None
    table = builder.build(1)
    assert len(table.consumers) == 3
    found = table.consumers.authenticate("k-a2")
    assert found is not None
    alice, credential = found
    assert (alice.username, alice.groups, alice.source) == ("alice", frozenset({"chat"}), "a.yaml")
    assert credential == credential_id(key_digest("k-a2"))
    found = table.consumers.authenticate("k-c")
    assert found is not None and found[0].username == "carol"
    assert table.consumers.authenticate("k-unknown") is None


def test_a_table_without_consumer_files_has_the_empty_index() -> None:
    assert TableBuilder(Compiler()).build(1).consumers is EMPTY_CONSUMERS


def test_username_taken_by_another_file_refuses_the_whole_file() -> None:
    builder = TableBuilder(Compiler())
    builder.offer(consumers("conf.d/a.yaml", consumer("alice", "k-a")))
    error = builder.offer(
        consumers("conf.d/b.yaml", consumer("bob", "k-b"), consumer("alice", "k-other"))
    )
    assert error is not None
    assert "username `alice` is already used by conf.d/a.yaml" in str(error)
    assert error.source == "conf.d/b.yaml"
    table = builder.build(1)
    # Nothing of the refused file serves: not even its consumer that did not conflict.
    assert table.consumers.authenticate("k-b") is None
    assert table.consumers.authenticate("k-other") is None
    assert [c.username for c in table.consumers.consumers] == ["alice"]


def test_key_of_another_consumer_refuses_the_file_without_naming_the_key() -> None:
    builder = TableBuilder(Compiler())
    builder.offer(consumers("conf.d/a.yaml", consumer("alice", "secret-shared-key")))
    error = builder.offer(consumers("conf.d/b.yaml", consumer("bob", "k-b", "secret-shared-key")))
    assert error is not None
    message = str(error)
    assert "keyauth_credentials[1] of consumer `bob`" in message
    assert "consumer `alice` in conf.d/a.yaml" in message
    digest = key_digest("secret-shared-key")
    for secret in ("secret-shared-key", digest.hex(), credential_id(digest)):
        assert secret not in message
    table = builder.build(1)
    found = table.consumers.authenticate("secret-shared-key")
    assert found is not None and found[0].username == "alice"
    assert table.consumers.authenticate("k-b") is None


def test_one_key_on_two_consumers_of_one_file_is_refused() -> None:
    builder = TableBuilder(Compiler())
    error = builder.offer(consumers("c.yaml", consumer("a", "same"), consumer("b", "same")))
    assert error is not None and "already a key of consumer `a` in c.yaml" in str(error)
    assert len(builder.build(1).consumers) == 0


def test_global_plugins_merge_and_a_second_definition_is_refused() -> None:
    builder = TableBuilder(Compiler())
    assert builder.offer(global_plugins("conf.d/auth.yaml", KEY_AUTH)) is None
    assert builder.offer(global_plugins("conf.d/acl.yaml", ACL)) is None
    # Defines acl again (and a token limit): refused whole, its token limit too.
    limit = TokenLimitConfig(llm_providers=(ProviderLimit("azure", (100,), (60,)),))
    both = AccessPlugins(acl=AclConfig(deny=("x",)), token_limit=limit)
    error = builder.offer(global_plugins("conf.d/z.yaml", both))
    assert error is not None
    assert "global plugin `acl` is already defined by conf.d/acl.yaml" in str(error)
    assert builder.global_plugins == AccessPlugins(key_auth=KEY_AUTH.key_auth, acl=ACL.acl)
    assert builder.build(1).global_plugins == builder.global_plugins


def test_routes_compile_with_the_merged_global_plugins() -> None:
    compiler = Compiler()
    builder = TableBuilder(compiler)
    builder.offer(global_plugins("auth.yaml", KEY_AUTH))
    builder.offer(global_plugins("acl.yaml", ACL))
    builder.offer(consumers("c.yaml", consumer("alice", "k")))
    builder.offer(route("a"))
    merged = AccessPlugins(key_auth=KEY_AUTH.key_auth, acl=ACL.acl)
    assert compiler.calls == [("a", merged)]


def test_global_plugins_after_a_route_is_a_programming_error() -> None:
    builder = TableBuilder(Compiler())
    builder.offer(route("a"))
    with pytest.raises(ValueError, match="after a route file"):
        builder.offer(global_plugins("late.yaml", KEY_AUTH))


def test_chain_has_the_global_plugins_and_a_routes_own_one_replaces_its_namesake() -> None:
    builder = TableBuilder(lambda file, plugins: compile_route(file, global_plugins=plugins))
    builder.offer(global_plugins("auth.yaml", KEY_AUTH))
    builder.offer(route("plain"))
    own = AccessPlugins(key_auth=KeyAuthConfig(("x-key",)), acl=AclConfig(allow=("chat",)))
    builder.offer(replace(route("own"), plugins=own))
    chains = {r.name: r.stages for r in builder.build(1).routes}
    assert chains["plain"][3:5] == ("key_auth", "body_checks")
    assert chains["own"][3:6] == ("key_auth", "acl", "body_checks")


def test_secrets_include_each_routes_effective_redis_password() -> None:
    def limit(password: str) -> TokenLimitConfig:
        return TokenLimitConfig(
            llm_providers=(ProviderLimit("azure", (100,), (60,)),),
            strategy="redis",
            redis=RedisConfig(password=password),
        )

    builder = TableBuilder(Compiler())
    builder.offer(global_plugins("g.yaml", AccessPlugins(token_limit=limit("global-pass"))))
    builder.offer(route("inherits"))
    builder.offer(replace(route("own"), plugins=AccessPlugins(token_limit=limit("own-pass"))))
    secrets = builder.build(1).secrets()
    assert {"global-pass", "own-pass", ENV["KEY"]} <= secrets
    # Only the route's own: with no route inheriting the global limit, its password is unused.
    alone = TableBuilder(Compiler())
    alone.offer(global_plugins("g.yaml", AccessPlugins(token_limit=limit("global-pass"))))
    alone.offer(replace(route("own"), plugins=AccessPlugins(token_limit=limit("own-pass"))))
    assert alone.build(1).secrets() == {"own-pass", ENV["KEY"]}


def test_secrets_include_every_target_of_a_pool() -> None:
    # The second target's key and an Entra target's client secret are scrubbed from
    # log lines as the first target's key is.
    file = route("pool")
    first = file.proxy.targets[0]
    second = replace(
        first,
        auth=AuthConfig(header_name="api-key", header_value="second-target-key-0123"),
        model=replace(first.model, options=replace(first.model.options, azure_instance="east")),
    )
    entra = replace(
        first,
        auth=AuthConfig(
            azure_client_id="00000000-0000-0000-0000-000000000001",
            azure_client_secret="entra-client-secret-0123",
            azure_tenant_id="contoso.onmicrosoft.com",
        ),
        model=replace(first.model, options=replace(first.model.options, azure_instance="north")),
    )
    pool = replace(file, proxy=replace(file.proxy, targets=(first, second, entra)))
    builder = TableBuilder(Compiler())
    assert builder.offer(pool) is None
    assert builder.build(1).secrets() == {
        ENV["KEY"],
        "second-target-key-0123",
        "entra-client-secret-0123",
    }
