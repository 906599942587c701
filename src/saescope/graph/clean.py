"""What the local replacement model freezes, read from one clean forward of the real model: the norms with their
scale at its clean value (linear maps), each layer's attention pattern and value/output weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saescope.models import HookedModel


# ---- frozen pieces ------------------------------------------------------------------------------------------------
@dataclass
class FrozenNorm:
    """N(x) = gain ⊙ C(x) / scale + bias with the scale of each position frozen at its clean value (C = centring for
    LayerNorm, identity for RMSNorm). Linear, and its transpose is itself: vjp(g) = C(gain ⊙ g / scale)."""

    gain: Tensor
    """[d]"""
    bias: Tensor | None
    scale: Tensor
    """[T, 1]: σ (LayerNorm) or rms (RMSNorm) of the clean input at each position."""
    centred: bool

    def __post_init__(self) -> None:
        self.mult = self.gain / self.scale  # [T, d]: one multiply per use

    @classmethod
    def of(cls, hm: HookedModel, mod: nn.Module, x: Tensor) -> FrozenNorm:
        """From a norm module and its clean input x [T, d]."""
        w = mod.weight.detach().float().cpu()
        if isinstance(mod, nn.LayerNorm):
            scale = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + mod.eps)
            return cls(w, None if mod.bias is None else mod.bias.detach().float().cpu(), scale, True)
        eps = getattr(mod, "eps", None) or getattr(mod, "variance_epsilon", 1e-6)
        scale = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return cls(1.0 + w if hm.arch == "gemma" else w, None, scale, False)

    def apply(self, x: Tensor) -> Tensor:
        """x [..., T, d] → [..., T, d] (T may be a prefix of the prompt)."""
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        y = x * self.mult[: x.shape[-2]]
        return y if self.bias is None else y + self.bias

    def vjp(self, g: Tensor) -> Tensor:
        return self._centre(g * self.mult[: g.shape[-2]])

    def vjp_at(self, g: Tensor, pos: int) -> Tensor:
        """The transpose at one position, for g [..., d]."""
        return self._centre(g * self.mult[pos])

    def _centre(self, v: Tensor) -> Tensor:
        return v - v.mean(-1, keepdim=True) if self.centred else v


@dataclass
class FrozenLayer:
    """One block of the local replacement model: frozen norms, the attention pattern, the value/output weights."""

    norm1: FrozenNorm
    pattern: Tensor
    """[H, T, T] clean post-softmax attention (query, key)."""
    W_V: Tensor
    """[n_kv, d, d_head]"""
    b_V: Tensor | None
    """[n_kv, d_head]"""
    W_O: Tensor
    """[H, d_head, d]"""
    b_O: Tensor | None
    post_attn: FrozenNorm | None
    """Gemma's norm between attention and the residual stream."""
    norm2: FrozenNorm
    kv_of_head: Tensor
    """[H] the key/value head each query head reads (grouped-query attention: h // (H / n_kv))."""

    def __post_init__(self) -> None:
        n_kv, d, dh = self.W_V.shape
        self.W_V_flat = self.W_V.permute(0, 2, 1).reshape(n_kv * dh, d)  # [n_kv·dh, d]: the value map, transposed


def value_weights(hm: HookedModel, layer: int) -> tuple[Tensor, Tensor | None]:
    attn = hm.attention(layer)
    n_kv, dh, d = hm.n_kv_heads, hm.d_head, hm.d_model
    if hm.arch == "gpt2":  # Conv1D c_attn: x @ W [d, 3d], value columns last
        W = attn.c_attn.weight[:, 2 * d:]
        b = attn.c_attn.bias[2 * d:]
    else:
        W, b = attn.v_proj.weight.T, attn.v_proj.bias
    W = W.detach().float().cpu().reshape(d, n_kv, dh).permute(1, 0, 2)  # [n_kv, d, dh]
    return W, None if b is None else b.detach().float().cpu().reshape(n_kv, dh)


