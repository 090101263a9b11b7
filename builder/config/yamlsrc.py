"""YAML loading that remembers where every key and value came from.

Errors in families.yaml and release files must name file, line and column, so
we compose the YAML node graph ourselves and keep each node's start mark next
to the plain Python value built from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from builder.errors import ConfigError, Diagnostic

PathKey = tuple[Union[str, int], ...]


@dataclass
class Located:
    """A YAML document as plain data plus a map from data path to position."""

    file: str
    data: Any
    values: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    keys: dict[PathKey, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: PathKey, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the value at path, or of its key.

        Falls back to the nearest enclosing node so a missing field is reported
        at the mapping that should have held it.
        """
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), (1, 1))

    def diag(self, path: PathKey, message: str, key: bool = False) -> Diagnostic:
        line, col = self.where(path, key=key)
        return Diagnostic(self.file, line, col, message)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.doc = Located(file, None)
        self.constructor = yaml.SafeLoader("")
        self.problems: list[Diagnostic] = []

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.doc.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                key = self.constructor.construct_object(knode, deep=True)
                if not isinstance(key, (str, int)):
                    line, col = _mark(knode)
                    self.problems.append(Diagnostic(self.file, line, col, "mapping keys must be strings"))
                    continue
                key = str(key)
                if key in out:
                    line, col = _mark(knode)
                    first = self.doc.keys[path + (key,)]
                    self.problems.append(Diagnostic(
                        self.file, line, col,
                        f"duplicate key {key!r} (first defined at line {first[0]})"))
                    continue
                self.doc.keys[path + (key,)] = _mark(knode)
                out[key] = self.build(vnode, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node, deep=True)


class _Refused(yaml.MarkedYAMLError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases.

    Every alias is a copy of its anchor once built, so ten nested aliases of ten
    make 10^10 nodes from a few hundred bytes ("billion laughs"); merge keys
    (``<<: [*a, *a]``) double the composer's own lists the same way. No project
    file uses anchors, so an alias is refused where it stands rather than counted.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(None, None, f"YAML aliases (*{event.anchor}) are not allowed in project files; "
                           "write the value out", event.start_mark)
        return super().compose_node(parent, index)


def load_text(text: str, file: str) -> Located:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except _Refused as exc:
        mark = exc.problem_mark
        raise ConfigError([Diagnostic(file, mark.line + 1, mark.column + 1, exc.problem)]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{exc.context}: {problem}"
        raise ConfigError([Diagnostic(file, line, col, f"YAML syntax error: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([Diagnostic(file, 1, 1, f"YAML error: {exc}")]) from exc
    except RecursionError as exc:
        # the composer recurses once per nesting level
        raise ConfigError([Diagnostic(file, 1, 1, "YAML nested too deeply")]) from exc
    builder = _Builder(file)
    if node is None:
        builder.doc.data = {}
        builder.doc.values[()] = (1, 1)
    else:
        try:
            builder.doc.data = builder.build(node, ())
        except RecursionError as exc:
            raise ConfigError([Diagnostic(file, 1, 1, "YAML nested too deeply")]) from exc
    if builder.problems:
        raise ConfigError(builder.problems)
    return builder.doc


def load_file(path: Path, display: str | None = None) -> Located:
    name = display or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError([Diagnostic(name, 1, 1, "file not found")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([Diagnostic(name, 1, 1, f"not UTF-8 text: {exc.reason}")]) from exc
    return load_text(text, name)
