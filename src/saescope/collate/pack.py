"""A group's final state → the compact record tensors (`saescope.compact_records`) and its unit table, vectorised.

`collator.build_records` is the reference: it builds every record in Python (~10 ms a unit with its JSON). Here
the same choices (top excerpts, the first valid pool slots as the random sample, quantile buckets filled in key
order from pool ∪ top) are made for all units at once as tensor ops, and each (unit, excerpt) pair's activations
are stored once however many lists refer to it. A differential test holds the records built from these tensors
equal, byte for byte, to the reference's JSON.

Shapes: U units, k top slots, P pool slots, C = P + k candidates, R rows (distinct (unit, excerpt) pairs), L values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.collate.collator import QUANTILES, GroupState, quantile_boundaries
from saescope.collate.config import SlotSizes
from saescope.collate.state import pair_keys
from saescope.io import clean_nans

N_BUCKETS = len(QUANTILES) + 1
CSR_BELOW = 0.3
"""Rows whose non-zero fraction is below this are stored as CSR (dictionary latents), the others dense."""


@dataclass
class Selection:
    """Which excerpts each unit's record lists, as references into R distinct (unit, excerpt) rows."""

    row_unit: Tensor
    """[R] int64, sorted (rows of a unit are contiguous)."""
    row_eid: Tensor
    """[R] int64 excerpt ids."""
    row_cand: Tensor
    """[R] int64 slot holding the row's activations: c < P pool slot c, else top slot c − P (as the slots are
    stored, unsorted)."""
    counts: dict[str, Tensor]
    """top [U], random [U], quantile [U, 5] int32."""
    refs: dict[str, Tensor]
    """Same keys: int32 row indices, unit by unit (quantile: bucket by bucket within a unit)."""
    stats: Tensor
    """[U, 4] float64 mean, variance, skewness, excess kurtosis."""
    bounds: Tensor
    """[U, 4] float64 quantile boundaries."""


def select(state: GroupState, sizes: SlotSizes) -> Selection:
    """The reference's choices (`build_records`) for every unit at once."""
    U = state.group.n_units
    top, pool = state.top, state.pool
    P = pool.ids.shape[1]
    # the slots in `sort`'s order, without moving their activations: perm[u, c] = the slot sorted position c holds
    perm_pool = pool._order(pool.score, pool.ids, P)
    perm_top = top._order(top.score, top.ids, top.ids.shape[1])
    top_ids, top_score = top.ids.gather(1, perm_top), top.score.gather(1, perm_top)
    perm = torch.cat([perm_pool, perm_top + P], 1)  # [U, C]
    bounds = quantile_boundaries(state.maxima)  # [U, 4]
    cand_ids = torch.cat([pool.ids.gather(1, perm_pool), top_ids], 1)  # [U, C]
    # top: every filled slot, best first; random: the first n_random filled pool slots (pool order = key order)
    u_top, c_top = ((top_ids >= 0) & (top_score > float("-inf"))).nonzero(as_tuple=True)
    filled = cand_ids[:, :P] >= 0
    u_rnd, c_rnd = (filled & (filled.cumsum(1) <= sizes.n_random)).nonzero(as_tuple=True)
    # quantile buckets: candidates in key order, each excerpt once (its copies share a key, so they are adjacent),
    # the first n_quantile of each bucket
    cand_max = torch.cat([pool.acts.amax(2), top.acts.amax(2)], 1).double().gather(1, perm)  # [U, C] excerpt maxima
    bucket = torch.searchsorted(bounds.nan_to_num(float("inf")).contiguous(), cand_max.contiguous(), right=False)
    keys = pair_keys(state.seed, cand_ids, torch.arange(U)[:, None]).masked_fill(cand_ids < 0, float("inf"))
    order = keys.argsort(dim=1)  # [U, C]
    sid, sb = cand_ids.gather(1, order), bucket.gather(1, order)
    first = torch.ones_like(sid, dtype=torch.bool)
    first[:, 1:] = sid[:, 1:] != sid[:, :-1]
    keep = (sid >= 0) & first
    in_b = keep[:, None, :] & (sb[:, None, :] == torch.arange(N_BUCKETS)[None, :, None])  # [U, 5, C]
    in_b &= in_b.cumsum(2) <= sizes.n_quantile
    u_q, b_q, pos_q = in_b.nonzero(as_tuple=True)  # unit-major, bucket-major, key order
    c_q = order[u_q, pos_q]
    u_all = torch.cat([u_top, u_rnd, u_q])
    c_all = torch.cat([c_top + P, c_rnd, c_q])
    key = u_all * (1 << 40) + cand_ids[u_all, c_all]
    uniq, inv = torch.unique(key, return_inverse=True)  # rows sorted by (unit, excerpt)
    rep = torch.full((len(uniq),), len(key), dtype=torch.int64).scatter_reduce(
        0, inv, torch.arange(len(key)), "amin")  # the first reference of each row holds its activations
    n_top, n_rnd = len(u_top), len(u_rnd)
    inv32 = inv.to(torch.int32)
    return Selection(
        row_unit=uniq >> 40, row_eid=uniq & ((1 << 40) - 1), row_cand=perm[uniq >> 40, c_all[rep]],
        counts={"top": torch.bincount(u_top, minlength=U).int(), "random": torch.bincount(u_rnd, minlength=U).int(),
                "quantile": in_b.sum(2).int()},
        refs={"top": inv32[:n_top], "random": inv32[n_top:n_top + n_rnd], "quantile": inv32[n_top + n_rnd:]},
        stats=torch.stack(state.moments.stats(), 1), bounds=bounds)


