"""Run a model from block L on: blocks before L are skipped and block L gets a recorded input instead.

The spliced metrics run the model once clean and then once per dictionary spliced at layer L; everything before
block L is the same in all of those passes, so the later passes start from the clean pass's input of block L
(gemma-3-270m at layer 9: 9 of 18 blocks skipped per pass). The embedding and the unembedding still run; every
`transformers` decoder block of the supported architectures (v5) takes the hidden states first and returns them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor, nn

from saescope.models.hooks import HookedModel


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def record_block_inputs(hm: HookedModel, layers: Iterable[int], out: dict[int, Tensor]) -> Iterator[None]:
    """During the forward passes inside, out[L] = the hidden states [B, T, d] entering block L (= resid_pre.L)."""
    handles = []
    for layer in set(layers):
        def grab(mod: nn.Module, args: tuple, kwargs: dict, layer: int = layer) -> None:
            out[layer] = _hidden(args, kwargs).detach()
        handles.append(hm.layers[layer].register_forward_pre_hook(grab, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def start_at_block(hm: HookedModel, layer: int, hidden: Tensor) -> Iterator[None]:
    """During the forward passes inside, blocks < layer are skipped (identity) and block `layer` receives `hidden`
    [B, T, d] as its input, before any other pre-hook of that block (a resid_pre patch then sees it)."""
    if layer <= 0:
        yield
        return

    def inject(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def identity(*args: Any, **kwargs: Any) -> Tensor:
        return _hidden(args, kwargs)

    skipped = [hm.layers[i] for i in range(layer)]
    for block in skipped:
        block.forward = identity  # an instance attribute shadows the class's forward until deleted below
    handle = hm.layers[layer].register_forward_pre_hook(inject, with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        handle.remove()
        for block in skipped:
            del block.forward
