"""Reconstruction and sparsity metrics as pure functions of tensors (no model, no SAE object).

Conventions (stated because the anchors disagree, see reference/sae_training.md §3):
- explained variance = 1 − E‖x − x̂‖² / E‖x − E x‖², numerator and denominator averaged separately over tokens,
  variance about the mean (predicting the mean ⇒ 0, perfect ⇒ 1); FVU = 1 − explained variance.
- L0 counts latents ≠ 0; dead = never fired in the evaluated tokens; dense = fires on more than 10% of tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained, [N, d] inputs."""
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum(1).mean() / (x - x.mean(0)).pow(2).sum(1).mean().clamp_min(1e-30))


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    return 1.0 - fvu(x, x_hat)


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of Σ_d (x − x̂)² (SAELens' training MSE convention)."""
    return float((x.double() - x_hat.double()).pow(2).sum(1).mean())


def cosine(x: Tensor, x_hat: Tensor) -> float:
    """Mean per-token cosine similarity between x and x̂."""
    return float(torch.nn.functional.cosine_similarity(x.double(), x_hat.double(), dim=1).mean())


def shrinkage(x: Tensor, x_hat: Tensor) -> float:
    """Mean ‖x̂‖/‖x‖ (l2 ratio): < 1 means the SAE shrinks its reconstructions."""
    return float((x_hat.double().norm(dim=1) / x.double().norm(dim=1).clamp_min(1e-30)).mean())


def relative_reconstruction_bias(x: Tensor, x_hat: Tensor) -> float:
    """E‖x̂‖² / E⟨x, x̂⟩ (Gated SAE paper eq. 10): 1 is unbiased."""
    x, x_hat = x.double(), x_hat.double()
    return float(x_hat.pow(2).sum(1).mean() / (x * x_hat).sum(1).mean())


def l0(f: Tensor) -> float:
    return float((f != 0).sum(1).double().mean())


def l1(f: Tensor) -> float:
    return float(f.abs().sum(1).double().mean())


def density(fire_counts: Tensor, n_tokens: int) -> Tensor:
    """Per-latent firing frequency in [0, 1]."""
    return fire_counts.double() / max(n_tokens, 1)


def dead_fraction(dens: Tensor) -> float:
    return float((dens == 0).double().mean())


def dense_fraction(dens: Tensor, above: float = 0.1) -> float:
    return float((dens > above).double().mean())


def log_density_histogram(dens: Tensor, bins: int = 20, lo: float = -8.0) -> dict[str, list[float]]:
    """Histogram of log10(density) for live latents (dead ones counted apart), as JSON-friendly lists."""
    live = dens[dens > 0].double().log10().clamp_min(lo)
    counts = torch.histc(live, bins=bins, min=lo, max=0.0) if live.numel() else torch.zeros(bins)
    edges = torch.linspace(lo, 0.0, bins + 1)
    return {"edges": [round(float(e), 3) for e in edges], "counts": [int(c) for c in counts],
            "dead": int((dens == 0).sum())}


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> float:
    """(CE_zero − CE_sae) / (CE_zero − CE_clean): 1 = as good as the clean model, 0 = as bad as zero-ablation."""
    denom = ce_zero - ce_clean
    return float("nan") if abs(denom) < 1e-12 else (ce_zero - ce_sae) / denom


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-position KL(p ‖ q) from logits [..., V]."""
    lp, lq = logits_p.log_softmax(-1), logits_q.log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)
