"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token, then ReLU.

    f = ReLU(TopK_k((x − b_dec) W_enc + b_enc)),  x̂ = f W_dec + b_dec,  unit-norm decoder rows.

Training uses the sparse kernels (one dense encoder matmul, everything else touches k columns/rows per token)
and AuxK (Gao et al. Appendix A.2): dead latents reconstruct the residual, k_aux = d/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.sae.base import BaseSAE, TrainOutput, fvu_loss
from saescope.sae.kernels import GatherEncode, sparse_decode, topk_coo


@dataclass
class TrainContext:
    """Per-step information the trainer passes to `training_forward`."""

    dead: Tensor | None = None
    """bool [F]: latents that have not fired for the dead window (AuxK / pre-act loss target them)."""
    auxk_alpha: float = 1 / 32
    l1_coefficient: float = 0.0
    l0_coefficient: float = 0.0
    pre_act_coefficient: float = 0.0
    sparsity_scale: float = 1.0
    """Warm-up multiplier in [0, 1] for the sparsity coefficient."""


class TopKSAE(BaseSAE):
    architecture = "topk"
    unit_norm_decoder = True
    encoder_dtype: torch.dtype = torch.float32
    """dtype of the training forward's dense encoder matmul (the trainer sets bfloat16 where it is fast: GPUs and
    CPUs with AMX/AVX512-BF16, like autocast). Selected values and every gradient stay in float32."""
    k_train: int = 0
    """Latents kept per token in training (0 = cfg.k); the trainer anneals it down to k with --k_anneal_frac."""

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        vals, idx = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        return topk_coo(pre, self.k_train or self.cfg.k)

    def training_forward(self, x: Tensor, ctx: TrainContext | None = None) -> TrainOutput:
        ctx = ctx or TrainContext()
        N = x.shape[0]
        x_in = x - self.b_dec if self.cfg.apply_b_dec_to_input else x  # [N, d]
        with torch.no_grad():
            dt = self.encoder_dtype
            pre = torch.addmm(self.b_enc.to(dt), x_in.to(dt), self.W_enc.to(dt))  # [N, F] — the only dense matmul
        rows, cols = self._select(pre)
        vals = GatherEncode.apply(x_in, self.W_enc, self.b_enc, rows, cols, pre).relu()  # [nnz]
        x_hat, losses = self._reconstruct(x, rows, cols, vals)
        active = vals > 0
        fired = torch.bincount(cols[active], minlength=self.cfg.d_sae) > 0
        if ctx.dead is not None and ctx.auxk_alpha > 0 and bool(ctx.dead.any()):
            losses["auxk"] = ctx.auxk_alpha * self._auxk(x, x_hat, x_in, pre, ctx.dead)
        self._after_select(vals, active)
        return TrainOutput(x_hat, active.sum().detach() / N, fired, losses)

    def _reconstruct(self, x: Tensor, rows: Tensor, cols: Tensor, vals: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x̂ [N, d] from the sparse code, plus any extra loss terms of the architecture."""
        return sparse_decode(rows, cols, vals, self.W_dec, x.shape[0]) + self.b_dec, {}

    def _after_select(self, vals: Tensor, active: Tensor) -> None:
        pass

    def _auxk(self, x: Tensor, x_hat: Tensor, x_in: Tensor, pre: Tensor, dead: Tensor) -> Tensor:
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
