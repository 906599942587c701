"""Sparse units for collation: attention-SAE latents by token pair.

A latent's pair attribution is non-zero only at the queries where it fires (k of F latents per token), so a dense
[F, B, T(T+1)/2] batch would be ~99 % zeros and its slots would need gigabytes. Here a batch arrives as COO entries
(unit, excerpt, flattened pair, value); the slots keep only each excerpt's max (the score the records are ranked
by), and the full vectors of the (unit, excerpt) pairs that sit in a slot are kept as COO rows, pruned as slots
evict them and densified one unit at a time when records are written. Moments are exact: zeros add only to n.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from saescope.collate.state import Moments, TopSlots, excerpt_keys


class SparseActs(NamedTuple):
    """One batch of a sparse unit group: COO entries over (unit, excerpt in batch, position)."""

    unit: Tensor
    """[nnz] int64."""
    b: Tensor
    """[nnz] int64 excerpt index within the batch."""
    pos: Tensor
    """[nnz] int64 flattened position (pair index for by-token-pair groups)."""
    value: Tensor
    """[nnz] float32."""
    n_excerpts: int
    """B: excerpts in the batch (those without any entry are all zeros)."""


def _key(unit: Tensor, eid: Tensor) -> Tensor:
    return unit.to(torch.int64) * (1 << 40) + eid.to(torch.int64)


@dataclass
class SparseVectors:
    """COO rows (unit, excerpt id, position, value) of the (unit, excerpt) pairs currently held in slots.

    Batches are appended as chunks (a concatenation per batch would copy every row held so far: quadratic), and
    joined when rows are dropped (`keep`) or read (`dense`). 14 bytes a row: int32 unit and excerpt id, int16
    position (int32 past 32,767 positions), float32 value."""

    length: int
    """L: positions per excerpt."""
    chunks: list[tuple[Tensor, Tensor, Tensor, Tensor]] = field(default_factory=list)
    _index: dict[int, tuple[int, int]] | None = None

    @property
    def _pos_dtype(self) -> torch.dtype:
        return torch.int16 if self.length < 2**15 else torch.int32

    @property
    def rows(self) -> int:
        return sum(c[3].numel() for c in self.chunks)

    def _flat(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if len(self.chunks) != 1:
            empty = (torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                     torch.zeros(0, dtype=self._pos_dtype), torch.zeros(0))
            self.chunks = [tuple(torch.cat([c[i] for c in self.chunks]) if self.chunks else empty[i]
                                 for i in range(4))]  # type: ignore[list-item]
            self._index = None
        return self.chunks[0]

    def columns(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(unit, excerpt id, position, value) of every row."""
        return self._flat()

    def add(self, unit: Tensor, eid: Tensor, pos: Tensor, value: Tensor) -> None:
        self.chunks.append((unit.to(torch.int32), eid.to(torch.int32), pos.to(self._pos_dtype), value.float()))
        self._index = None

    def keep(self, unit: Tensor, eid: Tensor) -> None:
        """Drop every row whose (unit, excerpt) is not among the given pairs."""
        u, e, p, v = self._flat()
        mask = torch.isin(_key(u, e), _key(unit, eid))
        self.chunks, self._index = [(u[mask], e[mask], p[mask], v[mask])], None

    def dense(self, unit: int, eids: list[int]) -> Tensor:
        """[len(eids), L] activations of `unit` on those excerpts (zeros where nothing is stored)."""
        if self._index is None:  # sort once by (unit, excerpt); then each pair is one contiguous run
            u, e, p, v = self._flat()
            order = torch.argsort(_key(u, e), stable=True)
            u, e, p, v = (t[order] for t in (u, e, p, v))
            self.chunks = [(u, e, p, v)]
            uniq, counts = torch.unique_consecutive(_key(u, e), return_counts=True)
            starts = torch.cumsum(counts, 0) - counts
            self._index = dict(zip(uniq.tolist(), zip(starts.tolist(), counts.tolist())))
        _, _, pos, value = self.chunks[0]
        out = torch.zeros(len(eids), self.length)
        for r, e in enumerate(eids):
            span = self._index.get(unit * (1 << 40) + e)
            if span is not None:
                s, n = span
                out[r, pos[s:s + n].long()] = value[s:s + n]
        return out


def sparse_update(top: TopSlots, pool: TopSlots, maxima: TopSlots, moments: Moments, vectors: SparseVectors,
                  acts: SparseActs, ids: Tensor, seed: int) -> None:
    """The sparse counterpart of GroupState.update: the same slots, scores and moments as the dense batch."""
    U, B, L = top.ids.shape[0], acts.n_excerpts, vectors.length
    # excerpt max per (unit, excerpt): the dense batch's max over L values, zeros included
    flat = acts.unit * B + acts.b
    mx = torch.zeros(U * B).scatter_reduce(0, flat, acts.value, "amax", include_self=True).view(U, B)
    if L > 0 and acts.value.numel():  # an excerpt with all L positions filled can have a negative max
        filled = torch.bincount(flat, minlength=U * B).view(U, B) >= L
        if bool(filled.any()):
            lo = torch.full((U * B,), float("inf")).scatter_reduce(0, flat, acts.value, "amax", include_self=False)
            mx = torch.where(filled, lo.view(U, B), mx)
    score = mx.double()
    top.update(score, ids, mx[:, :, None])
    neg_key = -excerpt_keys(seed, ids, U).T  # [U, B]
    pool.update(neg_key, ids, mx[:, :, None])
    maxima.update(neg_key, ids, mx[:, :, None])
    # exact power sums: every (unit, excerpt, position) counts in n; only the entries add to the other sums
    moments.add_entries(acts.unit, acts.value, float(B * L))
    # keep the vectors of the entries whose (unit, excerpt) now sits in a top or pool slot
    # decided per (unit, excerpt) [U, B], then looked up per entry: a per-entry gather of the slots ([nnz, k] and
    # [nnz, pool] ids, nnz ~ 10^6 per batch) cost ~0.7 GB and most of the update's time
    in_slots = (top.ids[:, :, None] == ids[None, None, :]).any(1) | (pool.ids[:, :, None] == ids[None, None, :]).any(1)
    held = in_slots[acts.unit, acts.b]
    vectors.add(acts.unit[held], ids[acts.b[held]], acts.pos[held], acts.value[held])


def prune_vectors(top: TopSlots, pool: TopSlots, vectors: SparseVectors) -> None:
    """Forget the vectors of pairs that every slot has evicted."""
    U = top.ids.shape[0]
    units = torch.arange(U)[:, None]
    u = torch.cat([units.expand_as(top.ids), units.expand_as(pool.ids)], 1).flatten()
    e = torch.cat([top.ids, pool.ids], 1).flatten()
    ok = e >= 0
    vectors.keep(u[ok], e[ok])
