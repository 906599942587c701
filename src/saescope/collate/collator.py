"""One streaming pass over a corpus → per-unit top-k excerpts, random and quantile samples, moments.

Memory is set by units × slots × excerpt length, never by corpus size: only the excerpts still referenced by
some unit's slots keep their token ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from saescope.collate.config import SlotSizes
from saescope.collate.sparse import SparseActs, SparseVectors, prune_vectors, sparse_update
from saescope.collate.state import Moments, TopSlots, excerpt_keys, pair_keys
from saescope.records import ActivationRecord, NeuronId, NeuronRecord
from saescope.units import UnitGroup

log = logging.getLogger(__name__)

QUANTILES = (0.5, 0.9, 0.99, 0.999)


@dataclass
class GroupState:
    group: UnitGroup
    top: TopSlots
    pool: TopSlots
    maxima: TopSlots
    moments: Moments
    seed: int = 0
    vectors: SparseVectors | None = None
    """Sparse groups: the slots' activation vectors as COO rows (the slots' own acts are then [U, k, 1] maxima)."""
    pruned_rows: int = 0
    """Sparse groups: rows held after the last prune (the next one comes when they have doubled)."""

    @classmethod
    def create(cls, group: UnitGroup, length: int, sizes: SlotSizes, seed: int) -> "GroupState":
        U = group.n_units
        vectors = SparseVectors(length) if group.sparse else None
        slot_len = 1 if group.sparse else length
        return cls(group, TopSlots.empty(U, sizes.top_k, slot_len),
                   TopSlots.empty(U, sizes.pool, slot_len, unique_scores=True),
                   TopSlots.empty(U, sizes.max_pool, 1, unique_scores=True), Moments.empty(U), seed, vectors)

    def update(self, acts: Tensor | SparseActs, ids: Tensor) -> None:
        """acts [U, B, L] (or the sparse entries of such a batch) for excerpts `ids` [B]."""
        if isinstance(acts, SparseActs):
            assert self.vectors is not None
            sparse_update(self.top, self.pool, self.maxima, self.moments, self.vectors, acts, ids, self.seed)
            if self.vectors.rows > max(2 * self.pruned_rows, 4_000_000):  # evicted rows: memory stays ~2x held
                self.prune()
            return
        U = acts.shape[0]
        mx = acts.amax(dim=2)  # [U, B]
        self.top.update(mx.double(), ids, acts)
        neg_key = -excerpt_keys(self.seed, ids, U).T  # [U, B]: keep the smallest keys = a uniform sample
        self.pool.update(neg_key, ids, acts)
        self.maxima.update(neg_key, ids, mx[:, :, None])
        self.moments.update(acts.reshape(U, -1))

    def merge(self, other: "GroupState") -> None:
        for a, b in ((self.top, other.top), (self.pool, other.pool), (self.maxima, other.maxima)):
            a.merge(b)
        self.moments.merge(other.moments)
        if self.vectors is not None and other.vectors is not None:
            self.vectors.add(*other.vectors.columns())
            self.prune()

    def nbytes(self) -> int:
        """Bytes of the tensors this state holds (slots, samples, moments, sparse vectors)."""
        ts = [t for s in (self.top, self.pool, self.maxima) for t in (s.score, s.ids, s.acts)]
        ts += [self.moments.sums, self.moments.hist] if self.moments.hist is not None else [self.moments.sums]
        ts += [t for c in (self.vectors.chunks if self.vectors is not None else []) for t in c]
        return sum(t.numel() * t.element_size() for t in ts)

    def prune(self) -> None:
        """Sparse groups: forget the vectors of (unit, excerpt) pairs no slot holds any more."""
        if self.vectors is not None:
            prune_vectors(self.top, self.pool, self.vectors)
            self.pruned_rows = self.vectors.rows

    def slot_acts(self, slots: TopSlots, u: int) -> Tensor:
        """[k, L] activations of unit u on the excerpts of its slots."""
        if self.vectors is None:
            return slots.acts[u]
        return self.vectors.dense(u, slots.ids[u].tolist())

    def sort(self) -> None:
        for slots in (self.top, self.pool, self.maxima):
            slots.sort()

    def referenced_ids(self) -> Tensor:
        return torch.unique(torch.cat([self.top.ids.flatten(), self.pool.ids.flatten()]))


@dataclass
class ExcerptTokens:
    """Token ids of the excerpts still referenced by some slot, as int32 rows (256 bytes per 64-token excerpt).

    Rows arrive in per-batch chunks and are compacted to the referenced ones by `prune`; a lookup index is
    built on first `get` (after the pass).
    """

    chunks: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    """([n] int64 excerpt ids, [n, T] int32 token ids) pairs."""
    _index: dict[int, int] | None = None

    def add(self, ids: Tensor, token_ids: Tensor) -> None:
        self.chunks.append((ids.to(torch.int64).cpu().clone(), token_ids.to(torch.int32).cpu().clone()))
        self._index = None

    def flat(self) -> tuple[Tensor, Tensor]:
        if len(self.chunks) != 1:
            ids = torch.cat([c[0] for c in self.chunks]) if self.chunks else torch.zeros(0, dtype=torch.int64)
            toks = torch.cat([c[1] for c in self.chunks]) if self.chunks else torch.zeros(0, 0, dtype=torch.int32)
            self.chunks, self._index = [(ids, toks)], None
        return self.chunks[0]

    def prune(self, keep: Tensor) -> None:
        ids, toks = self.flat()
        mask = torch.isin(ids, keep)
        self.chunks, self._index = [(ids[mask], toks[mask])], None

    def get(self, eid: int) -> list[int]:
        ids, toks = self.flat()
        if self._index is None:
            self._index = {i: r for r, i in enumerate(ids.tolist())}
        return toks[self._index[eid]].tolist()


def quantile_boundaries(maxima: TopSlots) -> Tensor:
    """[U, 4] excerpt-max values at quantiles 0.5, 0.9, 0.99, 0.999 (from the uniform pool of maxima)."""
    vals = maxima.acts[:, :, 0].double()  # [U, M]
    valid = maxima.ids >= 0
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    out = torch.full((vals.shape[0], len(QUANTILES)), float("nan"), dtype=torch.float64)
    n = valid.sum(1)
    for count in torch.unique(n).tolist():  # rows with the same number of valid entries share one quantile call
        if count == 0:
            continue
        rows = n == count
        v = vals[rows].masked_fill(~valid[rows], float("inf")).sort(dim=1).values[:, :count]
        out[rows] = torch.quantile(v, q, dim=1).T
    return out


def build_records(state: GroupState, decode: Callable[[int], list[str]], sizes: SlotSizes) -> Iterator[NeuronRecord]:
    """Finalize one group's state into NeuronRecords (index = unit), one at a time: a group's records as Python
    objects would take ~0.5 GB for 4k latents. Vectorised per group; Python per record.

    `decode(excerpt_id)` gives the excerpt's token strings."""
    g = state.group
    U = g.n_units
    state.sort()
    mean, var, skew, kurt = (t.tolist() for t in state.moments.stats())
    bounds = quantile_boundaries(state.maxima)  # [U, 4]
    # candidates for the quantile buckets: pool ∪ top, each with its excerpt max, bucket and key
    cand_ids = torch.cat([state.pool.ids, state.top.ids], 1)  # [U, P + k]
    cand_max = torch.cat([state.pool.acts, state.top.acts], 1).amax(2).double()  # [U, P + k] excerpt maxima
    bucket = torch.searchsorted(bounds.nan_to_num(float("inf")).contiguous(), cand_max.contiguous(), right=False)
    keys = pair_keys(state.seed, cand_ids, torch.arange(U)[:, None])
    keys = keys.masked_fill(cand_ids < 0, float("inf"))
    order = keys.argsort(dim=1).tolist()
    cand_ids_l, bucket_l = cand_ids.tolist(), bucket.tolist()
    top_ids, top_score = state.top.ids.tolist(), state.top.score.tolist()
    pool_ids = state.pool.ids.tolist()
    acts_r = lambda t: t.double().numpy().round(6)  # noqa: E731  (in float64: 0.192219, not 0.19221900403499603)
    for u in range(U):
        top_t, pool_t = state.slot_acts(state.top, u), state.slot_acts(state.pool, u)
        top_a, pool_a, cand_a = acts_r(top_t), acts_r(pool_t), acts_r(torch.cat([pool_t, top_t]))

        def rec(eid: int, acts: np.ndarray) -> ActivationRecord:
            return ActivationRecord(activations=acts, tokens=decode(eid))  # float64 rows: `records.dumps` writes them

        top = [rec(i, top_a[s]) for s, i in enumerate(top_ids[u]) if i >= 0 and top_score[u][s] > float("-inf")]
        random_sample = [rec(i, pool_a[s]) for s, i in enumerate(pool_ids[u]) if i >= 0][: sizes.n_random]
        buckets: list[list[ActivationRecord]] = [[] for _ in range(len(QUANTILES) + 1)]
        seen: set[int] = set()
        for c in order[u]:
            eid = cand_ids_l[u][c]
            if eid < 0 or eid in seen:
                continue
            seen.add(eid)
            b = bucket_l[u][c]
            if len(buckets[b]) < sizes.n_quantile:
                buckets[b].append(rec(eid, cand_a[c]))
        yield NeuronRecord(
            neuron_id=NeuronId(neuron_index=u, layer_index=g.layer),
            random_sample=random_sample,
            random_sample_by_quantile=buckets,
            quantile_boundaries=bounds[u].tolist(),
            mean=mean[u], variance=var[u], skewness=skew[u], kurtosis=kurt[u],
            most_positive_activation_records=top,
        )
