"""YAML read strictly: a key given twice in one mapping is an error, not a silent overwrite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "load_yaml_file", "check_unique_keys"]


class DuplicateKeyError(ValueError):
    """A mapping of a YAML file holds the same key twice (PyYAML would keep only the last)."""


def _walk(node: yaml.Node, path: str, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            dotted = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(
                    f"{source}:{line}: duplicate key `{dotted}` (first at line {seen[key]}); YAML would keep "
                    "only the last one: merge the two"
                )
            seen[key] = line
            _walk(value_node, dotted, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, f"{path}[{index}]", source)


def check_unique_keys(text: str, source: str) -> None:
    """Raise DuplicateKeyError naming `source`, the line and the dotted key of a key given twice."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _walk(node, "", source)


def load_yaml_file(path: str | Path) -> Any:
    """`yaml.safe_load` of a file, refusing duplicate keys (yaml.YAMLError for invalid YAML)."""
    text = Path(path).read_text()
    check_unique_keys(text, str(path))
    return yaml.safe_load(text)
