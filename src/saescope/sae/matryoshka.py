"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima et al. 2025): BatchTopK whose nested latent prefixes each
reconstruct on their own.

    widths m_1 < … < m_L = F;   x̂_l = f[:, :m_l] W_dec[:m_l] + b_dec;   loss = Σ_l FVU(x, x̂_l)

(SAELens' form: every inner level added to the full-width loss.) The first latents learn general features and
later ones refine them instead of absorbing them. Two training options (issue 30, after the LISTA-Matryoshka
recipe's description): `detach_inner` — an inner level's loss reaches only its own group's latents (x̂_l =
stop_grad(x̂_{l−1}) + group l), only the full-width loss trains everything; `sort_by_frequency` — latents are
assigned to levels by their firing-frequency rank (EMA of firing rates, re-ranked every step) instead of their
index, so the most frequent latents form the innermost prefix; `sorted_by_frequency()` permutes them into that
order at the end, so the saved prefixes are the levels. Training stays sparse: each selected latent belongs to one
group, so the groups are decoded separately (one `embedding_bag` each, the same total work as one decode) and
summed cumulatively. Inference is BatchTopK's, saved as JumpReLU with the learned global threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.sae.base import SAEConfig, fvu_loss
from saescope.sae.batchtopk import BatchTopKSAE
from saescope.sae.kernels import sparse_decode


def prefix_widths(spec: str, width: int) -> tuple[int, ...]:
    """'' → F/16, F/8, F/4, F/2, F (doubling, at least 1); else comma-separated inner widths, F appended."""
    if not spec.strip():
        ws = [width >> s for s in (4, 3, 2, 1) if width >> s >= 1]
    else:
        try:
            ws = [int(w) for w in spec.split(",") if w.strip()]
        except ValueError:
            raise SaescopeError(f"--matryoshka_widths {spec!r}: expected comma-separated integers") from None
    ws = sorted(set(w for w in ws if w < width)) + [width]
    if ws[0] < 1:
        raise SaescopeError(f"--matryoshka_widths {spec!r}: widths must be positive")
    return tuple(ws)


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    architecture = "matryoshka_batchtopk"

    freq_decay = 0.99
    """Per-step decay of the firing-rate EMA that ranks latents (`sort_by_frequency`): a ~100-step memory."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.widths = prefix_widths(",".join(map(str, cfg.matryoshka_widths)), cfg.d_sae)
        """Nested prefix widths ending at F."""
        self.detach_inner = False
        self.sort_by_frequency = False

    def enable_frequency_sort(self) -> None:
        self.sort_by_frequency = True
        self.register_buffer("fire_rate", torch.zeros(self.cfg.d_sae, device=self.W_dec.device))  # [F] EMA

    def latent_levels(self) -> Tensor:
        """[F] level of each latent: by index, or (sort_by_frequency) by firing-rate rank."""
        return frequency_levels(self.fire_rate, self.widths) if self.sort_by_frequency else \
            torch.bucketize(torch.arange(self.cfg.d_sae, device=self.W_dec.device),
                            torch.tensor(self.widths, device=self.W_dec.device), right=True)

    @torch.no_grad()
    def _count(self, counts: Tensor, n: int) -> None:
        if self.sort_by_frequency:
            self.fire_rate.mul_(self.freq_decay).add_(counts.float() / n, alpha=1 - self.freq_decay)

    def _reconstruct(self, x: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, base: Tensor
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        N, widths = x.shape[0], self.widths  # x: the target
        level = self.latent_levels()[cols]  # [nnz] prefix group
        x_hat = base.expand(N, -1)
        inner = []
        for g in range(len(widths)):
            m = level == g  # rows stay sorted under a mask
            part = sparse_decode(rows[m], cols[m], vals[m], self.W_dec, N)  # [N, d]
            if g < len(widths) - 1:
                inner.append(fvu_loss(x, (x_hat.detach() if self.detach_inner else x_hat) + part))
            x_hat = x_hat + part
        return x_hat, ({"matryoshka": torch.stack(inner).sum()} if inner else {})

    def inference_state(self) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
        arch, tensors, extra = super().inference_state()
        tensors.pop("fire_rate", None)  # training state
        return arch, tensors, extra

    @torch.no_grad()
    def sorted_by_frequency(self) -> Tensor:
        """Permute the latents into level order (most frequent first where sorting by frequency), so the saved
        prefixes are the trained levels. Returns the permutation [F] (new position → old index)."""
        perm = torch.argsort(self.latent_levels(), stable=True)
        if self.sort_by_frequency:
            perm = torch.argsort(-self.fire_rate, stable=True)
            self.fire_rate.copy_(self.fire_rate[perm])
        enc = self.W_enc.T  # [F, d] view of the latent-major storage
        enc.copy_(enc[perm])
        self.W_dec.copy_(self.W_dec[perm])
        self.b_enc.copy_(self.b_enc[perm])
        return perm


def frequency_levels(rate: Tensor, widths: tuple[int, ...]) -> Tensor:
    """[F] Matryoshka level of each latent when levels are filled in order of firing rate `rate` [F]: the
    widths[0] most frequent latents are level 0, the next widths[1] − widths[0] level 1, ... (ties: lower index
    first, so with no firing seen yet this is the index order)."""
    order = torch.argsort(-rate, stable=True)  # [F] latents, most frequent first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=rate.device)
    return torch.bucketize(rank, torch.tensor(widths, device=rate.device), right=True)
