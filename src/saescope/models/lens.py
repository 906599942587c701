"""The logit lens of a unit: what its write to the residual stream does to the logits, with every norm weight
between the unit and the unembedding folded in (as SAEDashboard and Neuronpedia do).

On Gemma 3 the final RMSNorm scales each dimension by 1 + weight (on gemma-3-270m from −0.81 to ~300), and an MLP
neuron's write also passes the post-feedforward norm (up to ~524): ranking `W_dec @ W_U` without them ranks
directions the model never reads that way. The lens is the linearisation with each norm's 1/rms frozen and left out
(a positive factor per prompt, so the ranking is the model's): units are logits per unit of activation, up to it.
`norm_scale` measures that factor on real text, so the viewer shows logit changes when the unit fires at its max.
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


def _scale(norm: nn.Module, x: Tensor) -> Tensor:
    """[...]: what a norm divides x [..., d] by (LayerNorm's σ, RMSNorm's rms)."""
    x = x.float()
    if isinstance(norm, nn.LayerNorm):
        x = x - x.mean(-1, keepdim=True)
        eps = norm.eps
    else:
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6)
    return torch.sqrt(x.pow(2).mean(-1) + eps)


@torch.no_grad()
def norm_scale(hm: HookedModel, texts: list[str], mlp_layer: int | None = None, max_tokens: int = 64) -> float:
    """The median, over the texts' positions (BOS left out), of the factor a write is divided by on its way to the
    logits: the final norm's scale, times the post-feedforward norm's at `mlp_layer` (Gemma) for an MLP's write."""
    norms = [hm.final_norm()] + ([pn] if mlp_layer is not None and (pn := hm.post_mlp_norm(mlp_layer)) else [])
    got: dict[int, Tensor] = {}
    handles = [n.register_forward_pre_hook(lambda m, a, j=j: got.__setitem__(j, _scale(norms[j], a[0][0])))
               for j, n in enumerate(norms)]
    per_pos = []
    try:
        for text in texts:
            ids = hm.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
            if not ids:
                continue
            bos = hm.tokenizer.bos_token_id
            hm.model(input_ids=torch.tensor([([bos] if bos is not None else []) + ids]), use_cache=False)
            s = torch.ones_like(got[0])
            for j in range(len(norms)):
                s = s * got[j]
            per_pos.append(s[1:] if bos is not None else s)
    finally:
        for h in handles:
            h.remove()
    if not per_pos:
        return float("nan")
    return float(torch.cat(per_pos).median())
