"""One activation stream: corpus contexts → hooked forward passes → token rows, split across torchrun ranks by one
rule. Capture (into a store), online training and collation read the model through it; transcoder training reads
(input, output) pairs from it by asking for both hookpoints.

The rule (`rank_slice`): the stream is read in rounds; a round's contexts are cut into contiguous slices of `per`
contexts (default ⌈round / world⌉), and rank r runs the r-th. Every rank reads every round, so all of them take
part in the round's collectives, and every context keeps its global index, so a consumer puts the rows back in a
single process's order (capture's shards, online training's gathered rows) or merges keyed on it (collation).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.config import middle_layer
from saescope.models import HookedModel


def default_hookpoint(hm: HookedModel) -> str:
    """The hookpoint read when none is asked for: the middle layer's residual stream."""
    return f"resid_post.{middle_layer(hm.n_layers)}"


def valid_mask(ids: Tensor, special: set[int]) -> Tensor:
    """[B, T] bool: positions whose activations are kept (not BOS, not padding)."""
    mask = torch.ones_like(ids, dtype=torch.bool)
    for s in special:
        mask &= ids != s
    return mask


def special_tokens(hm: HookedModel) -> set[int]:
    """Token ids never kept as rows: BOS and padding."""
    return {t for t in (hm.tokenizer.bos_token_id, hm.tokenizer.pad_token_id) if t is not None}


def rank_slice(n: int, rank: int, world: int, per: int | None = None) -> tuple[int, int]:
    """[lo, hi) of rank `rank`'s contexts in a round of `n`: the rank-th contiguous slice of `per` (default
    ⌈n / world⌉); empty for the ranks past the end of a short round."""
    per = per if per is not None else -(-n // world)
    lo = min(rank * per, n)
    return lo, min(lo + per, n)


@dataclass
class Round:
    """One round of the stream, as seen by this rank."""

    start: int
    """Global index of the round's first context."""
    size: int
    """Contexts in the whole round (every rank's)."""
    context_len: int
    offset: int
    """Global index of this rank's first context."""
    mine: list[list[int]]
    """This rank's contexts (possibly none)."""


@dataclass
class Forward:
    """One forward pass over a batch of this rank's contexts."""

    first: int
    """Global index of the batch's first context."""
    ids: Tensor  # [B, T] token ids, on the model's device
    mask: Tensor  # [B, T] bool: the positions kept as rows (valid_mask)
    rows: dict[str, Tensor]  # hookpoint → [mask.sum(), width] float32 rows on the CPU, in (context, position) order


class ActivationStream:
    """Contexts → rounds (`next_round`) → this rank's forward passes (`forwards`), at `hookpoints`."""

    def __init__(self, hm: HookedModel, contexts: Iterator[list[int]], hookpoints: list[str], batch_size: int,
                 start: int = 0) -> None:
        from saescope import distributed as dist

        self.hm, self.contexts, self.hookpoints, self.batch_size = hm, contexts, hookpoints, batch_size
        self.index = start  # global index of the next context
        self.rank, self.world = dist.rank(), dist.world_size()
        self.special = special_tokens(hm)

    def next_round(self, size: int, per: int | None = None) -> Round | None:
        """The next `size` contexts (fewer at the end; None when none are left), this rank's slice of them."""
        contexts = list(itertools.islice(self.contexts, size))
        if not contexts:
            return None
        lo, hi = rank_slice(len(contexts), self.rank, self.world, per)
        rnd = Round(self.index, len(contexts), len(contexts[0]), self.index + lo, contexts[lo:hi])
        self.index += len(contexts)
        return rnd

    def forwards(self, rnd: Round) -> Iterator[Forward]:
        """This rank's contexts of a round, `batch_size` per forward pass (each stops after its last hookpoint)."""
        hm = self.hm
        device = next(hm.model.parameters()).device
        for b in range(0, len(rnd.mine), self.batch_size):
            ids = torch.tensor(rnd.mine[b:b + self.batch_size], device=device)  # [B, T]
            with torch.no_grad():
                cache = hm.run_with_cache(ids, None, self.hookpoints)
            mask = valid_mask(ids, self.special)  # [B, T]
            rows = {h: hm.token_rows(h, cache[h])[mask].float().cpu() for h in self.hookpoints}  # [rows, width]
            yield Forward(rnd.offset + b, ids, mask, rows)

    def empty_rows(self, rnd: Round) -> dict[str, Tensor]:
        """No rows, at every hookpoint's width (a rank without contexts in a short round)."""
        return {h: torch.empty(0, self.hm.width(h, rnd.context_len)) for h in self.hookpoints}
