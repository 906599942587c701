"""A fast ground-truth generator that sweeps the regimes a recipe must win in (issue 30): built in well under a
second, sampled sparsely (only the active features are touched), so a sweep of many trainers fits a CPU session.

    x = μ + Σ_{i active} a_i·u_i + σ·ε,   u_i unit directions in d dims, a_i ~ Exponential(1)·m_i

Firing: every feature i has a base probability p_i falling from p_max to p_min with Σ p_i = `active` (the expected
number active per token; `fit_zipf`: a Zipf head over a flat tail, or Zipf–Mandelbrot for the skewed regime),
assigned to features in a random order. On top:

- hierarchy: the first `roots` features of the shuffled order are parents, each with `branching` children that
  are mutually exclusive and fire only with their parent (one of them, with probability `child_prob`, when the
  parent fires): a child implies its parent, the setting where TopK SAEs absorb the parent into the children;
- correlation: features come in blocks of `block`; when a block's first feature fires each other member also
  fires with probability `block_prob` (on top of its own rate): co-firing features an SAE may merge.

The regimes (`REGIMES`): `even` — frequent and fairly even firing (30 % down to 0.2 %, ~20 active, like the issue's
held-out set); `rare` — skewed, mostly rare (24 % down to 1e-4, like SynthSAEBench's tail); `hier` — `even`
frequencies with a 3-level hierarchy (128 roots, the most frequent features, 4 children each, 4 grandchildren
each) and correlated blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RegimeSpec:
    name: str
    p_max: float
    p_min: float
    active: float = 20.0
    roots: int = 0
    """Hierarchy roots per 4,096 features (scaled with the generator's feature count)."""
    branching: int = 4
    child_prob: float = 0.7
    block: int = 0
    block_prob: float = 0.5
    law: str = "offset"
    mean_norm: float = 2.0
    noise: float = 0.01


REGIMES = {
    "even": RegimeSpec("even", p_max=0.30, p_min=2e-3),
    "rare": RegimeSpec("rare", p_max=0.24, p_min=1e-4, law="mandelbrot"),
    "hier": RegimeSpec("hier", p_max=0.30, p_min=2e-3, active=24.0, roots=128, block=4),
}


def fit_zipf(n: int, p_max: float, p_min: float, total: float, law: str = "offset") -> Tensor:
    """[n] firing probabilities from p_max (i = 0) down to p_min (i = n − 1) summing to `total`, α by bisection:
    `offset`: p_i = p_min + (p_max − p_min)·((i + 1)^−α − n^−α)/(1 − n^−α) (a head and a flat tail: frequent, even firing);
    `mandelbrot`: p_i ∝ (i + 1 + b)^−α with b set by the end ratio (skewed: a few hundred frequent features,
    a long rare tail)."""
    i = torch.arange(n, dtype=torch.float64)

    def probs(alpha: float) -> Tensor:
        if law == "offset":  # the power law rescaled to run exactly from 1 (i = 0) to 0 (i = n − 1)
            tail = float(n) ** -alpha
            return p_min + (p_max - p_min) * ((i + 1) ** -alpha - tail) / (1 - tail)
        r = (p_max / p_min) ** (1 / alpha)  # (n + b)/(1 + b) = r
        p = 1.0 / (i + 1 + max((n - r) / (r - 1), 0.0)) ** alpha
        return p * p_max / p[0]

    lo, hi = (0.05, 8.0) if law == "offset" else (1.0, 16.0)
    falling = float(probs(lo).sum()) > float(probs(hi).sum())
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (float(probs(mid).sum()) > total) == falling else (lo, mid)
    return probs((lo + hi) / 2).float()


class RegimeGenerator:
    """Samples [N, d] activations of one regime; `features` [n, d] and `probs` [n] are the ground truth (probs: the
    realised marginal firing rates, hierarchy and correlation included, estimated once on 65,536 samples)."""

    def __init__(self, spec: RegimeSpec, n_features: int = 4096, d: int = 768, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(0x5EED_3000 + seed)  # not the trainers' seeds
        self.spec, self.n, self.d = spec, n_features, d
        self.features = torch.randn(n_features, d, generator=g)
        self.features /= self.features.norm(dim=1, keepdim=True)
        self.mean = spec.mean_norm * torch.randn(d, generator=g) / d**0.5
        self.scale = 0.5 + torch.rand(n_features, generator=g)  # per-feature mean magnitude m_i
        p = fit_zipf(n_features, spec.p_max, spec.p_min, spec.active, spec.law)
        self.base = p[torch.randperm(n_features, generator=g)]  # [F]
        n_roots = max(1, spec.roots * n_features // 4096) if spec.roots else 0  # spec.roots: per 4,096 features
        n_tree = n_roots * (1 + spec.branching + spec.branching**2)  # 3 levels: roots, children, grandchildren
        self.parent = torch.full((n_features,), -1, dtype=torch.long)
        self.levels: list[tuple[Tensor, Tensor]] = []  # (parents [P], their children [P, B]) per tree level
        if n_roots:
            # roots: the most frequent features (a tree under a rare root would hardly ever fire); the rest random
            roots = torch.argsort(self.base, descending=True)[:n_roots]
            others = torch.ones(n_features, dtype=torch.bool)
            others[roots] = False
            rest = others.nonzero().squeeze(1)[torch.randperm(n_features - n_roots, generator=g)][:n_tree - n_roots]
            kids = rest[:n_roots * spec.branching].view(n_roots, spec.branching)
            grand = rest[n_roots * spec.branching:].view(n_roots * spec.branching, spec.branching)
            self.parent[kids.flatten()] = roots.repeat_interleave(spec.branching)
            self.parent[grand.flatten()] = kids.flatten().repeat_interleave(spec.branching)
            self.levels = [(roots, kids), (kids.flatten(), grand)]
        self.gen = torch.Generator().manual_seed(1 + seed)
        self.probs = self.measure_probs()

    def sample_fires(self, n: int, g: torch.Generator) -> Tensor:
        """[n, F] bool: which features fire."""
        s = self.spec
        fires = torch.rand(n, self.n, generator=g) < self.base  # [n, F]
        if s.block:
            m = self.n - self.n % s.block
            lead = fires[:, :m:s.block].repeat_interleave(s.block, dim=1)  # [n, m]
            fires[:, :m] |= lead & (torch.rand(n, m, generator=g) < s.block_prob)
        if self.levels:
            fires[:, self.parent >= 0] = False  # children fire only through their parent
            for par, kids in self.levels:
                on = fires[:, par] & (torch.rand(n, len(par), generator=g) < s.child_prob)  # [n, P]
                pick = torch.randint(0, kids.shape[1], (n, len(par)), generator=g)  # [n, P] mutually exclusive
                rows, cols = on.nonzero(as_tuple=True)
                fires[rows, kids[cols, pick[rows, cols]]] = True
        return fires

    def sample(self, n: int, g: torch.Generator | None = None) -> Tensor:
        """[n, d] activations."""
        g = g or self.gen
        ij = self.sample_fires(n, g).nonzero().T  # [2, nnz], rows sorted
        mags = torch.empty(ij.shape[1]).exponential_(1.0, generator=g) * self.scale[ij[1]]  # never inf (−log u is)
        x = torch.sparse.mm(torch.sparse_coo_tensor(ij, mags, (n, self.n), check_invariants=False), self.features)  # [n, d]
        return x + self.mean + self.spec.noise * torch.randn(n, self.d, generator=g)

    def measure_probs(self, n: int = 65_536) -> Tensor:
        g = torch.Generator().manual_seed(12345)
        return sum(self.sample_fires(8192, g).float().sum(0) for _ in range(n // 8192)) / n

    def expected_active(self) -> float:
        return float(self.probs.sum())