@dataclass
class CsrRows:
    """[R, L] activations as CSR (the sparse groups' rows: a dense [R, L] of an attention SAE's latents by token
    pair is 4,096 units x ~65 rows x 2,080 pairs x 4 bytes = 2.2 GB, most of it zeros); non-zeros only, each row's
    by position."""

    ptr: np.ndarray
    """[R + 1] int64 row offsets."""
    pos: np.ndarray
    """[nnz] int32 positions."""
    val: np.ndarray
    """[nnz] float32 values."""
    shape: tuple[int, int]

    def row_max(self) -> np.ndarray:
        """[R] each row's max, its implicit zeros included."""
        R, L = self.shape
        n = np.diff(self.ptr)
        out = np.full(R, -np.inf, dtype=np.float32)
        has = n > 0
        if has.any():
            out[has] = np.maximum.reduceat(self.val, self.ptr[:-1][has])
        return np.where(n < L, np.maximum(out, 0), out).astype(np.float32)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """[len(idx), L] dense copies of some rows."""
        out = np.zeros((len(idx), self.shape[1]), dtype=np.float32)
        start, n = self.ptr[idx], self.ptr[idx + 1] - self.ptr[idx]
        row = np.repeat(np.arange(len(idx)), n)  # [entries] the output row of each entry
        src = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(start, n)  # its index in pos/val
        out[row, self.pos[src]] = self.val[src]
        return out

    def dense(self) -> np.ndarray:
        return self.rows(np.arange(self.shape[0]))


def row_acts(state: GroupState, sel: Selection) -> np.ndarray | CsrRows:
    """[R, L] float32 activations of every row (CSR for sparse groups)."""
    P = state.pool.ids.shape[1]
    u, c = sel.row_unit, sel.row_cand
    if state.vectors is not None:  # sparse groups: the slots hold maxima; the vectors are COO rows
        return _csr_rows(state, sel)
    pool = c < P
    out = torch.empty(len(u), state.top.acts.shape[2], dtype=torch.float32)
    out[pool] = state.pool.acts[u[pool], c[pool]].float()
    out[~pool] = state.top.acts[u[~pool], c[~pool] - P].float()
    return out.numpy()


