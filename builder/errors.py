"""Errors that stop a build with a message a release engineer can act on."""
from __future__ import annotations

from dataclasses import dataclass


class BuildError(Exception):
    """A failure the user caused or must fix: printed without a traceback."""


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ConfigError(BuildError):
    """One or more problems in families.yaml or a release file."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))
