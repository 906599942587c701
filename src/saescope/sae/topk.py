"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token, then ReLU.

    f = ReLU(TopK_k((x − b_dec) W_enc + b_enc)),  x̂ = f W_dec + b_dec,  unit-norm decoder rows.

Training uses the sparse kernels (one dense encoder matmul, everything else touches k columns/rows per token)
and AuxK (Gao et al. Appendix A.2): dead latents reconstruct the residual, k_aux = d/2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescope.sae.base import BaseSAE, TrainContext, TrainOutput, fvu_loss
from saescope.sae.kernels import GatherEncode, sparse_decode, topk_coo


class TopKSAE(BaseSAE):
    architecture = "topk"
    unit_norm_decoder = True

    def activation(self, pre: Tensor) -> Tensor:
        vals, idx = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def _select(self, pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return topk_coo(pre, k)

    def training_forward(self, x: Tensor, ctx: TrainContext | None = None, y: Tensor | None = None) -> TrainOutput:
        ctx = ctx or TrainContext()
        y = x if y is None else y  # the target (a transcoder's MLP output)
        N = x.shape[0]
        x_in = x - self.b_dec if self.cfg.apply_b_dec_to_input else x  # [N, d]
        with torch.no_grad():
            dt = ctx.encoder_dtype
            pre = torch.addmm(self.b_enc.to(dt), x_in.to(dt), self.W_enc.to(dt))  # [N, F] — the only dense matmul
        k = ctx.k or self.cfg.k
        rows, cols = self._select(pre, k)
        vals = GatherEncode.apply(x_in, self.W_enc, self.b_enc, rows, cols, pre).relu()  # [nnz]
        x0, pre0 = x_in, pre
        for _ in range(self.cfg.lista_iters):  # LISTA (base.lista_refine), sparse: x_in + η·r through the encoder
            r = x0 - sparse_decode(rows, cols, vals, self.W_dec, N)  # [N, d] residual of the current code
            x_in = x0 + self.lista_step * r  # gradients reach η, and the earlier codes through r
            with torch.no_grad():
                pre = torch.addmm(pre0, r.detach().to(dt), self.W_enc.to(dt), alpha=float(self.lista_step))
            rows, cols = self._select(pre, k)  # the one extra dense product per step is the addmm above
            vals = GatherEncode.apply(x_in, self.W_enc, self.b_enc, rows, cols, pre).relu()
        x_hat, losses = self._reconstruct(y, rows, cols, vals, self.bias_out(x))
        active = vals > 0
        counts = torch.bincount(cols[active], minlength=self.cfg.d_sae)  # [F] tokens each latent fired on
        fired = counts > 0
        self._count(counts, N)
        if ctx.dead is not None and ctx.auxk_alpha > 0 and bool(ctx.dead.any()):
            losses["auxk"] = ctx.auxk_alpha * self._auxk(y, x_hat, x_in, pre, ctx.dead)
        self._after_select(vals, active)
        return TrainOutput(x_hat, active.sum().detach() / N, fired, losses)

    def _reconstruct(self, y: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, base: Tensor
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        """ŷ [N, d_out] = the sparse code decoded + `base` (b_dec, plus a skip term), and any extra loss terms of
        the architecture (y is the target)."""
        return sparse_decode(rows, cols, vals, self.W_dec, y.shape[0]) + base, {}

    def _after_select(self, vals: Tensor, active: Tensor) -> None:
        pass

    def _count(self, counts: Tensor, n: int) -> None:
        """Sees how many of the n tokens each latent fired on (counts [F]) in every training step."""

    def _auxk(self, x: Tensor, x_hat: Tensor, x_in: Tensor, pre: Tensor, dead: Tensor) -> Tensor:
        """x: the target, x_hat its reconstruction [N, d_out]; x_in the encoder's input."""
        N, d = x.shape
        n_dead = int(dead.sum())
        k_aux = min(d // 2, n_dead)
        masked = pre.masked_fill(~dead, float("-inf"))
        rows, cols = topk_coo(masked, k_aux)
        vals = GatherEncode.apply(x_in, self.W_enc, self.b_enc, rows, cols, pre).relu()
        e = (x - x_hat).detach()  # the residual the dead latents should explain
        e_hat = sparse_decode(rows, cols, vals, self.W_dec, N)
        scale = min(n_dead / k_aux, 1.0)
        return scale * fvu_loss(e, e_hat).nan_to_num(0.0)