def _csr_rows(state: GroupState, sel: Selection) -> CsrRows:
    """A sparse group's rows from its COO vectors: each (unit, excerpt, position) once (the last one added), zeros
    dropped, ordered by row then position."""
    assert state.vectors is not None
    R, L = len(sel.row_unit), state.vectors.length
    vu, ve, vp, vv = state.vectors.columns()
    flat, v = torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    if R and len(vu):
        rowkey = sel.row_unit * (1 << 40) + sel.row_eid  # sorted (Selection's rows are)
        key = vu.long() * (1 << 40) + ve.long()
        r = torch.searchsorted(rowkey, key).clamp_(max=R - 1)
        hit = rowkey[r] == key
        del key
        flat = r[hit] * L + vp[hit].long()  # [hits] row-major position
        order = torch.argsort(flat, stable=True)
        flat, v = flat[order], vv[hit][order].float()
        last = torch.ones(len(flat), dtype=torch.bool)
        last[:-1] = flat[1:] != flat[:-1]
        keep = last & (v != 0)
        flat, v = flat[keep], v[keep]
    counts = torch.bincount(flat // L, minlength=R) if R else torch.zeros(0, dtype=torch.int64)
    ptr = np.concatenate([[0], np.cumsum(counts.numpy())]).astype(np.int64)
    return CsrRows(ptr, (flat % L).numpy().astype(np.int32), v.numpy().astype(np.float32), (R, L))


def tensors(sel: Selection, acts: np.ndarray | CsrRows, row_excerpt: np.ndarray, n_units: int) -> dict[str, np.ndarray]:
    """The records file's tensors (see `compact_records`); mostly-zero activations as CSR."""
    out = {"row_offsets": np.concatenate([[0], np.cumsum(np.bincount(sel.row_unit.numpy(), minlength=n_units))]),
           "row_excerpt": row_excerpt.astype(np.int32), "stats": sel.stats.numpy(),
           "quantile_boundaries": sel.bounds.numpy()}
    for name in ("top", "random", "quantile"):
        out[f"{name}_count"], out[f"{name}_ref"] = sel.counts[name].numpy(), sel.refs[name].numpy()
    if isinstance(acts, CsrRows):
        R, L = acts.shape
        if R * L and len(acts.val) < CSR_BELOW * R * L:
            return {k: np.ascontiguousarray(v) for k, v in
                    (out | {"acts_ptr": acts.ptr, "acts_pos": acts.pos, "acts_val": acts.val}).items()}
        acts = acts.dense()
    nz = acts != 0
    if acts.size and nz.mean() < CSR_BELOW:
        r, p = nz.nonzero()  # row-major: by row, then position
        out |= {"acts_ptr": np.concatenate([[0], np.cumsum(nz.sum(1))]), "acts_pos": p.astype(np.int32),
                "acts_val": acts[r, p]}
    else:
        out["acts"] = acts
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def summary_rows(sel: Selection, acts: np.ndarray | CsrRows, strings: Callable[[int], list[str]], density: Tensor,
                 by_token_pair: bool) -> list[dict[str, Any]]:
    """Each unit's row of summary.json, equal to `records.summary_row` of its record (plus its density).
    strings(r): row r's token strings."""
    U = len(density)
    L = acts.shape[1]
    # rounding is monotone, so the max of the rounded values is the rounded max
    row_max = acts.row_max() if isinstance(acts, CsrRows) else acts.max(1) if L else np.zeros(len(acts))
    rounded_max = row_max.astype(np.float64).round(6) if L else row_max  # [R]
    counts = sel.counts["top"].numpy().astype(np.int64)
    top = sel.refs["top"].numpy().astype(np.int64)
    unit = np.repeat(np.arange(U), counts)  # [refs] the unit of each top reference
    best = np.zeros(U)
    np.maximum.at(best, unit, rounded_max[top])
    best = np.where(best > 0, best, 0.0)  # the reference starts from 0.0
    fires = np.bincount(unit, weights=rounded_max[top] > 0, minlength=U).astype(np.int64)
    has = np.flatnonzero(counts > 0)
    first = top[np.concatenate([[0], np.cumsum(counts)])[has]]  # each unit's best excerpt row
    tokens: list[str | None] = [None] * U
    if L:
        lit = rounded_max[first] > 0
        best_rows = acts.rows(first[lit]) if isinstance(acts, CsrRows) else acts[first[lit]]
        js = best_rows.astype(np.float64).round(6).argmax(1)  # first index of the (rounded) max
        for u, r, j in zip(has[lit].tolist(), first[lit].tolist(), js.tolist()):
            if by_token_pair:
                j = int((math.isqrt(8 * j + 1) - 1) // 2)  # the query token of flattened pair j
            toks = strings(r)
            tokens[u] = toks[j] if j < len(toks) else ""
    stats, dens = sel.stats.numpy(), density.tolist()
    rows = [{"index": u, "max_activation": b, "mean": m, "variance": v, "top_token": t, "firing_excerpts": f,
             "density": float(d)}
            for u, (b, m, v, t, f, d) in enumerate(zip(best.tolist(), clean_nans(stats[:, 0].tolist()),
                                                       clean_nans(stats[:, 1].tolist()), tokens, fires.tolist(), dens))]
    return rows


def write_packs(root: Path, states: list[GroupState], sizes: SlotSizes,
                decode: Callable[[int], tuple[list[int], list[str]]]) -> Any:
    """Add every referenced excerpt to the model folder's excerpt table (written first: rows only ever get added),
    then yield, group by group, (the records file's tensors, the unit table rows) for the caller to write.
    decode(excerpt id) → (token ids, token strings)."""
    from saescope.compact_records import EXCERPTS_FILE, ExcerptTable

    sels = [select(st, sizes) for st in states]
    eids = torch.unique(torch.cat([s.row_eid for s in sels])) if sels else torch.zeros(0, dtype=torch.int64)
    path = root / EXCERPTS_FILE
    table = ExcerptTable.read(path) if path.is_file() else ExcerptTable.empty()
    table_rows = torch.tensor(table.extend([decode(e) for e in eids.tolist()]), dtype=torch.int64)
    table.save(path)
    for st, sel in zip(states, sels):
        acts = row_acts(st, sel)
        row_excerpt = table_rows[torch.searchsorted(eids, sel.row_eid)].numpy()
        rows = summary_rows(sel, acts, lambda r: table.strings(int(row_excerpt[r])), st.moments.density(),
                            st.group.by_token_pair)
        yield tensors(sel, acts, row_excerpt, st.group.n_units), rows
