"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima et al. 2025): BatchTopK whose nested latent prefixes each
reconstruct on their own.

    widths m_1 < … < m_L = F;   x̂_l = f[:, :m_l] W_dec[:m_l] + b_dec;   loss = Σ_l FVU(x, x̂_l)

(SAELens' form: every inner level added to the full-width loss.) The first latents learn general features and
later ones refine them instead of absorbing them. Training stays sparse: each selected latent belongs to one
group, so the groups are decoded separately (one `embedding_bag` each, the same total work as one decode) and
summed cumulatively. Inference is BatchTopK's, saved as JumpReLU with the learned global threshold.
"""

from __future__ import annotations

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

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.widths = prefix_widths(",".join(map(str, cfg.matryoshka_widths)), cfg.d_sae)
        """Nested prefix widths ending at F."""

    def _reconstruct(self, x: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, base: Tensor
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        N, widths = x.shape[0], self.widths  # x: the target
        level = torch.bucketize(cols, torch.tensor(widths, device=cols.device), right=True)  # [nnz] prefix group
        x_hat = base.expand(N, -1)
        inner = []
        for g in range(len(widths)):
            m = level == g  # rows stay sorted under a mask
            x_hat = x_hat + sparse_decode(rows[m], cols[m], vals[m], self.W_dec, N)
            if g < len(widths) - 1:
                inner.append(fvu_loss(x, x_hat))
        return x_hat, ({"matryoshka": torch.stack(inner).sum()} if inner else {})
