"""Sign-SGD with schedule-free averaging (the `signum` optimiser), implemented from the math.

Schedule-free SGD (Defazio et al. 2024, "The Road Less Scheduled", Alg. 1) keeps two sequences per parameter and
evaluates the gradient at an interpolation of them:

    y_t     = (1 − β) z_t + β x_t               the point the model holds during training (gradients taken here)
    z_{t+1} = z_t − γ_t · sign(∇L(y_t))          a plain sign-SGD step (Bernstein et al. 2018: steepest descent in ℓ∞)
    x_{t+1} = (1 − c_{t+1}) x_t + c_{t+1} z_{t+1},   c_{t+1} = γ_max,t² / Σ_{i≤t} γ_max,i²

x is a (warm-up weighted) running average of the z iterates and is what the final SAE uses; no LR decay is needed
(the averaging plays its part). β (`momentum`, 0 < β < 1) is the interpolation weight, 0.95 as in sparsify's default.

Only z is stored; x is recovered from the parameters each step, x = z + (y − z)/β (as schedulefree's wrapper,
which sparsify uses, does). So a constraint applied to the parameters between steps (unit-norm decoder rows) carries
into the average: projecting y by δ moves x by δ/β. That matters: keeping x as a third copy that the projection
never reaches found fewer true features than sparsify with the same steps (`even` regime, 1,024 features, 131k
tokens: 33 % against 41 %, projecting x and z separately as well); recovering x from y, as here, found 41 %, the
same SAE as sparsify's to the last digit. It also keeps one copy of the parameters fewer.

Why sign steps suit SAEs: every latent whose row received any gradient moves by the same γ per coordinate, so
rarely firing latents (rare features, and dead latents fed only by AuxK) learn as fast as common ones; with Adam the
step of a latent firing in a fraction p of batches shrinks like √p (m ≈ p·g, √v ≈ √p·|g|).

The state (`z`) is a tensor per parameter, so checkpoints stay safetensors + JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from saescope.train.config import TrainerConfig


class ScheduleFreeSignSGD(torch.optim.Optimizer):
    """Schedule-free sign-SGD. The parameters hold y while training; `averaged()` puts x into them."""

    def __init__(self, params: Iterable[Tensor], lr: float = 5e-3, momentum: float = 0.95,
                 weight_lr_power: float = 2.0) -> None:
        if lr <= 0 or not 0.0 < momentum < 1.0:
            raise ValueError(f"invalid lr {lr} or momentum {momentum} (0 < momentum < 1)")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_lr_power=weight_lr_power,
                                      lr_max=0.0, weight_sum=0.0))

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        assert closure is None, "closure is not supported"
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            lr, beta = group["lr"], group["momentum"]
            group["lr_max"] = lr_max = max(lr, group["lr_max"])
            w = lr_max ** group["weight_lr_power"]
            group["weight_sum"] += w
            c = w / group["weight_sum"]  # = 1/t at a constant LR: x is the uniform average of z_1..z_t
            for p in ps:
                if "z" not in self.state[p]:  # z_0 = x_0 = y_0
                    self.state[p]["z"] = p.detach().clone()
            zs = [self.state[p]["z"] for p in ps]
            torch._foreach_lerp_(ps, zs, 1 - 1 / beta)  # the parameters now hold x = z + (y − z)/β
            torch._foreach_add_(zs, torch._foreach_sign([p.grad for p in ps]), alpha=-lr)  # z ← z − γ sign(g)
            torch._foreach_lerp_(ps, zs, c)  # x ← (1 − c) x + c z
            torch._foreach_lerp_(ps, zs, 1 - beta)  # y ← (1 − β) z + β x

    @torch.no_grad()
    def average(self, p: Tensor) -> Tensor:
        """The running average x of parameter p (a new tensor; p itself where no step was taken yet)."""
        z = self.state.get(p, {}).get("z")
        beta = next(g["momentum"] for g in self.param_groups if any(q is p for q in g["params"]))
        return p.detach().clone() if z is None else p.detach().lerp(z, 1 - 1 / beta)

    @torch.no_grad()
    def averaged(self) -> None:
        """Put the averaged iterate x into the parameters (for evaluation and saving; training stops here)."""
        for group in self.param_groups:
            for p in group["params"]:
                z = self.state.get(p, {}).get("z")
                if z is not None:
                    p.lerp_(z, 1 - 1 / group["momentum"])


def make_optimizer(cfg: TrainerConfig, params: list[Tensor]) -> torch.optim.Optimizer:
    if cfg.optimizer == "signum":
        return ScheduleFreeSignSGD(params, lr=cfg.learning_rate(), momentum=cfg.momentum)
    try:  # the fused kernel saves ~10% of a step on CPU and more on GPU
        return torch.optim.Adam(params, lr=cfg.learning_rate(), betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.learning_rate(), betas=(0.9, 0.999))


def contiguous_alias(p: Tensor) -> Tensor:
    """`p` itself, or for a transposed 2-d parameter a contiguous leaf view of the same memory."""
    if p.dim() == 2 and not p.is_contiguous() and p.T.is_contiguous():
        return p.detach().T
    return p


@torch.no_grad()
def clip_grad_norm(params: list[Tensor], max_norm: float) -> float:
    """Scale the gradients so their global L2 norm is at most `max_norm`; unlike torch's, no pass over the
    gradients when they are already within bounds (the common case). Returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
    if norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm
