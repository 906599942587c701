"""The live probe: a unit's activations on a prompt, beside its collated max."""

from __future__ import annotations

from typing import Any

import torch

from saescope.errors import NotFoundError, SaescopeError
from saescope.explore.inputs import prompt_ids, with_bos
from saescope.models import HookedModel
from saescope.units import UnitGroup

MAX_PROBE_CHARS = 4000
MAX_PROBE_TOKENS = 256


def check_probe(text: str) -> None:
    """A probe request's bounds (before the model loads)."""
    if not text.strip():
        raise SaescopeError("empty prompt")
    if len(text) > MAX_PROBE_CHARS:
        raise SaescopeError(f"prompt longer than {MAX_PROBE_CHARS} characters")


@torch.no_grad()
def probe(hm: HookedModel, group: UnitGroup, index: int, text: str, record: dict[str, Any]) -> dict[str, Any]:
    """Unit `index` of `group` on `text` (BOS prepended, as collation ran; EOS where the tokenizer has no BOS):
    per token, or per token pair (lower triangle, query-major) for pair datasets; `normalized` divides by the max
    over the record's top excerpts (clipped at 0)."""
    check_probe(text)
    if not 0 <= index < group.n_units:
        raise NotFoundError(f"unit {index}")
    ids = prompt_ids(hm, text, MAX_PROBE_TOKENS)
    acts = group.extract(hm.run_with_cache(with_bos(hm, ids, eos_if_no_bos=True), None, group.hookpoints))
    values = acts[index, 0].float().tolist()  # [T] or [T(T+1)/2]
    tops = record.get("most_positive_activation_records") or []
    mx = max((max(r["activations"]) for r in tops if r["activations"]), default=0.0)
    return {"tokens": hm.token_strings(ids), "activations": values, "max_activation": mx,
            "normalized": [max(v / mx, 0.0) if mx > 0 else 0.0 for v in values],
            "by_token_pair": group.by_token_pair}
