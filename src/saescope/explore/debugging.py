"""A debugger request from the viewer: rank the nodes behind a next token (ablate, trace), bounded so that one
request does not hold the model for every other page."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from saescope.errors import SaescopeError
from saescope.models import HookedModel

DEBUG_MAX_TOKENS = 128
"""The longest prompt /debug takes. Its forward and backward hold the model lock (on gemma-3-270m, one CPU thread:
~4 s at 64 tokens, ~10 s at 256); the ranking that follows runs without it."""


def check_debug(prompt: str, by: str) -> None:
    """A debug request's bounds that need no model (a one-line error naming the field)."""
    if len(prompt) > 4000:
        raise SaescopeError("prompt longer than 4000 characters")
    if by not in ("act_grad", "direct_effect"):
        raise SaescopeError("by: act_grad or direct_effect")


def debug_request(hm: HookedModel, prompt: str, target: str, saes: dict[str, Any], names: dict[str, str],
                  notes: Any, *, distractor: str = "", ablate: dict[str, str] | None = None, trace: str = "",
                  pairs_for: str = "", freeze_norms: str = "final", top: int = 30, by: str = "act_grad",
                  model_lock: AbstractContextManager[Any] | None = None) -> dict[str, Any]:
    """The debugger's JSON for a prompt: `saes` {hookpoint: SAE} spliced in, named `names[hookpoint]`; `notes`
    (NodeNotes) adds the collated explanations and means; the `top` nodes (1..200) by `by`. `model_lock` is held
    around each pass through the model only."""
    from saescope.debug import debug

    check_debug(prompt, by)
    n_tokens = len(hm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n_tokens > DEBUG_MAX_TOKENS:
        raise SaescopeError(f"prompt is {n_tokens} tokens; /debug takes at most {DEBUG_MAX_TOKENS} so that one "
                            "request does not hold the model for every other page (`saescope debug` has no limit)")
    res = debug(hm, prompt, target, distractor, saes, ablate=ablate or None, means=notes.means(ablate or {}),
                trace=trace, pairs_for=pairs_for, freeze_norms=freeze_norms, model_lock=model_lock)
    out = res.to_json(res.nodes.top(max(1, min(top, 200)), by=by), notes)
    out["saes"] = [f"{names[h]} ({h})" for h in saes]
    return out
