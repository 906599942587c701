"""Token ids as the model's input: the explore functions run prompts with BOS prepended, as collation did."""

from __future__ import annotations

import torch
from torch import Tensor

from saescope.models import HookedModel


def prompt_ids(hm: HookedModel, text: str, max_tokens: int) -> list[int]:
    """The text's token ids (no special tokens), cut at `max_tokens`."""
    return hm.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]


def with_bos(hm: HookedModel, ids: list[int], eos_if_no_bos: bool = False) -> Tensor:
    """[1, T(+1)] on the model's device: BOS + ids (a tokenizer without BOS: EOS with `eos_if_no_bos`, else none)."""
    bos = hm.tokenizer.bos_token_id
    if bos is None and eos_if_no_bos:
        bos = hm.tokenizer.eos_token_id
    return torch.tensor([([bos] if bos is not None else []) + ids], device=next(hm.model.parameters()).device)
