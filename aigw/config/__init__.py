"""The configuration language: YAML files in conf.d, with Kong's field names.

A file's root keys say what it holds (`parse_conf_file` reads any of them):

- ``route`` + ``plugins``: one route (`RouteFile`);
- ``consumer`` (one) or ``consumers`` (a list): callers and their keys (`ConsumerFile`);
- ``plugins`` alone: access plugins for every route (`GlobalPluginsFile`).

A route file holds a ``route`` (name, paths, methods), exactly one ``ai-proxy-advanced``
plugin with one target, and optionally ``key-auth``, ``acl`` and ``ai-rate-limiting-advanced``::

    route:
      name: azure-gpt-4o
      paths: [/openai/deployments/gpt-4o/chat/completions]
      methods: [POST]
    plugins:
      - name: ai-proxy-advanced
        config:
          targets:
            - route_type: llm/v1/chat
              auth: {header_name: api-key, header_value: "${AZURE_OPENAI_KEY}"}
              model:
                provider: azure
                name: gpt-4o
                options: {azure_instance: "${AZURE_INSTANCE}", azure_deployment_id: gpt-4o}

A consumer file::

    consumer:
      username: team-search
      keyauth_credentials:
        - key: ${TEAM_SEARCH_KEY}   # hashed at load; only the digest is kept
      acls:
        - group: chat

Modules, in pipeline order: `yaml_strict` (strict YAML with positions), `env` (``${VAR}``
interpolation), `schema` (route files, and which kind a file is), `plugins_schema` (the access
plugins), `consumer_schema` (consumer files) and `checker` (validation into the `model`
dataclasses), `loader` (files and directories), `errors` (`ConfigIssue`, `ConfigError`).
"""

from aigw.config.errors import ConfigDirectoryError, ConfigError, ConfigIssue
from aigw.config.loader import (
    DirLoad,
    discover,
    load_dir,
    load_file,
    parse_conf_file,
    parse_route_file,
)
from aigw.config.model import (
    AccessPlugins,
    AclConfig,
    AiProxyAdvancedConfig,
    AuthConfig,
    ConfFile,
    ConsumerConfig,
    ConsumerFile,
    GlobalPluginsFile,
    KeyAuthConfig,
    KeyCredential,
    LoggingConfig,
    ModelConfig,
    ModelOptions,
    ParamLocation,
    ProviderLimit,
    RedisConfig,
    RouteConfig,
    RouteFile,
    RouteType,
    StreamingMode,
    TargetConfig,
    TokenLimitConfig,
)

__all__ = [
    "AccessPlugins",
    "AclConfig",
    "AiProxyAdvancedConfig",
    "AuthConfig",
    "ConfFile",
    "ConfigDirectoryError",
    "ConfigError",
    "ConfigIssue",
    "ConsumerConfig",
    "ConsumerFile",
    "DirLoad",
    "GlobalPluginsFile",
    "KeyAuthConfig",
    "KeyCredential",
    "LoggingConfig",
    "ModelConfig",
    "ModelOptions",
    "ParamLocation",
    "ProviderLimit",
    "RedisConfig",
    "RouteConfig",
    "RouteFile",
    "RouteType",
    "StreamingMode",
    "TargetConfig",
    "TokenLimitConfig",
    "discover",
    "load_dir",
    "load_file",
    "parse_conf_file",
    "parse_route_file",
]
