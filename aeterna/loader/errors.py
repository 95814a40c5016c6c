"""The one error type of the loaders: a located, one-line message.

Every problem with a unit file is reported as
``FILE:LINE: KEY.PATH: what was expected, what was found``
and the CLI prints these lines and exits 2; no traceback ever reaches a user.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnitError(Exception):
    """A problem with a unit file, located to the file, line and key."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class UnitWarning:
    """A directive that was read but is not implemented, or is ignored."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return str(UnitError(self.file, self.line, self.key, self.message))


class UnitErrors(Exception):
    """Several UnitErrors from one load, in file order."""

    def __init__(self, errors: list[UnitError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
