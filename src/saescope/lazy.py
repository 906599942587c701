"""Lazy package attributes: a stage's `__init__` names what it offers without importing torch, so importing its
`config` (which imports the package first) stays cheap."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class LazyPackage(types.ModuleType):
    """A package whose names (`_lazy_names`: name → module) load their module on first access."""

    def __getattr__(self, attr: str) -> Any:
        names = self.__dict__.get("_lazy_names", {})
        if attr in names:
            return getattr(importlib.import_module(names[attr]), attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def __setattr__(self, attr: str, value: Any) -> None:
        # Importing a submodule binds it on its package; where a lazy name is also a submodule's name
        # (graph.prune: the function in the module), the name keeps meaning the function, as an eager import would.
        if isinstance(value, types.ModuleType) and attr in self.__dict__.get("_lazy_names", {}):
            return
        super().__setattr__(attr, value)


def lazy_package(package: str, names: dict[str, str]) -> list[str]:
    """Make `package` (its `__name__`) load `names[attr]` (a module) on first access of `attr`; returns `__all__`."""
    module = sys.modules[package]
    module.__dict__["_lazy_names"] = dict(names)
    module.__class__ = LazyPackage
    return sorted(names)
