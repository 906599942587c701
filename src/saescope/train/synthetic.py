"""Ground truth for SAE training: known sparse features in superposition, and how well an SAE recovers them.

x = μ + Σ_i a_i·u_i + noise, with n unit features u_i in d dims (n > d: superposition), feature i firing with
a Zipf-like probability p_i ∝ 1/(i+1)^α scaled so that on average `active` features fire per sample, and
magnitudes a_i ~ Uniform(0.5, 1.5) (optionally correlated in blocks). With `min_prob` the frequencies follow a
Zipf–Mandelbrot law p_i ∝ 1/(i+1+b)^α with b chosen so the rarest feature fires with probability `min_prob`
(realistic: a head of frequent features, a long tail down to ~1e-4, like SynthSAEBench's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ToyModel:
    features: Tensor
    """[n, d] unit rows."""
    probs: Tensor
    """[n] firing probabilities."""
    mean: Tensor
    """[d] shared offset."""
    noise: float = 0.01
    correlated_blocks: int = 0
    """If > 0, features in the same block (of this size) fire together with probability 0.5."""
    correlated_count: int = 0
    """Only the first (most frequent) this many features are correlated in blocks (0 = all)."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        fires = torch.rand(n, len(self.probs), generator=generator) < self.probs  # [n, n_features]
        if self.correlated_blocks:
            b, m = self.correlated_blocks, self.correlated_count or fires.shape[1]
            lead = fires[:, :m:b].repeat_interleave(b, dim=1)[:, :m]
            fires[:, :m] |= lead & (torch.rand(n, m, generator=generator) < 0.5)
        mags = 0.5 + torch.rand(fires.shape, generator=generator)
        x = (fires * mags) @ self.features + self.mean
        return x + self.noise * torch.randn(n, self.features.shape[1], generator=generator)


def zipf_probs(n: int, active: float, alpha: float, min_prob: float = 0.0) -> Tensor:
    """[n] firing probabilities ∝ 1/(i+1+b)^α summing to `active`; b = 0, or (min_prob > 0) found by bisection
    so that the last one is min_prob."""
    i = torch.arange(n, dtype=torch.float64)

    def probs(b: float) -> Tensor:
        p = 1.0 / (i + 1.0 + b) ** alpha
        return p * active / p.sum()
    lo, hi = 0.0, 1e7
    if min_prob > 0:
        for _ in range(100):  # p[-1] grows with b
            lo, hi = ((lo + hi) / 2, hi) if probs((lo + hi) / 2)[-1] < min_prob else (lo, (lo + hi) / 2)
    return probs(lo if min_prob > 0 else 0.0).clamp(max=1.0).float()


def make_toy(d: int = 64, n_features: int = 256, active: float = 5.0, alpha: float = 0.5, seed: int = 0,
             mean_scale: float = 0.5, noise: float = 0.01, correlated_blocks: int = 0, min_prob: float = 0.0,
             correlated_count: int = 0) -> ToyModel:
    # Offset the seed: an SAE initialised from torch.manual_seed(seed) must not start on the true features.
    g = torch.Generator().manual_seed(0x5EED_0000 + seed)
    u = torch.randn(n_features, d, generator=g)
    u /= u.norm(dim=1, keepdim=True)
    p = zipf_probs(n_features, active, alpha, min_prob)
    mean = mean_scale * torch.randn(d, generator=g) / d**0.5
    return ToyModel(u, p, mean, noise, correlated_blocks, correlated_count)


def realistic_toy(d: int = 768, n_features: int = 4096, active: float = 20.0, seed: int = 0) -> ToyModel:
    """The training bench's generator: Zipf–Mandelbrot frequencies from ~0.24 down to 1e-4 (α = 2), ~20 active
    features per sample, a shared offset of norm ~2, noise σ = 0.05, the 256 most frequent features correlated
    in blocks of 4."""
    return make_toy(d=d, n_features=n_features, active=active, alpha=2.0, min_prob=1e-4, seed=seed,
                    mean_scale=2.0, noise=0.05, correlated_blocks=4, correlated_count=256)


def _cos(a: Tensor, b: Tensor) -> Tensor:
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def mmcs(true_features: Tensor, learned: Tensor) -> float:
    """Mean over true features of the max cosine to any learned decoder row."""
    return float(_cos(true_features, learned).max(dim=1).values.mean())


def mcc(true_features: Tensor, learned: Tensor) -> float:
    """Mean cosine of the best one-to-one (Hungarian) matching between true and learned directions."""
    from scipy.optimize import linear_sum_assignment

    c = _cos(true_features, learned).abs().double().numpy()
    r, k = linear_sum_assignment(-c)
    return float(c[r, k].mean())


def recovery(true_features: Tensor, learned: Tensor, probs: Tensor | None = None,
             alive: Tensor | None = None) -> dict[str, float]:
    """How an SAE's decoder rows [F, d] relate to the true features [n, d] (diagnostics for the bench).

    found_90 / found_70: fraction of true features with a latent at cos > 0.9 / 0.7. split: features with two or
    more latents at cos > 0.5 each. merged: fraction of (alive) latents with cos > 0.3 to two or more features (a
    mixture). absorbed: features without their own latent (best cos < 0.7) whose best latent belongs to another
    feature (that latent's best cos > 0.7 is with someone else) yet still carries them at cos > 0.2. With `probs`,
    found_90 per firing-frequency band (≥1e-2, 1e-3…1e-2, <1e-3)."""
    c = _cos(true_features, learned)  # [n, F]
    if alive is not None:
        c = c[:, alive]
    best, lat = c.max(dim=1)  # [n]
    lat_best, lat_feat = c.max(dim=0)  # [F']
    n = c.shape[0]
    owner_other = (lat_feat[lat] != torch.arange(n)) & (lat_best[lat] > 0.7)
    out = {
        "mmcs": float(best.mean()), "found_90": float((best > 0.9).float().mean()),
        "found_70": float((best > 0.7).float().mean()), "split": float(((c > 0.5).sum(1) >= 2).float().mean()),
        "merged": float(((c > 0.3).sum(0) >= 2).float().mean()),
        "absorbed": float(((best < 0.7) & owner_other & (best > 0.2)).float().mean()),
    }
    if probs is not None:
        for name, lo, hi in (("p>=1e-2", 1e-2, 2.0), ("p 1e-3..1e-2", 1e-3, 1e-2), ("p<1e-3", 0.0, 1e-3)):
            m = (probs >= lo) & (probs < hi)
            out[f"found_90 {name}"] = float((best[m] > 0.9).float().mean()) if m.any() else float("nan")
    return out
