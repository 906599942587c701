"""BatchTopK SAE (Bussmann et al. 2024): keep the k·N largest activations of the whole batch (L0 = k on average).

Inference uses a learned global threshold θ (EMA of the smallest selected activation), so it is saved as a
JumpReLU SAE with threshold θ for every latent, as SAELens does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saescope.sae.base import SAEConfig
from saescope.sae.kernels import batch_topk_coo
from saescope.sae.topk import TopKSAE


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    threshold_lr = 0.01

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))

    def _select(self, pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return batch_topk_coo(pre.relu(), k)

    @torch.no_grad()
    def _after_select(self, vals: Tensor, active: Tensor) -> None:
        if active.any():
            lo = vals[active].min()
            t = self.threshold
            self.threshold.copy_(lo if t == 0 else (1 - self.threshold_lr) * t + self.threshold_lr * lo)

    def activation(self, pre: Tensor) -> Tensor:
        pre = pre.relu()
        return pre * (pre > self.threshold)

    @torch.no_grad()
    def calibrate_threshold(self, x: Tensor, k: float, iters: int = 24) -> float:
        """Sets θ so that `encode`'s mean L0 on the rows x [N, d] is k, and returns it. Training keeps exactly
        k·N activations per batch, and θ is only a running estimate of the smallest kept one; with a LISTA
        encoder the inference code also takes its first step through θ where training took the batch's top k·N,
        and the estimate ran 16 % high in L0 (37.2 against k = 32 on gemma-3-270m's resid_post.9). Linear
        encoder: θ is the (k·N + 1)-th largest activation, exactly; LISTA: bisection on log θ (L0 falls as θ
        rises), to the θ whose L0 is nearest k."""
        N = x.shape[0]
        pre = self.pre_acts(x)  # [N, F]
        if self.cfg.lista_iters == 0:
            v = pre.relu().flatten()
            n = min(round(k * N), v.numel() - 1)
            theta = float(v.topk(n + 1).values[-1])
        else:
            def l0(t: float) -> float:
                self.threshold.fill_(t)
                return float((self.lista_refine(x, pre) > 0).sum()) / N

            lo = hi = float(self.threshold) if float(self.threshold) > 0 else float(pre.relu().mean())
            l_lo = l_hi = l0(lo)
            while l_lo < k and lo > 1e-12:
                lo /= 2
                l_lo = l0(lo)
            while l_hi > k:
                hi *= 2
                l_hi = l0(hi)
            for _ in range(iters):  # l_lo = l0(lo) >= k >= l0(hi) = l_hi
                mid = (lo * hi) ** 0.5
                l_mid = l0(mid)
                lo, l_lo, hi, l_hi = (mid, l_mid, hi, l_hi) if l_mid >= k else (lo, l_lo, mid, l_mid)
            theta = lo if abs(l_lo - k) <= abs(l_hi - k) else hi
        self.threshold.fill_(theta)
        return theta

    def inference_state(self) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
        tensors = {k: v.detach() for k, v in self.state_dict().items() if k != "threshold"}
        tensors["threshold"] = self.threshold.detach().expand(self.cfg.d_sae).clone()
        return "jumprelu", tensors, {}
