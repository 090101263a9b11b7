"""A small declarative schema checker for located YAML documents.

Each rule knows how to check a value and say, with position, what was expected.
Unknown keys get a close-match suggestion because a typo is the usual cause.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import jinja2

from builder.common import templates
from builder.config.yamlsrc import Located, PathKey
from builder.errors import Diagnostic


class Rule:
    expected = "a value"

    def check(self, doc: Located, path: PathKey, value: Any, out: list[Diagnostic]) -> None:
        raise NotImplementedError


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping"}.get(type(value), type(value).__name__)


@dataclass
class Str(Rule):
    pattern: Optional[str] = None
    choices: Optional[tuple[str, ...]] = None
    expected: str = "a string"

    def check(self, doc, path, value, out):
        if not isinstance(value, str):
            out.append(doc.diag(path, f"expected {self.expected}, got {_kind(value)} {value!r}"))
            return
        if self.choices is not None and value not in self.choices:
            hint = difflib.get_close_matches(value, self.choices, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            out.append(doc.diag(path, f"expected one of {', '.join(self.choices)}; got {value!r}{more}"))
        elif self.pattern is not None and not re.fullmatch(self.pattern, value):
            out.append(doc.diag(path, f"expected {self.expected}; got {value!r}"))


@dataclass
class Int(Rule):
    minimum: Optional[int] = None
    expected: str = "an integer"

    def check(self, doc, path, value, out):
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(doc.diag(path, f"expected {self.expected}, got {_kind(value)} {value!r}"))
        elif self.minimum is not None and value < self.minimum:
            out.append(doc.diag(path, f"expected {self.expected} >= {self.minimum}, got {value}"))


@dataclass
class Bool(Rule):
    expected: str = "true or false"

    def check(self, doc, path, value, out):
        if not isinstance(value, bool):
            out.append(doc.diag(path, f"expected {self.expected}, got {_kind(value)} {value!r}"))


@dataclass
class ListOf(Rule):
    item: Rule
    unique: bool = False
    expected: str = "a list"

    def check(self, doc, path, value, out):
        if not isinstance(value, list):
            out.append(doc.diag(path, f"expected {self.expected}, got {_kind(value)}"))
            return
        seen: dict[Any, int] = {}
        for i, item in enumerate(value):
            self.item.check(doc, path + (i,), item, out)
            if self.unique and isinstance(item, (str, int)):
                if item in seen:
                    out.append(doc.diag(path + (i,), f"duplicate entry {item!r}"))
                seen.setdefault(item, i)


@dataclass
class MapOf(Rule):
    """A mapping whose keys are free-form (checked by key_rule) and values share one rule."""

    value: Rule
    key_pattern: Optional[str] = None
    key_expected: str = "a key"
    expected: str = "a mapping"

    def check(self, doc, path, value, out):
        if not isinstance(value, dict):
            out.append(doc.diag(path, f"expected {self.expected}, got {_kind(value)}"))
            return
        for k, v in value.items():
            if self.key_pattern and not re.fullmatch(self.key_pattern, k):
                out.append(doc.diag(path + (k,), f"expected {self.key_expected}; got {k!r}", key=True))
            self.value.check(doc, path + (k,), v, out)


@dataclass
class Field:
    rule: Rule
    required: bool = False


@dataclass
class Struct(Rule):
    fields: dict[str, Field] = field(default_factory=dict)
    expected: str = "a mapping"

    def check(self, doc, path, value, out):
        if not isinstance(value, dict):
            out.append(doc.diag(path, f"expected {self.expected}, got {_kind(value)}"))
            return
        for k, v in value.items():
            spec = self.fields.get(k)
            if spec is None:
                hint = difflib.get_close_matches(k, list(self.fields), n=1, cutoff=0.6)
                more = f"; did you mean {hint[0]!r}?" if hint else f"; expected one of: {', '.join(sorted(self.fields))}"
                out.append(doc.diag(path + (k,), f"unknown key {k!r}{more}", key=True))
                continue
            spec.rule.check(doc, path + (k,), v, out)
        where = ".".join(str(p) for p in path) or "top level"
        for name, spec in self.fields.items():
            if spec.required and name not in value:
                out.append(doc.diag(path, f"missing required key {name!r} in {where}"))


@dataclass
class OneOf(Rule):
    """Chooses a rule by the value's Python type, e.g. a package name or a mapping."""

    by_type: dict[type, Rule]
    expected: str = "a value"

    def check(self, doc, path, value, out):
        for typ, rule in self.by_type.items():
            if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
                rule.check(doc, path, value, out)
                return
        out.append(doc.diag(path, f"expected {self.expected}, got {_kind(value)}"))


@dataclass
class Custom(Rule):
    func: Callable[[Located, PathKey, Any, list], None] = lambda *a: None

    def check(self, doc, path, value, out):
        self.func(doc, path, value, out)


def validate(doc: Located, rule: Rule) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    rule.check(doc, (), doc.data, out)
    return out


def _template(doc: Located, path, value, out) -> None:
    if not isinstance(value, str):
        out.append(doc.diag(path, f"expected a template string, got {type(value).__name__}"))
        return
    try:
        templates.environment().parse(value)
    except jinja2.TemplateSyntaxError as exc:
        out.append(doc.diag(path, f"bad template: {exc.message}"))


# A Jinja template string (image names, tags, archive refs), checked for syntax where it is read.
TEMPLATE = Custom(_template)
TAGS = Struct({
    "immutable": Field(ListOf(TEMPLATE)),
    "moving": Field(ListOf(TEMPLATE)),
})
