"""The logit lens of a unit: what its write to the residual stream does to the logits, with every norm weight
between the unit and the unembedding folded in (as SAEDashboard and Neuronpedia do).

On Gemma 3 the final RMSNorm scales each dimension by 1 + weight (on gemma-3-270m from −0.81 to ~300), and an MLP
neuron's write also passes the post-feedforward norm (up to ~524): ranking `W_dec @ W_U` without them ranks
directions the model never reads that way. The lens is the linearisation with each norm's 1/rms frozen and left out
(a positive factor per prompt, so the ranking is the model's): units are logits per unit of activation, up to it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saescope.models import HookedModel


@torch.no_grad()
def logit_lens(hm: HookedModel, write: Tensor, mlp_layer: int | None = None) -> Tensor:
    """[..., V] logits of residual-stream writes [..., d]; `mlp_layer` when the write is an MLP's output before its
    post-feedforward norm (MLP neurons, SAE latents over MLP neurons)."""
    x = write.detach().float()
    if mlp_layer is not None and (pn := hm.post_mlp_norm(mlp_layer)) is not None:
        x = x * hm.norm_gain(pn)
    norm = hm.final_norm()
    if isinstance(norm, nn.LayerNorm):  # GPT-2: centred, then scaled (its bias adds the same to every write)
        x = x - x.mean(-1, keepdim=True)
    x = x * hm.norm_gain(norm)
    return x @ hm.W_U().detach().float()
