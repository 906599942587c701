"""How much the later blocks read each dimension of the residual stream: the gains of the norms that read it.

Every block after the hookpoint reads the residual through a norm, x / rms(x) · g (Gemma: g = 1 + weight), before
attention and before the MLP, and the unembedding reads it through the final norm. So an error e in dimension i
reaches them as e_i · g_i / rms(x): a dimension with a small gain barely matters, one with a large gain matters a
lot, whatever its variance. gemma-3-270m's resid_post.9 is the extreme case: dimension 163 holds half of the
variance (mean ≈ 6,000, SD ≈ 1,070) and the next MLP's norm multiplies it by 0, so a reconstruction loss weighted
by variance spends half its effort where no block looks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescope.models.hooks import HookedModel

_READING_NORMS = {"gpt2": ("ln_1", "ln_2"), "gemma": ("input_layernorm", "pre_feedforward_layernorm"),
                  "llama": ("input_layernorm", "post_attention_layernorm")}
"""Per architecture: a block's norms whose input is the residual stream (not those inside a sublayer)."""


def residual_read_weights(hm: HookedModel, first_block: int, floor: float = 0.05) -> Tensor:
    """[d] root-mean-square gain, per dimension, of the norms that read the residual stream from block
    `first_block` on (both of each block's, and the final norm), divided by its median and floored at `floor` (a
    dimension no norm reads would otherwise get weight 0, and dividing by it when folding would amplify noise)."""
    gains = [hm.norm_gain(hm.final_norm())]
    for layer in range(first_block, hm.n_layers):
        block = hm.layers[layer]
        gains += [hm.norm_gain(getattr(block, name)) for name in _READING_NORMS[hm.arch]]
    w = torch.stack(gains).pow(2).mean(0).sqrt()  # [d]
    return (w / w.median()).clamp_min(floor)
