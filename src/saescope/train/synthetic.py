"""Ground truth for SAE training: known sparse features in superposition, and how well an SAE recovers them.

x = μ + Σ_i a_i·u_i + noise, with n unit features u_i in d dims (n > d: superposition), feature i firing with
a Zipf-like probability p_i ∝ 1/(i+1)^α scaled so that on average `active` features fire per sample, and
magnitudes a_i ~ Uniform(0.5, 1.5) (optionally correlated in blocks).
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

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        fires = torch.rand(n, len(self.probs), generator=generator) < self.probs
        if self.correlated_blocks:
            b = self.correlated_blocks
            lead = fires[:, ::b].repeat_interleave(b, dim=1)[:, : fires.shape[1]]
            fires |= lead & (torch.rand(fires.shape, generator=generator) < 0.5)
        mags = 0.5 + torch.rand(fires.shape, generator=generator)
        x = (fires * mags) @ self.features + self.mean
        return x + self.noise * torch.randn(n, self.features.shape[1], generator=generator)


def make_toy(d: int = 64, n_features: int = 256, active: float = 5.0, alpha: float = 0.5, seed: int = 0,
             mean_scale: float = 0.5, noise: float = 0.01, correlated_blocks: int = 0) -> ToyModel:
    # Offset the seed: an SAE initialised from torch.manual_seed(seed) must not start on the true features.
    g = torch.Generator().manual_seed(0x5EED_0000 + seed)
    u = torch.randn(n_features, d, generator=g)
    u /= u.norm(dim=1, keepdim=True)
    p = 1.0 / (torch.arange(n_features) + 1.0) ** alpha
    p = (p * active / p.sum()).clamp(max=1.0)
    mean = mean_scale * torch.randn(d, generator=g) / d**0.5
    return ToyModel(u, p, mean, noise, correlated_blocks)


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
