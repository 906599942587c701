"""Standard ReLU + L1 SAE (Towards Monosemanticity, April-2024 update): L1 weighted by decoder row norms.

    f = ReLU((x − b_dec) W_enc + b_enc),  loss = FVU + λ·mean_b Σ_i f_i‖W_dec,i‖   (decoder norms unconstrained)
"""

from __future__ import annotations

from torch import Tensor

from saescope.sae.base import BaseSAE, TrainContext, TrainOutput


class ReLUSAE(BaseSAE):
    architecture = "standard"

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu()

    def training_forward(self, x: Tensor, ctx: TrainContext | None = None, y: Tensor | None = None) -> TrainOutput:
        ctx = ctx or TrainContext()
        f = self.encode(x)  # [N, F]
        x_hat = f @ self.W_dec + self.bias_out(x)
        l1 = (f * self.W_dec.norm(dim=1)).sum(1).mean()
        active = f.detach() > 0
        losses = {"l1": ctx.l1_coefficient * ctx.sparsity_scale * l1}
        return TrainOutput(x_hat, active.sum(1).float().mean(), active.any(0), losses)
