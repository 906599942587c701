"""Models: resolve a spec to a transformers model and expose uniform hookpoints."""

from saescope.models.hooks import HOOK_KINDS, HookedModel, canonical_hookpoint, natural_key, parse_hookpoint
from saescope.models.loading import DEFAULT_MODEL, EMBEDDED, canonical_name, load_model, resolve_model_dir

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "HOOK_KINDS",
    "HookedModel",
    "canonical_hookpoint",
    "canonical_name",
    "load_model",
    "natural_key",
    "parse_hookpoint",
    "resolve_model_dir",
]
