"""Jinja2 for text that may come from a pull request: sandboxed, strict, and confined to the project.

Templates in templates/ and the tag and name patterns in releases/*.yaml are
config, and config may be hostile: rendering goes through jinja2's immutable
sandbox (no attribute walks to ``__globals__``, no mutation of what it is
given), undefined names are errors, and a template file is read only from
inside its base directory after resolving symlinks, and only up to a size.
"""
from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from builder.errors import BuildError

MAX_TEMPLATE = 1 << 20


def environment(**kw) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                         keep_trailing_newline=True, **kw)


def confined(base: Path, relative: str, what: str) -> Path:
    """base/relative, refused unless it is a regular file inside base once every symlink is resolved."""
    root = Path(base).resolve()
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise BuildError(f"{what}: template path {relative!r} must be relative to {root} without '..'")
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise BuildError(f"{what}: template {relative!r} resolves to {path}, outside {root}")
    if not path.is_file():
        raise BuildError(f"{what}: template {relative!r} is not a file in {root}")
    if path.stat().st_size > MAX_TEMPLATE:
        raise BuildError(f"{what}: template {relative!r} is larger than {MAX_TEMPLATE} bytes")
    return path


def render_file(base: Path, relative: str, what: str, **ctx) -> str:
    path = confined(base, relative, what)
    return render_string(path.read_text(encoding="utf-8"), f"{what}: {relative}", **ctx)


_DEFAULT = None
_COMPILED: dict[tuple[ImmutableSandboxedEnvironment, str], jinja2.Template] = {}


def render_string(template: str, what: str, env: ImmutableSandboxedEnvironment = None, **ctx) -> str:
    global _DEFAULT
    if env is None:
        _DEFAULT = _DEFAULT or environment()
        env = _DEFAULT
    try:
        # names and tags render once per flavour and arch: compile each template once
        key = (env, template)
        if key not in _COMPILED:
            _COMPILED[key] = env.from_string(template)
        return _COMPILED[key].render(**ctx)
    except jinja2.TemplateError as exc:   # SecurityError included: an escape attempt is a refusal
        raise BuildError(f"{what}: cannot render template: {exc}") from exc
