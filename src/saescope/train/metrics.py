"""Reconstruction and sparsity metrics as pure functions of tensors (no model, no SAE object).

Conventions (stated because the anchors disagree, see reference/sae_training.md §3):
- explained variance = 1 − E‖x − x̂‖² / E‖x − E x‖², numerator and denominator averaged separately over tokens,
  variance about the mean (predicting the mean ⇒ 0, perfect ⇒ 1); FVU = 1 − explained variance.
- L0 counts latents ≠ 0; dead = never fired in the evaluated tokens; dense = fires on more than 10% of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ReconstructionSums:
    """Exact running sums (float64) behind every reconstruction and sparsity metric, so that the metrics of many
    batches equal those of their concatenation; `result()` turns them into the reported numbers."""

    n: int = 0
    sq_err: float = 0.0
    sum_x: Tensor | None = None
    """[d] Σ x (for the variance about the mean)."""
    sum_x2: float = 0.0
    cos: float = 0.0
    ratio: float = 0.0
    """Σ ‖x̂‖/‖x‖."""
    dot: float = 0.0
    sum_xhat2: float = 0.0
    l0: float = 0.0
    l1: float = 0.0
    fire_counts: Tensor | None = None
    """[F] tokens on which each latent fired."""

    def add(self, x: Tensor, x_hat: Tensor, f: Tensor | None = None) -> ReconstructionSums:
        """x, x_hat [N, d]; f [N, F] latent activations (optional)."""
        xd, hd = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.sq_err += float((xd - hd).pow(2).sum())
        self.sum_x = xd.sum(0) if self.sum_x is None else self.sum_x + xd.sum(0)
        self.sum_x2 += float(xd.pow(2).sum())
        self.cos += float(torch.nn.functional.cosine_similarity(xd, hd, dim=1).sum())
        self.ratio += float((hd.norm(dim=1) / xd.norm(dim=1).clamp_min(1e-30)).sum())
        self.dot += float((xd * hd).sum())
        self.sum_xhat2 += float(hd.pow(2).sum())
        if f is not None:
            self.l0 += float((f != 0).sum())
            self.l1 += float(f.abs().double().sum())
            fc = (f != 0).sum(0)
            self.fire_counts = fc if self.fire_counts is None else self.fire_counts + fc
        return self

    def variance(self) -> float:
        """E‖x − E x‖² = E‖x‖² − ‖E x‖²."""
        assert self.sum_x is not None
        return self.sum_x2 / self.n - float((self.sum_x / self.n).pow(2).sum())

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        fvu_ = (self.sq_err / n) / max(self.variance(), 1e-30)
        out = {"tokens": self.n, "fvu": fvu_, "explained_variance": 1 - fvu_, "mse": self.sq_err / n,
               "cosine": self.cos / n, "shrinkage": self.ratio / n,
               "relative_reconstruction_bias": self.sum_xhat2 / self.dot if self.dot else float("nan"),
               "l0": self.l0 / n, "l1": self.l1 / n}
        return out


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained, [N, d] inputs."""
    return ReconstructionSums().add(x, x_hat).result()["fvu"]


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    return ReconstructionSums().add(x, x_hat).result()["explained_variance"]


def cosine(x: Tensor, x_hat: Tensor) -> float:
    """Mean per-token cosine similarity between x and x̂."""
    return ReconstructionSums().add(x, x_hat).result()["cosine"]


def shrinkage(x: Tensor, x_hat: Tensor) -> float:
    """Mean ‖x̂‖/‖x‖ (l2 ratio): < 1 means the SAE shrinks its reconstructions."""
    return ReconstructionSums().add(x, x_hat).result()["shrinkage"]


def relative_reconstruction_bias(x: Tensor, x_hat: Tensor) -> float:
    """E‖x̂‖² / E⟨x, x̂⟩ (Gated SAE paper eq. 10): 1 is unbiased."""
    return ReconstructionSums().add(x, x_hat).result()["relative_reconstruction_bias"]


def l0(f: Tensor) -> float:
    """Mean number of non-zero latents per token."""
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
    return kl_from_logprobs(logits_p.log_softmax(-1), logits_q.log_softmax(-1))


def kl_from_logprobs(lp: Tensor, lq: Tensor) -> Tensor:
    """Per-position KL(p ‖ q) from log-probabilities [..., V]."""
    return (lp.exp() * (lp - lq)).sum(-1)


def mean_and_se(values: Tensor) -> tuple[float, float]:
    """Mean of [N] independent values and its standard error s/√N (s: sample standard deviation, N − 1 in the
    denominator); the error is nan for N < 2."""
    v = values.double().flatten()
    n = v.numel()
    mean = float(v.mean()) if n else float("nan")
    return mean, (float(v.std(correction=1)) / n**0.5 if n > 1 else float("nan"))
