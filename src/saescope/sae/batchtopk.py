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

    def inference_state(self) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
        tensors = {k: v.detach() for k, v in self.state_dict().items() if k != "threshold"}
        tensors["threshold"] = self.threshold.detach().expand(self.cfg.d_sae).clone()
        return "jumprelu", tensors, {}
