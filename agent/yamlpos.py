"""YAML loading that remembers the line of every key and reports duplicate keys.

PyYAML's ``safe_load("a: 1\\na: 2")`` silently returns ``{'a': 2}``; a device config with two ``port:``
lines must instead name both lines. Key paths are tuples of strings; a list item is ``"[i]"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

KeyPath = tuple[str, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlSyntaxError(Exception):
    """The text is not valid YAML; ``line`` is 1-based when PyYAML knows it."""

    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class DuplicateKey:
    """A key given twice in one mapping: where it is repeated and where it first appeared."""

    path: KeyPath
    line: int
    first_line: int


@dataclass
class LoadedYaml:
    """The constructed document plus what the position walk learnt about it."""

    data: object
    lines: dict[KeyPath, int] = field(default_factory=dict)
    duplicates: list[DuplicateKey] = field(default_factory=list)


class PositionLoader(yaml.SafeLoader):
    """SafeLoader that indexes the composed node tree (key path -> line) before constructing it."""

    def index_positions(self, root: yaml.Node) -> tuple[dict[KeyPath, int], list[DuplicateKey]]:
        """Return the line of every key and list item, and every duplicate key."""
        lines: dict[KeyPath, int] = {}
        duplicates: list[DuplicateKey] = []
        # Each node is walked once: aliases share nodes, and expanding them could explode (YAML bombs).
        _index_node(root, (), lines, duplicates, set())
        return lines, duplicates


def load_yaml(text: str) -> LoadedYaml:
    """Parse one YAML document safely; raise YamlSyntaxError with the line of the first problem."""
    loader = PositionLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return LoadedYaml(data=None)
        lines, duplicates = loader.index_positions(root)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), None) from exc
    finally:
        loader.dispose()
    return LoadedYaml(data=data, lines=lines, duplicates=duplicates)


def _syntax_error(exc: yaml.MarkedYAMLError) -> YamlSyntaxError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "cannot parse"
    if exc.context and exc.problem:
        problem = f"{problem} ({exc.context})"
    return YamlSyntaxError(problem, mark.line + 1 if mark else None)


def _index_node(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int],
                duplicates: list[DuplicateKey], seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        _index_mapping(node, path, lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_path = (*path, f"[{index}]")
            lines.setdefault(item_path, item.start_mark.line + 1)
            _index_node(item, item_path, lines, duplicates, seen)


def _index_mapping(node: yaml.MappingNode, path: KeyPath, lines: dict[KeyPath, int],
                   duplicates: list[DuplicateKey], seen: set[int]) -> None:
    first_lines: dict[tuple[str, str], int] = {}
    merged: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merged.append(value_node)
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            continue  # a list or mapping as a key: construction rejects it with its own message
        line = key_node.start_mark.line + 1
        identity = (key_node.tag, key_node.value)
        key_path = (*path, key_node.value)
        if identity in first_lines:
            duplicates.append(DuplicateKey(key_path, line, first_lines[identity]))
        else:
            first_lines[identity] = line
        lines[key_path] = line  # the last occurrence is the one PyYAML keeps
        _index_node(value_node, key_path, lines, duplicates, seen)
    # `<<: *defaults` keys come after explicit ones so that explicit keys keep their own lines.
    for merge_node in merged:
        sources = merge_node.value if isinstance(merge_node, yaml.SequenceNode) else [merge_node]
        for source in sources:
            if isinstance(source, yaml.MappingNode):
                _index_merged(source, path, lines)


def _index_merged(node: yaml.MappingNode, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    for key_node, _value in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
            lines.setdefault((*path, key_node.value), key_node.start_mark.line + 1)
