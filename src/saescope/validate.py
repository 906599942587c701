"""Checks that config `__post_init__`s call where an option is parsed, before any model loads or work starts.

Each raises a one-line SaescopeError naming the option, what was given and the fix; none has side effects (no
folders are made, nothing is read but a path's kind). The CLI turns the error into one line on stderr and exit 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError


def at_least(value: float, low: float, option: str, what: str = "") -> None:
    """value ≥ low (use low=1 for counts that must be positive)."""
    if value < low:
        raise SaescopeError(f"{option} {value}: must be {low} or more{' (' + what + ')' if what else ''}")


def positive(value: float, option: str, what: str = "") -> None:
    """value > 0 (sizes, rates, timeouts)."""
    if not value > 0:
        raise SaescopeError(f"{option} {value}: must be more than 0{' (' + what + ')' if what else ''}")


def between(value: float, low: float, high: float, option: str) -> None:
    if not low <= value <= high:
        raise SaescopeError(f"{option} {value}: must be between {low} and {high}")


def one_of(value: Any, choices: Iterable[Any], option: str) -> None:
    choices = list(choices)
    if value not in choices:
        raise SaescopeError(f"{option} '{value}': use one of {', '.join(map(str, choices))}")


def port(value: int, option: str = "--port") -> None:
    """A TCP port; 0 lets the system pick one."""
    between(value, 0, 65535, option)


def not_a_file(path: str | Path, option: str) -> None:
    """An output folder: may not exist yet, but must not be a file (checked before the work that writes it)."""
    if path and Path(path).exists() and not Path(path).is_dir():
        raise SaescopeError(f"{option} {path}: is a file, not a folder; name a folder (or move the file aside)")


def existing_dir(path: str | Path, option: str, what: str = "folder") -> None:
    if not Path(path).is_dir():
        why = "is a file" if Path(path).exists() else "does not exist"
        raise SaescopeError(f"{option} {path}: {why}; name an existing {what}")


def existing_file(path: str | Path, option: str, what: str = "file") -> None:
    if not Path(path).is_file():
        why = "is a folder" if Path(path).is_dir() else "does not exist"
        raise SaescopeError(f"{option} {path}: {why}; name an existing {what}")
