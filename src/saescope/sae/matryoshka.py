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
from saescope.sae.base import TrainOutput, fvu_loss
from saescope.sae.batchtopk import BatchTopKSAE
from saescope.sae.kernels import GatherEncode, sparse_decode
from saescope.sae.topk import TrainContext


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
    widths: tuple[int, ...] = ()
    """Nested prefix widths ending at F (the trainer sets them from --matryoshka_widths; empty = doubling)."""

    def training_forward(self, x: Tensor, ctx: TrainContext | None = None) -> TrainOutput:
        ctx = ctx or TrainContext()
        N, F = x.shape[0], self.cfg.d_sae
        widths = self.widths or prefix_widths("", F)
        x_in = x - self.b_dec if self.cfg.apply_b_dec_to_input else x  # [N, d]
        with torch.no_grad():
            dt = self.encoder_dtype
            pre = torch.addmm(self.b_enc.to(dt), x_in.to(dt), self.W_enc.to(dt))  # [N, F]
        rows, cols = self._select(pre)
        vals = GatherEncode.apply(x_in, self.W_enc, self.b_enc, rows, cols, pre).relu()  # [nnz]
        group = torch.bucketize(cols, torch.tensor(widths, device=cols.device), right=True)  # [nnz] level index
        x_hat = self.b_dec.expand(N, -1)
        inner = []
        for level in range(len(widths)):
            m = group == level  # rows stay sorted under a mask
            x_hat = x_hat + sparse_decode(rows[m], cols[m], vals[m], self.W_dec, N)
            if level < len(widths) - 1:
                inner.append(fvu_loss(x, x_hat))
        active = vals > 0
        fired = torch.bincount(cols[active], minlength=F) > 0
        losses = {"matryoshka": torch.stack(inner).sum()} if inner else {}
        if ctx.dead is not None and ctx.auxk_alpha > 0 and bool(ctx.dead.any()):
            losses["auxk"] = ctx.auxk_alpha * self._auxk(x, x_hat, x_in, pre, ctx.dead)
        self._after_select(vals, active)
        return TrainOutput(x_hat, active.sum().detach() / N, fired, losses)
