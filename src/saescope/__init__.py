"""saescope: from a language model to browsable, scored, human-readable features.

Importing the package is cheap: torch, transformers and the stages are imported lazily, on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "saescope.models",
    "ModelSpec": "saescope.models",
    "HookedModel": "saescope.models",
    "ActivationStore": "saescope.store",
    "StoreWriter": "saescope.store",
    "SaescopeError": "saescope.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from saescope.errors import SaescopeError
    from saescope.models import HookedModel, ModelSpec, load_model
    from saescope.store import ActivationStore, StoreWriter


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saescope' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
