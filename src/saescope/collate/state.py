"""Streaming per-unit state for collation: exact running top-k, keyed reservoirs, float64 power sums.

All updates are batched tensor ops over every unit at once. Each piece merges exactly with another instance
(top-k ∪ top-k, reservoir ∪ reservoir by key, sums + sums), which is what data-parallel collation relies on.

Shapes: U units, k slots, L values per excerpt (T tokens, or T(T+1)/2 token pairs for attention heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def pair_keys(seed: int, ids: Tensor, units: Tensor) -> Tensor:
    """Deterministic uniform keys in [0, 1) for (excerpt id, unit) pairs (broadcast together; splitmix64 hash).

    Keys depend only on (seed, excerpt id, unit), so a reservoir built on any sharding of the corpus is identical.
    """
    x = ids.to(torch.int64) * 1_000_003 + units.to(torch.int64) + seed * 0x9E3779B9
    x = (x ^ (x >> 30)) * -4658895280553007687  # 0xBF58476D1CE4E5B9 as a signed int64 (wrapping multiply)
    x = (x ^ (x >> 27)) * -7723592293110705685  # 0x94D049BB133111EB
    x = x ^ (x >> 31)
    return ((x >> 11) & ((1 << 53) - 1)).double() / float(1 << 53)


def excerpt_keys(seed: int, excerpt_ids: Tensor, n_units: int) -> Tensor:
    """Keys for every (excerpt, unit): [B] ids → [B, U]."""
    return pair_keys(seed, excerpt_ids[:, None], torch.arange(n_units)[None, :])


@dataclass
class TopSlots:
    """Per unit, the k excerpts with the largest score (ties broken by the smaller excerpt id)."""

    score: Tensor
    """[U, k] float64 (−inf = empty)."""
    ids: Tensor
    """[U, k] int64 excerpt ids (−1 = empty)."""
    acts: Tensor
    """[U, k, L] the unit's activations on that excerpt."""
    unique_scores: bool = False
    """Scores never tie (hash keys of keyed reservoirs): one sort instead of two."""
    fill: int = 0
    """Slots fill.. are empty in every row (filled by `update`'s fast path); k once any slot may be evicted."""

    @classmethod
    def empty(cls, n_units: int, k: int, length: int, dtype: torch.dtype = torch.float32,
              unique_scores: bool = False) -> "TopSlots":
        return cls(torch.full((n_units, k), float("-inf"), dtype=torch.float64),
                   torch.full((n_units, k), -1, dtype=torch.int64), torch.zeros(n_units, k, length, dtype=dtype),
                   unique_scores)

    def _order(self, all_score: Tensor, all_ids: Tensor, k: int) -> Tensor:
        """[R, n] → [R, k] positions of the k best entries, best first (score desc, then id asc)."""
        if self.unique_scores:
            return torch.topk(all_score, k, dim=1, sorted=True).indices
        order = torch.argsort(all_ids, dim=1, stable=True)  # lexicographic: stably by id, then stably by score
        by_score = torch.argsort(torch.gather(all_score, 1, order), dim=1, descending=True, stable=True)
        return torch.gather(order, 1, by_score)[:, :k]

    def _keep(self, all_score: Tensor, all_ids: Tensor, all_acts: Tensor) -> None:
        self.fill = self.score.shape[1]
        order = self._order(all_score, all_ids, self.score.shape[1])
        self.score = torch.gather(all_score, 1, order)
        self.ids = torch.gather(all_ids, 1, order)
        self.acts = torch.gather(all_acts, 1, order[:, :, None].expand(-1, -1, all_acts.shape[2]))

    def sort(self) -> None:
        """Order each unit's slots best first (`update` leaves them unordered)."""
        self._keep(self.score, self.ids, self.acts)

    def update(self, score: Tensor, ids: Tensor, acts: Tensor) -> None:
        """score [U, B] float64, ids [B] int64, acts [U, B, L]. Slots stay unordered until `sort`.

        Only units where a new excerpt beats the current worst slot are touched, and in those only the evicted
        slots are overwritten: the kept excerpts' activations are never moved. Once the slots fill up, most
        batches change few units (a reservoir of P among n seen admits a newcomer with probability P/n).
        """
        k = self.score.shape[1]
        B = score.shape[1]
        if self.fill + B <= k:  # room for the whole batch in every row: nothing is evicted, so no ordering
            self.score[:, self.fill:self.fill + B] = score
            self.ids[:, self.fill:self.fill + B] = ids[None, :]
            self.acts[:, self.fill:self.fill + B] = acts
            self.fill += B
            return
        self.fill = k
        need = (score >= self.score.amin(1, keepdim=True)).any(1)  # ≥: a tie may still win on the smaller id
        rows = need.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        R = rows.numel()
        new_score = score[rows]  # [R, B]
        best = self._order(torch.cat([self.score[rows], new_score], 1),
                           torch.cat([self.ids[rows], ids[None, :].expand(R, -1)], 1), k)  # [R, k] of k + B
        kept = torch.zeros(R, k + B, dtype=torch.bool).scatter_(1, best, True)
        # Each row evicts as many old slots as it admits new excerpts; nonzero() lists both row-major, so the
        # j-th evicted slot of a row pairs with the j-th admitted excerpt of the same row.
        r, slot = (~kept[:, :k]).nonzero(as_tuple=True)
        _, new = kept[:, k:].nonzero(as_tuple=True)
        u = rows[r]
        self.score[u, slot] = new_score[r, new]
        self.ids[u, slot] = ids[new]
        self.acts[u, slot] = acts[u, new].to(self.acts.dtype)

    def merge(self, other: "TopSlots") -> None:
        self._keep(torch.cat([self.score, other.score], 1), torch.cat([self.ids, other.ids], 1),
                   torch.cat([self.acts, other.acts], 1))


