"""Strict, position-aware YAML reading.

`read_yaml` turns YAML text into plain Python data (dict, list, str, int, float, bool, None,
date) plus a map from key path to source position, and reports what PyYAML would silently accept:

- **Duplicate mapping keys** are an issue at the second key, naming the first one's line.
  PyYAML keeps the last value, so a stale key left further down a file would win unnoticed.
- **Aliases** (``*name``) and therefore **merge keys** (``<<: *base``) are rejected. A route
  file is small and describes one deployment; sharing pieces between files is what env
  interpolation is for. Aliases would also give one node two key paths (so an error could not
  name a single place) and allow "billion laughs" expansion. Anchors without aliases are harmless
  and ignored.
- **Tags** other than the plain scalar types, maps and sequences (``!!python/...``,
  ``!!binary``, ``!!set``, custom ``!tags``) are rejected.
- **Syntax errors** carry line and column; the source snippet is deliberately left out so a
  literal secret on the offending line is never echoed.

Scalars keep YAML 1.1 typing (``no`` is ``False``, ``2024-10-21`` is a date). The schema then
checks types strictly and, thanks to `NodePosition.plain`, can say "YAML reads the unquoted
`no` as a boolean" instead of silently accepting or mis-converting it.

How: a `yaml.CSafeLoader` subclass (`yaml.SafeLoader` without libyaml) composes the node graph;
this module then walks the nodes itself instead of running PyYAML's constructor, because the
constructor neither knows key paths nor notices aliases or duplicates. Positions are indexed
lazily from the same nodes, since only error messages need them.

PERF: ~0.3 ms per typical route file including validation (bench/bench_config_load.py),
about 1.5x a bare ``yaml.load(text, CSafeLoader)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from aigw.config.errors import ConfigIssue
from aigw.config.keypath import ROOT, child, item, join

__all__ = ["NodePosition", "YamlDocument", "read_yaml"]


_TAG = "tag:yaml.org,2002:"
_STR, _MAP, _SEQ, _MERGE = _TAG + "str", _TAG + "map", _TAG + "seq", _TAG + "merge"


class _PlainResolver:
    """Tag resolution without YAML path resolvers, which nothing here registers.

    PERF: PyYAML's `Resolver.resolve` runs for every node (keys included) and pays for path
    resolver bookkeeping and list concatenation on each call; this keeps its exact results for
    the default implicit resolvers and halves libyaml's composition time.
    """

    _IMPLICIT: ClassVar[dict[str, tuple[tuple[str, re.Pattern[str]], ...]]] = {
        first: tuple(pairs)
        for first, pairs in Resolver.yaml_implicit_resolvers.items()
        if first is not None  # PyYAML registers none; a wildcard would need a second lookup
    }

    def descend_resolver(self, current_node: object, current_index: object) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None

    def resolve(self, kind: type[Node], value: str, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            if implicit[0]:  # plain (unquoted) scalar
                for tag, pattern in self._IMPLICIT.get(value[:1], ()):
                    if pattern.match(value):
                        return tag
            return _STR
        return _MAP if kind is MappingNode else _SEQ


try:

    class _Loader(_PlainResolver, yaml.CSafeLoader):  # libyaml composes, this resolves
        pass

except AttributeError:  # pragma: no cover - PyYAML built without libyaml

    class _Loader(_PlainResolver, yaml.SafeLoader):  # type: ignore[no-redef]
        pass


_MAX_DEPTH = 32  # the schema nests 7 levels; anything deeper is a mistake or an attack


# YAML 1.1 "printable" set. Checked up front because libyaml reports a *byte* offset for these.
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


@dataclass(frozen=True, slots=True)
class NodePosition:
    """Where a value (and, for mapping entries, its key) sits in the source; 1-based.

    Attributes:
        line: Line of the value.
        column: Column of the value.
        key_line: Line of the key, for mapping entries.
        key_column: Column of the key, for mapping entries.
        plain: The source text of an unquoted scalar that YAML resolved to something other than
            a string (``no``, ``2024-10-21``, ``0x1F``), so messages can explain the surprise.
    """

    line: int
    column: int
    key_line: int | None = None
    key_column: int | None = None
    plain: str | None = None


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """The result of `read_yaml`.

    Attributes:
        data: The document as plain Python data; ``None`` for an empty document or a syntax error.
        positions: Key path -> position, for every node that was read (built on first use).
        issues: Problems found while reading.
        unusable: Key paths whose value was replaced by ``None`` because it could not be read
            (alias, unsupported tag, too deep). Later stages should not report them again.
    """

    data: object
    positions: Mapping[str, NodePosition]
    issues: tuple[ConfigIssue, ...]
    unusable: frozenset[str]


def read_yaml(text: str, file: str) -> YamlDocument:
    """Read one YAML document strictly.

    Args:
        text: The decoded file contents.
        file: The file name to put in issues.

    Returns:
        The data, the position of every key path, and every issue found. A syntax error yields
        ``data=None`` and exactly one issue.
    """
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        line, column = _line_col(text, bad.start())
        reason = f"character U+{ord(bad.group()):04X} is not allowed in YAML"
        return _failed(ConfigIssue(file, ROOT, reason, line, column))
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return YamlDocument(None, _PositionIndex(None), (), frozenset())
        return _Builder(loader, file).run(root)
    except yaml.MarkedYAMLError as exc:
        return _failed(_syntax_issue(file, exc))
    except yaml.YAMLError as exc:  # e.g. ReaderError, which has no mark
        return _failed(ConfigIssue(file, ROOT, f"invalid YAML: {type(exc).__name__}"))
    except RecursionError:
        return _failed(ConfigIssue(file, ROOT, "invalid YAML: nesting is too deep"))
    finally:
        loader.dispose()


def _failed(issue: ConfigIssue) -> YamlDocument:
    return YamlDocument(None, {}, (issue,), frozenset())


def _line_col(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _syntax_issue(file: str, exc: yaml.MarkedYAMLError) -> ConfigIssue:
    # SECURITY: str(exc) would include a snippet of the offending line; build the text from the
    # problem/context fields only.
    reason = f"invalid YAML: {exc.problem or 'syntax error'}"
    if exc.context:
        reason += f" ({exc.context}"
        if exc.context_mark is not None:
            reason += f", line {exc.context_mark.line + 1}"
        reason += ")"
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return ConfigIssue(file, ROOT, reason)
    return ConfigIssue(file, ROOT, reason, mark.line + 1, mark.column + 1)


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


class _PositionIndex(Mapping[str, NodePosition]):
    """Key path -> position, built from the node graph on first use.

    PERF: only messages need positions, so a valid file never pays for building this.
    The walk mirrors `_Builder` (first of duplicate keys, aliases skipped, same depth limit),
    so both spell every key path the same way.
    """

    __slots__ = ("_index", "_root")

    def __init__(self, root: Node | None) -> None:
        self._root = root
        self._index: dict[str, NodePosition] | None = None

    def _built(self) -> dict[str, NodePosition]:
        if self._index is None:
            self._index = {}
            if self._root is not None:
                _index_positions(self._index, self._root, ROOT, None, set())
        return self._index

    def __getitem__(self, path: str) -> NodePosition:
        return self._built()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


def _index_positions(
    index: dict[str, NodePosition],
    node: Node,
    path: str,
    key: Node | None,
    seen: set[int],
    depth: int = 0,
) -> None:
    if id(node) in seen or path in index or depth > _MAX_DEPTH:
        return
    seen.add(id(node))
    mark = node.start_mark
    plain = None
    if isinstance(node, ScalarNode) and node.tag != _STR and not node.style:
        plain = node.value
    index[path] = NodePosition(
        mark.line + 1,
        mark.column + 1,
        None if key is None else key.start_mark.line + 1,
        None if key is None else key.start_mark.column + 1,
        plain,
    )
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE:
                key_path = child(path, key_node.value)
                _index_positions(index, value_node, key_path, key_node, seen, depth + 1)
    elif isinstance(node, SequenceNode):
        for position, element in enumerate(node.value):
            _index_positions(index, element, item(path, position), None, seen, depth + 1)


class _Builder:
    """Walks a composed node graph once, building plain data and collecting issues.

    The current key path is kept as a stack of segments and only joined into a string when an
    issue needs it (PERF: valid files never format a path).
    """

    __slots__ = ("_file", "_issues", "_scalars", "_seen", "_stack", "_unusable")

    def __init__(self, loader: _Loader, file: str) -> None:
        self._file = file
        self._issues: list[ConfigIssue] = []
        self._unusable: set[str] = set()
        self._seen: set[int] = set()
        self._stack: list[str | int] = []
        # The only scalar types a config needs; anything else is an "unsupported tag".
        self._scalars: dict[str, Callable[[ScalarNode], object]] = {
            _TAG + "null": loader.construct_yaml_null,
            _TAG + "bool": loader.construct_yaml_bool,
            _TAG + "int": loader.construct_yaml_int,
            _TAG + "float": loader.construct_yaml_float,
            _TAG + "timestamp": loader.construct_yaml_timestamp,
        }

    def run(self, root: Node) -> YamlDocument:
        data = self._node(root)
        return YamlDocument(
            data, _PositionIndex(root), tuple(self._issues), frozenset(self._unusable)
        )

    def _issue(self, reason: str, node: Node, *, usable: bool = False) -> None:
        path = join(self._stack)
        mark = node.start_mark
        self._issues.append(ConfigIssue(self._file, path, reason, mark.line + 1, mark.column + 1))
        if not usable:
            self._unusable.add(path)

    def _node(self, node: Node) -> object:
        # Composed aliases are the very same node object, so identity spots them.
        if id(node) in self._seen:
            self._issue("YAML aliases (*name) and merge keys are not supported", node)
            return None
        self._seen.add(id(node))
        if len(self._stack) > _MAX_DEPTH:
            self._issue(f"nesting deeper than {_MAX_DEPTH} levels", node)
            return None
        if isinstance(node, ScalarNode):
            return node.value if node.tag == _STR else self._scalar(node)
        if isinstance(node, MappingNode):
            return self._mapping(node)
        if isinstance(node, SequenceNode):
            return self._sequence(node)
        return None  # pragma: no cover - a composer yields no other node kind

    def _scalar(self, node: ScalarNode) -> object:
        construct = self._scalars.get(node.tag)
        if construct is None:
            self._issue(f"unsupported YAML tag {_short_tag(node.tag)}", node)
            return None
        try:
            return construct(node)
        except (ValueError, OverflowError, yaml.YAMLError):
            # e.g. 2024-02-30 matches the timestamp pattern but is no date.
            # SECURITY: the text is not quoted back; this layer does not know which keys are secret.
            kind = _short_tag(node.tag)
            reason = f"YAML reads this unquoted value as {kind} but cannot convert it; quote it"
            self._issue(reason, node)
            return None

    def _mapping(self, node: MappingNode) -> object:
        if node.tag != _MAP:
            self._issue(f"unsupported YAML tag {_short_tag(node.tag)}", node)
            return None
        result: dict[str, object] = {}
        first_line: dict[str, int] = {}
        stack = self._stack
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._issue("mapping keys must be scalars", key_node)
                continue
            if id(key_node) in self._seen:
                self._issue("YAML aliases (*name) are not supported as keys", key_node)
                continue
            self._seen.add(id(key_node))
            if key_node.tag == _MERGE:
                self._issue("YAML merge keys (<<) are not supported", key_node)
                continue
            # Keys are compared by their source text: every schema key is a plain word, so a
            # key YAML would read as a bool or number is reported as unknown under its own name.
            key: str = key_node.value
            stack.append(key)
            if key in first_line:
                reason = f"duplicate key `{key}` (first defined at line {first_line[key]})"
                self._issue(reason, key_node, usable=True)  # the first value stands
            else:
                first_line[key] = key_node.start_mark.line + 1
                result[key] = self._node(value_node)
            stack.pop()
        return result

    def _sequence(self, node: SequenceNode) -> object:
        if node.tag != _SEQ:
            self._issue(f"unsupported YAML tag {_short_tag(node.tag)}", node)
            return None
        result: list[object] = []
        stack = self._stack
        for index, element in enumerate(node.value):
            stack.append(index)
            result.append(self._node(element))
            stack.pop()
        return result
