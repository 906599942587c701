"""Atomic file writes and small JSON helpers shared by every stage.

Everything saescope writes goes to a temporary name in the same directory and is renamed into place, so a
killed job never leaves a half-written file under a name a reader would open.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it takes the place of `path` (a folder already
    there is removed only once the new one is in place), on failure it is deleted and `path` is left as it was."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.{os.getpid()}.old") if path.exists() else None
        if old is not None:
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_nans(obj: Any) -> Any:
    # JSON has no NaN; TDB's orjson writer emits null for NaN/Inf, so we do the same.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_nans(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_nans(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON atomically (NaN/Inf become null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean_nans(obj), indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON, turning a missing or malformed file into a one-line SaescopeError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise SaescopeError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise SaescopeError(f"{path}: is a folder, not a {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SaescopeError(f"{path}: {what} is not valid JSON ({e}); delete it or restore it from a good copy") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """The user cache directory for converted models (override with SAESCOPE_CACHE)."""
    env = os.environ.get("SAESCOPE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "saescope"