HIST_DECADES = (-4, 4)
HIST_PER_DECADE = 8
HIST_BINS = (HIST_DECADES[1] - HIST_DECADES[0]) * HIST_PER_DECADE
"""Histogram of |activation| per sign: log-spaced bins, 8 per decade from 1e-4 to 1e4 (the first bin also holds
0 < |x| < 1e-4, the last |x| ≥ 1e4). Fixed edges are what makes it exact in one streaming pass and mergeable."""


def hist_edges() -> Tensor:
    """[HIST_BINS + 1] bin edges of |x| (float64)."""
    return 10.0 ** (HIST_DECADES[0] + torch.arange(HIST_BINS + 1, dtype=torch.float64) / HIST_PER_DECADE)


_LUT: tuple[Tensor, Tensor] | None = None


def _bin_tables() -> tuple[Tensor, Tensor]:
    """Lookup tables over the top 16 bits of a float32 (sign, exponent, 7 mantissa bits): [65536] the bin of the
    prefix's smallest |value| (+ HIST_BINS for negatives), and [65536] the |value| bits from which the value lies
    one bin higher (each prefix spans a relative width of 2⁻⁷ < 10^(1/8), so at most one edge falls inside)."""
    global _LUT
    if _LUT is None:
        import numpy as np

        edges = hist_edges().numpy()
        e32 = edges.astype(np.float32)  # nearest; a float32 v ≥ edge iff v ≥ the smallest float32 ≥ edge:
        e32 = np.where(e32.astype(np.float64) >= edges, e32, np.nextafter(e32, np.float32(np.inf)))
        edge_bits = torch.from_numpy(e32.view(np.int32).astype(np.int64))[1:HIST_BINS]  # inner edges, ascending
        lo = torch.arange(1 << 15, dtype=torch.int64) << 16  # smallest |value| bits of each prefix
        hi = lo | 0xFFFF
        bin_lo = torch.searchsorted(edge_bits, lo, right=True)  # edges ≤ the prefix's smallest value
        nxt = edge_bits[bin_lo.clamp(max=len(edge_bits) - 1)]
        inside = (bin_lo < len(edge_bits)) & (nxt <= hi)
        assert bool((torch.searchsorted(edge_bits, hi, right=True) - bin_lo <= 1).all())
        nxt = torch.where(inside, nxt, torch.full_like(nxt, 0x7FFFFFFF))  # no edge inside: never (NaN aside)
        _LUT = (torch.cat([bin_lo, bin_lo + HIST_BINS]).int(), torch.cat([nxt, nxt]).int())
    return _LUT


def hist_slot(v: Tensor) -> Tensor:
    """[same shape] int32: bin of |v| by HIST_DECADES, plus HIST_BINS where v < 0 (zeros: bin 0). Exact: v lies in
    bin k iff edge_k ≤ |v| < edge_k+1 (float64 edges), found from the float32 bit pattern without a logarithm."""
    bin_lo, nxt = _bin_tables()
    bits = v.float().contiguous().view(torch.int32)
    top = (bits >> 16).bitwise_and_(0xFFFF)  # sign and magnitude prefix
    return bin_lo[top].add_(bits.bitwise_and(0x7FFFFFFF) >= nxt[top])


def hist_bin(v: Tensor) -> Tensor:
    """Bin index [same shape] of non-zero values v by |v| (see HIST_DECADES)."""
    return hist_slot(v.abs())


