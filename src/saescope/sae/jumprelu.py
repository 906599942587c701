"""JumpReLU SAE (Rajamanoharan et al. 2024): f_i = z_i · H(z_i − θ_i), z = (x − b_dec) W_enc + b_enc.

θ is trained through straight-through pseudo-gradients with a rectangle kernel K(u) = 1[|u| < ½] of bandwidth ε:
∂JumpReLU/∂θ = −(θ/ε)·K((z−θ)/ε), ∂H/∂θ = −(1/ε)·K((z−θ)/ε); no gradient reaches z through the step.
Sparsity loss: λ·mean_b Σ_i H(z_i − θ_i) (the L0 through the step's pseudo-gradient);
optional pre-act loss α·mean_b Σ_{i dead} ReLU(θ_i − z_i)‖W_dec,i‖ nudges dead latents back over the threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saescope.sae.base import BaseSAE, SAEConfig, TrainContext, TrainOutput


def _rect(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None]:
        z, theta = ctx.saved_tensors
        g_z = g * (z > theta)
        g_theta = (-(theta / ctx.eps) * _rect((z - theta) / ctx.eps) * g).sum(0)
        return g_z, g_theta, None


class StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:
        z, theta = ctx.saved_tensors
        return None, (-(1.0 / ctx.eps) * _rect((z - theta) / ctx.eps) * g).sum(0), None


class JumpReLUSAE(BaseSAE):
    architecture = "jumprelu"
    bandwidth = 0.05
    init_threshold = 0.01

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        # θ is a plain parameter (as in SAELens ≥ 6.48): with log θ, Adam's fixed-size steps move θ by a factor
        # per step, far too slowly from the 0.01 init to useful thresholds at small step counts.
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), self.init_threshold))

    def activation(self, pre: Tensor) -> Tensor:
        # LISTA (base.lista_refine) only reaches here as a saved BatchTopK/Matryoshka (training a JumpReLU with it
        # is refused)
        return pre * (pre > self.threshold.clamp_min(0.0))

    def training_forward(self, x: Tensor, ctx: TrainContext | None = None, y: Tensor | None = None) -> TrainOutput:
        ctx = ctx or TrainContext()
        z = self.pre_acts(x)  # [N, F]
        theta = self.threshold.clamp_min(0.0)
        f = JumpReLUFn.apply(z, theta, self.bandwidth)
        x_hat = f @ self.W_dec + self.bias_out(x)
        dec_norm = self.W_dec.norm(dim=1)
        lam = ctx.l0_coefficient * ctx.sparsity_scale
        sparsity = StepFn.apply(z, theta, self.bandwidth).sum(1).mean()
        losses = {"l0_loss": lam * sparsity}  # not "l0": the trainer logs the measured L0 under that key
        if ctx.pre_act_coefficient > 0 and ctx.dead is not None and bool(ctx.dead.any()):
            gap = (theta - z).relu() * dec_norm
            losses["pre_act"] = ctx.pre_act_coefficient * gap[:, ctx.dead].sum(1).mean()
        active = f.detach() != 0
        return TrainOutput(x_hat, active.sum(1).float().mean(), active.any(0), losses)

    @torch.no_grad()
    def load_threshold(self, threshold: Tensor) -> None:
        self.threshold.copy_(threshold)
