"""Steering: greedy continuation with a unit's write direction added at its hookpoint, beside the unsteered one."""

from __future__ import annotations

from typing import Any

import torch

from saescope.errors import SaescopeError
from saescope.explore.inputs import prompt_ids, with_bos
from saescope.models import HookedModel
from saescope.units import WriteDirection


def check_steer(prompt: str, strength: float, tokens: int) -> None:
    """A steering request's bounds (a one-line error naming the field)."""
    if not prompt.strip() or len(prompt) > 2000:
        raise SaescopeError("give a prompt of 1 to 2000 characters")
    if not -1e4 <= strength <= 1e4 or not 1 <= tokens <= 64:
        raise SaescopeError("strength within ±10000, tokens 1 to 64")


@torch.no_grad()
def steer(hm: HookedModel, target: WriteDirection, prompt: str, strength: float, n_tokens: int = 24) -> dict[str, Any]:
    """Greedy continuations of `prompt`, unsteered and with `strength · direction` added at the target's hookpoint
    at every position (the prompt's and the generated ones')."""
    ids = prompt_ids(hm, prompt, 256)
    x = with_bos(hm, ids)
    pad = hm.tokenizer.pad_token_id if hm.tokenizer.pad_token_id is not None else hm.tokenizer.eos_token_id

    def greedy() -> list[int]:
        out = hm.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n_tokens,
                                do_sample=False, pad_token_id=pad)
        return out[0, x.shape[1]:].tolist()
    plain = greedy()
    d = target.direction.to(x.device)
    with hm.patch(target.hookpoint, lambda a: a + (strength * d).to(a.dtype)):
        steered = greedy()
    return {"prompt_tokens": hm.token_strings(ids), "unsteered": hm.token_strings(plain),
            "steered": hm.token_strings(steered), "hookpoint": target.hookpoint, "strength": strength,
            "direction_norm": float(target.direction.norm())}