@dataclass
class Moments:
    """Exact power sums Σx^p (p = 0..4) per unit in float64, the count of positive values, and exact counts of
    |x| per log bin for positive and negative values separately (every token counts: no sample)."""

    sums: Tensor
    """[U, 6]: n, Σx, Σx², Σx³, Σx⁴, #(x > 0)."""
    hist: Tensor | None = None
    """[U, 2, HIST_BINS] counts (float64) of positive (row 0) and negative (row 1) values by |x|; zeros = n − Σ."""

    def __post_init__(self) -> None:
        if self.hist is None:
            self.hist = torch.zeros(self.sums.shape[0], 2, HIST_BINS, dtype=torch.float64)

    @classmethod
    def empty(cls, n_units: int) -> "Moments":
        return cls(torch.zeros(n_units, 6, dtype=torch.float64))

    def update(self, x: Tensor) -> None:
        """x [U, N] values (all tokens of the batch). Zeros add only to n: where most values are zero (SAE latents:
        k of F fire), the sums run over the non-zero entries alone."""
        U, N = x.shape
        if int(torch.count_nonzero(x)) * 4 < x.numel():  # counted first: dense units need no index lists
            unit, col = x.nonzero(as_tuple=True)
            self.add_entries(unit, x[unit, col], float(N))
            return
        x = x.float().contiguous()
        for lo in range(0, U, self.CHUNK):  # a few hundred units at a time: temporaries stay small and in cache
            self._dense(x[lo:lo + self.CHUNK], lo)

    CHUNK = 256

    def _dense(self, x: Tensor, first: int) -> None:
        """x [u, N] float32 values of units first..first+u: float32 partial sums of the batch, accumulated in
        float64; one bincount over (unit, sign, bin) with zeros in a spare slot past the end."""
        u, N = x.shape
        x2 = x * x
        self.sums[first:first + u] += torch.stack([
            torch.full((u,), float(N), dtype=torch.float64), x.sum(1, dtype=torch.float64), x2.sum(1).double(),
            (x2 * x).sum(1, dtype=torch.float64), x2.mul_(x2).sum(1).double(), (x > 0).sum(1).double()], dim=1)
        slot = hist_slot(x).add_(torch.arange(u, dtype=torch.int32)[:, None] * (2 * HIST_BINS))  # [u, N]
        slot.masked_fill_(x == 0, u * 2 * HIST_BINS)
        counts = torch.bincount(slot.flatten(), minlength=u * 2 * HIST_BINS + 1)[:-1]
        self.hist[first:first + u] += counts.view(u, 2, HIST_BINS)

    def add_entries(self, unit: Tensor, value: Tensor, n: float) -> None:
        """Every unit saw n values, of which only these (unit, value) entries [nnz] are non-zero."""
        v = value.double()
        sums = torch.zeros_like(self.sums)
        sums[:, 0] = n
        v2 = v * v
        for col, term in ((1, v), (2, v2), (3, v2 * v), (4, v2 * v2), (5, (v > 0).double())):
            sums[:, col].index_add_(0, unit, term)
        self.sums += sums
        U = self.sums.shape[0]
        nz = v != 0
        slot = unit[nz] * (2 * HIST_BINS) + hist_slot(value[nz]).long()
        self.hist += torch.bincount(slot, minlength=U * 2 * HIST_BINS).view(U, 2, HIST_BINS).double()

    def density(self) -> Tensor:
        return self.sums[:, 5] / self.sums[:, 0].clamp_min(1)

    def merge(self, other: "Moments") -> None:
        self.sums += other.sums
        self.hist += other.hist

    def stats(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """mean, variance (population), skewness, excess kurtosis — NaN where undefined."""
        n, s1, s2, s3, s4, _ = self.sums.unbind(1)
        mean = s1 / n
        m2 = s2 / n - mean**2
        m3 = s3 / n - 3 * mean * s2 / n + 2 * mean**3
        m4 = s4 / n - 4 * mean * s3 / n + 6 * mean**2 * s2 / n - 3 * mean**4
        m2c = m2.clamp_min(0)
        ok = m2c > 1e-20 * (s2 / n).clamp_min(1e-300)
        skew = torch.where(ok, m3 / m2c.clamp_min(1e-300) ** 1.5, torch.full_like(m2, float("nan")))
        kurt = torch.where(ok, m4 / m2c.clamp_min(1e-300) ** 2 - 3.0, torch.full_like(m2, float("nan")))
        return mean, m2c, skew, kurt