def pre_mlp_norm(hm: HookedModel, layer: int) -> nn.Module:
    block = hm.layers[layer]
    return {"gpt2": getattr(block, "ln_2", None), "gemma": getattr(block, "pre_feedforward_layernorm", None),
            "llama": getattr(block, "post_attention_layernorm", None)}[hm.arch]


# ---- the clean pass -----------------------------------------------------------------------------------------------
@dataclass
class CleanPass:
    """What one forward of the real model leaves behind ([T, d] float32 per layer unless said)."""

    embed: Tensor
    """The token embeddings as they enter block 0 (Gemma's √d scaling included), without position embeddings."""
    resid_pre: list[Tensor]
    pattern: list[Tensor]
    """[H, T, T]"""
    attn_z: list[Tensor]
    """Attention output before Gemma's post-attention norm (= attn_out elsewhere)."""
    resid_mid: list[Tensor]
    mlp_in: list[Tensor]
    mlp_out: list[Tensor]
    """What the block adds to the residual stream (after Gemma's post-MLP norm)."""
    mlp_raw: list[Tensor]
    """What the MLP module returns (before Gemma's post-MLP norm; = mlp_out elsewhere)."""
    resid_final: Tensor
    logits: Tensor
    """[T, V]"""


@torch.no_grad()
def clean_pass(hm: HookedModel, ids: Tensor) -> CleanPass:
    """Run the model once on ids [T] with eager attention, recording what the frozen model needs."""
    L = hm.n_layers
    rec: dict[str, list] = {k: [None] * L for k in ("resid_pre", "pattern", "attn_z", "resid_mid", "mlp_in", "mlp_out",
                                                   "mlp_raw")}
    got: dict[str, Tensor] = {}
    handles = []

    def keep(key: str, layer: int, x: Tensor) -> None:
        rec[key][layer] = x[0].detach().float().cpu()

    def first(x: object) -> Tensor:
        return x[0] if isinstance(x, tuple) else x  # type: ignore[index]

    for layer, block in enumerate(hm.layers):
        def block_in(mod, args, kwargs, layer=layer):
            keep("resid_pre", layer, args[0] if args else kwargs["hidden_states"])
        handles.append(block.register_forward_pre_hook(block_in, with_kwargs=True))
        handles.append(hm.attention(layer).register_forward_hook(
            lambda m, a, out, layer=layer: keep("pattern", layer, out[1])))
        post = hm.post_attention_norm(layer)
        if post is not None:
            handles.append(post.register_forward_pre_hook(lambda m, a, layer=layer: keep("attn_z", layer, a[0])))
        else:
            handles.append(hm.attention(layer).register_forward_hook(
                lambda m, a, out, layer=layer: keep("attn_z", layer, first(out))))
        handles.append(pre_mlp_norm(hm, layer).register_forward_pre_hook(
            lambda m, a, layer=layer: keep("resid_mid", layer, a[0])))
        handles.append(block.mlp.register_forward_pre_hook(lambda m, a, layer=layer: keep("mlp_in", layer, a[0])))
        handles.append(block.mlp.register_forward_hook(
            lambda m, a, out, layer=layer: keep("mlp_raw", layer, first(out))))
        post_mlp = hm.post_mlp_norm(layer)
        if post_mlp is not None:
            handles.append(post_mlp.register_forward_hook(
                lambda m, a, out, layer=layer: keep("mlp_out", layer, first(out))))
    handles.append(hm.final_norm().register_forward_pre_hook(
        lambda m, a: got.__setitem__("final", a[0][0].float().cpu())))
    handles.append(hm.model.get_input_embeddings().register_forward_hook(
        lambda m, a, out: got.__setitem__("embed", out[0].float().cpu())))
    try:
        with hm.eager_attention():
            logits = hm.model(input_ids=ids[None].to(hm.model.device), use_cache=False).logits[0].float().cpu()
    finally:
        for h in handles:
            h.remove()
    mlp_out = rec["mlp_out"] if hm.post_mlp_norm(0) is not None else rec["mlp_raw"]
    return CleanPass(got["embed"], rec["resid_pre"], rec["pattern"], rec["attn_z"], rec["resid_mid"], rec["mlp_in"],
                     mlp_out, rec["mlp_raw"], got["final"], logits)
