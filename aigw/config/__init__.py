"""The configuration language: one YAML file per route in conf.d, with Kong's field names.

A file holds a ``route`` (name, paths, methods) and exactly one ``ai-proxy-advanced`` plugin
with one target::

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

Modules, in pipeline order: `yaml_strict` (strict YAML with positions), `env` (``${VAR}``
interpolation), `schema` + `checker` (validation into the `model` dataclasses), `loader`
(files and directories), `errors` (`ConfigIssue`, `ConfigError`).
"""

from aigw.config.errors import ConfigDirectoryError, ConfigError, ConfigIssue
from aigw.config.loader import DirLoad, discover, load_dir, load_file, parse_route_file
from aigw.config.model import (
    AiProxyAdvancedConfig,
    AuthConfig,
    LoggingConfig,
    ModelConfig,
    ModelOptions,
    ParamLocation,
    RouteConfig,
    RouteFile,
    RouteType,
    StreamingMode,
    TargetConfig,
)

__all__ = [
    "AiProxyAdvancedConfig",
    "AuthConfig",
    "ConfigDirectoryError",
    "ConfigError",
    "ConfigIssue",
    "DirLoad",
    "LoggingConfig",
    "ModelConfig",
    "ModelOptions",
    "ParamLocation",
    "RouteConfig",
    "RouteFile",
    "RouteType",
    "StreamingMode",
    "TargetConfig",
    "discover",
    "load_dir",
    "load_file",
    "parse_route_file",
]
