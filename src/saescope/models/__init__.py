"""Models: resolve a spec to a transformers model and expose uniform hookpoints.

Light on import (no torch): the names below load their module on first use; hookpoint names live in
`models/hookpoints.py`, the hooked forward in `models/hooks.py`, the model's parts in `models/internals.py`."""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    **dict.fromkeys(("HOOK_KINDS", "canonical_hookpoint", "natural_key", "parse_hookpoint"),
                    "saescope.models.hookpoints"),
    **dict.fromkeys(("HookedModel",), "saescope.models.hooks"),
    **dict.fromkeys(("DEFAULT_MODEL", "EMBEDDED", "canonical_name", "load_model", "resolve_model_dir"),
                    "saescope.models.loading"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.models.hookpoints import HOOK_KINDS, canonical_hookpoint, natural_key, parse_hookpoint
    from saescope.models.hooks import HookedModel
    from saescope.models.loading import DEFAULT_MODEL, EMBEDDED, canonical_name, load_model, resolve_model_dir
